"""The I/O around the RFB machines: who went away decides what the browser is told.

The browser and the VNC server here are stand-ins that replay a recorded handshake;
the real thing (QEMU's password check, resets at every step) is
tests/integration/test_vnc_auth.py.
"""

from __future__ import annotations

import struct

import pytest
from starlette.websockets import WebSocketDisconnect, WebSocketState

from broker.errors import VNC_HANDSHAKE_FAILED, BrokerError
from broker.kinds.vncauth import ClientLeft, authenticate
from broker.model import Stream
from unit_support import run_async

# QEMU's side of a VNC-auth handshake: version, security type 2, challenge, SecurityResult OK.
SERVER_SAYS = [b"RFB 003.008\n", bytes([1, 2]), b"\0" * 16, struct.pack("!I", 0)]
BROWSER_SAYS = [b"RFB 003.008\n", bytes([1])]


class VncServer:
    def __init__(self, *, closes_at_the_end: bool = False) -> None:
        self.chunks = list(SERVER_SAYS)
        self.closes_at_the_end = closes_at_the_end

    async def read(self, limit: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else b""

    def write(self, data: bytes) -> None:
        pass

    async def drain(self) -> None:
        if self.closes_at_the_end:
            raise ConnectionResetError("the VNC server closed the connection")

    def close(self) -> None:
        pass


class Browser:
    client_state = application_state = WebSocketState.CONNECTED

    def __init__(self, *, gone_when_sent_to: bool = False) -> None:
        self.replies = list(BROWSER_SAYS)
        self.gone_when_sent_to = gone_when_sent_to

    async def send(self, message: object) -> None:
        if self.gone_when_sent_to:
            raise WebSocketDisconnect(1006)

    async def receive(self) -> dict[str, object]:
        return {"type": "websocket.receive", "bytes": self.replies.pop(0)}


def login(server: VncServer, browser: Browser) -> None:
    stream = Stream(backend=server, endpoint=None, password="secret")  # type: ignore[arg-type]
    run_async(authenticate(browser, stream, "vm1"))  # type: ignore[arg-type]


def test_a_vnc_server_closing_at_the_end_of_the_handshake_is_its_failure_not_the_browsers() -> None:
    with pytest.raises(BrokerError) as caught:
        login(VncServer(closes_at_the_end=True), Browser())
    assert caught.value.failure is VNC_HANDSHAKE_FAILED and "closed the connection" in caught.value.message


def test_a_browser_gone_while_sent_to_is_client_left() -> None:
    with pytest.raises(ClientLeft):
        login(VncServer(), Browser(gone_when_sent_to=True))


def test_the_recorded_handshake_completes() -> None:
    login(VncServer(), Browser())

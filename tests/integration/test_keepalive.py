"""Server pings keep a quiet console alive through proxies with idle timeouts."""

from __future__ import annotations

import base64
import os
import socket
import time
from pathlib import Path
from urllib.parse import urlsplit

import libvirt
import pytest

from support.processes import start_broker

pytestmark = pytest.mark.integration

PING = 0x9


def test_broker_pings_a_quiet_session(tmp_path: Path, tcp_vm: libvirt.virDomain) -> None:
    broker = start_broker(tmp_path / "state", extra_env={"BROKER_PING_INTERVAL": "1"})
    try:
        url = urlsplit(broker.api("POST", f"/api/v1/domains/{tcp_vm.name()}/console").json()["websocket_url"])
        with socket.create_connection((url.hostname, url.port), timeout=5) as sock:
            key = base64.b64encode(os.urandom(16)).decode()
            sock.sendall(
                f"GET {url.path}?{url.query} HTTP/1.1\r\nHost: {url.netloc}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
            )
            buffer = b""
            while b"\r\n\r\n" not in buffer:
                buffer += sock.recv(4096)
            assert buffer.startswith(b"HTTP/1.1 101"), buffer[:100]
            buffer = buffer.split(b"\r\n\r\n", 1)[1]
            opcodes = []
            deadline = time.monotonic() + 4
            while PING not in opcodes and time.monotonic() < deadline:
                while len(buffer) < 2 or len(buffer) < 2 + _payload_length(buffer):
                    buffer += sock.recv(65536)
                opcodes.append(buffer[0] & 0x0F)
                buffer = buffer[_frame_length(buffer) :]
        assert PING in opcodes, f"no ping in {opcodes}"
    finally:
        broker.stop()


def _payload_length(frame: bytes) -> int:
    """Header extension plus payload of an unmasked server frame (whose first 2 bytes we have)."""
    length = frame[1] & 0x7F
    if length == 126:
        return 2 + (int.from_bytes(frame[2:4], "big") if len(frame) >= 4 else 0)
    if length == 127:
        return 8 + (int.from_bytes(frame[2:10], "big") if len(frame) >= 10 else 0)
    return length


def _frame_length(frame: bytes) -> int:
    return 2 + _payload_length(frame)

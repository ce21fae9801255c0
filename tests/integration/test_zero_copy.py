"""A real QEMU screen through the kernel path (zerocopy.py): the same pixels as QEMU sends.

A full-screen Raw update of the SeaBIOS screen is over a MiB: the broker moves it with
splice(2). Read through the broker and read straight from QEMU's VNC port, the pixels must
match; a frame header or a byte out of place would shift everything after it.
"""

from __future__ import annotations

import socket

import libvirt
import pytest
from websockets.sync.client import connect

from support import vms
from support.processes import BrokerProcess, zero_copied_mib
from support.rfb_client import handshake, request_update

pytestmark = pytest.mark.integration

# The text-mode cursor blinks: a few scan lines of one character cell may differ.
CURSOR_BYTES = 9 * 16 * 4


class PlainVnc:
    """rfb_client's helpers on a plain TCP connection to QEMU, as the broker has it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)

    def recv(self, timeout: float) -> bytes:
        data = self.sock.recv(1 << 20)
        if not data:
            raise EOFError("QEMU closed the VNC connection")
        return data

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def close(self) -> None:
        self.sock.close()


def screen_direct(port: int) -> bytes:
    vnc = PlainVnc(port)
    try:
        return request_update(vnc, handshake(vnc))[1]  # type: ignore[arg-type]
    finally:
        vnc.close()


def screen_through_broker(broker: BrokerProcess, domain: str) -> bytes:
    with connect(broker.mint(domain)["websocket_url"], open_timeout=10) as ws:
        return request_update(ws, handshake(ws))[1]


def differing_bytes(a: bytes, b: bytes) -> int:
    if len(a) != len(b):
        return max(len(a), len(b))
    return sum(x != y for x, y in zip(a, b, strict=True))


def test_a_full_screen_update_through_the_kernel_matches_qemus_own(
    broker: BrokerProcess, tcp_vm: libvirt.virDomain
) -> None:
    port = vms.vnc_port(tcp_vm)
    for _attempt in range(3):  # SeaBIOS retries the boot every 60 s and redraws: read again then
        before = len(broker.ended_sessions())
        first = screen_direct(port)
        relayed = screen_through_broker(broker, tcp_vm.name())
        second = screen_direct(port)
        if differing_bytes(first, second) <= CURSOR_BYTES:
            break
    assert len(relayed) > 1 << 20, "not a full-screen Raw update"
    assert min(differing_bytes(relayed, first), differing_bytes(relayed, second)) <= CURSOR_BYTES
    line = broker.ended_session(before)  # the session of the last attempt
    assert f"console session for {tcp_vm.name()} " in line, line
    assert zero_copied_mib(line) >= 0.5, f"the update did not go through the kernel: {line}"

"""Server pings keep a quiet console alive through proxies with idle timeouts."""

from __future__ import annotations

import time
from pathlib import Path

import libvirt
import pytest

from support.processes import start_broker
from support.raw_ws import RawWebSocket

pytestmark = pytest.mark.integration

PING = 0x9


def test_broker_pings_a_quiet_session(tmp_path: Path, tcp_vm: libvirt.virDomain) -> None:
    broker = start_broker(tmp_path / "state", extra_env={"BROKER_PING_INTERVAL": "1"})
    try:
        # A raw client: a library would answer the pings out of sight.
        ws = RawWebSocket(broker.mint(tcp_vm.name())["websocket_url"])
        try:
            ws.sock.settimeout(5)
            opcodes = []
            deadline = time.monotonic() + 4
            while PING not in opcodes and time.monotonic() < deadline:
                opcodes.append(ws.read_frame()[0])
        finally:
            ws.close()
        assert PING in opcodes, f"no ping in {opcodes}"
    finally:
        broker.stop()

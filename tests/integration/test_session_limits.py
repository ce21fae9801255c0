"""idle_timeout (4403) and max_session_length (4404) end real sessions with their codes."""

from __future__ import annotations

import struct
import time
from collections.abc import Iterator
from contextlib import contextmanager

import libvirt
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from support.processes import BrokerProcess, start_broker
from support.rfb_client import handshake

pytestmark = pytest.mark.integration

IDLE_TIMEOUT = 1.0
MAX_SESSION_LENGTH = 3.0


@pytest.fixture(scope="module")
def timed_broker(tmp_path_factory) -> Iterator[BrokerProcess]:
    env = {"BROKER_IDLE_TIMEOUT": str(IDLE_TIMEOUT), "BROKER_MAX_SESSION_LENGTH": str(MAX_SESSION_LENGTH)}
    process = start_broker(tmp_path_factory.mktemp("timed-state"), extra_env=env)
    yield process
    process.stop()


@contextmanager
def open_console(broker: BrokerProcess, vm: libvirt.virDomain) -> Iterator[ClientConnection]:
    with connect(broker.mint(vm.name())["websocket_url"], open_timeout=10) as ws:
        handshake(ws)
        yield ws


def wait_for_close(ws: ClientConnection, timeout: float) -> tuple[int, str]:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            ws.recv(timeout=timeout)  # QEMU sends nothing unasked; only the close ends this
    return closed.value.rcvd.code, closed.value.rcvd.reason


def test_a_session_without_input_is_closed_4403(timed_broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    with open_console(timed_broker, tcp_vm) as ws:
        started = time.monotonic()
        code, reason = wait_for_close(ws, timeout=10)
    assert code == 4403, (code, reason)
    assert "without input" in reason
    assert IDLE_TIMEOUT * 0.9 <= time.monotonic() - started < IDLE_TIMEOUT + 2


def test_input_keeps_a_session_until_its_length_limit_4404(
    timed_broker: BrokerProcess, tcp_vm: libvirt.virDomain
) -> None:
    with open_console(timed_broker, tcp_vm) as ws:
        started = time.monotonic()
        with pytest.raises(ConnectionClosed) as closed:
            while time.monotonic() - started < MAX_SESSION_LENGTH + 5:
                ws.send(struct.pack(">BBHH", 5, 0, 10, 10))  # a pointer event: input, no reply
                try:
                    ws.recv(timeout=IDLE_TIMEOUT / 3)
                except TimeoutError:
                    pass
    code = closed.value.rcvd.code
    assert code == 4404, (code, closed.value.rcvd.reason)
    assert MAX_SESSION_LENGTH * 0.9 <= time.monotonic() - started < MAX_SESSION_LENGTH + 2

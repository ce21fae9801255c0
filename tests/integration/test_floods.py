"""A client that floods pings and never reads pins a bounded amount of the broker's memory.

Every pong the broker owes waits in its write buffer for a client that does not read it.
These tests flood a real broker from a raw socket with a tiny receive buffer (refused
socket, a page socket that never sends its first frame, live session on a real VM), sample the broker's RSS
meanwhile, check that other clients are served during the flood, and that the broker
lets go of the connection afterwards instead of waiting for a buffer that never drains.
"""

from __future__ import annotations

import socket
import threading
import time

import httpx
import libvirt
import pytest

from support.processes import BrokerProcess, start_broker
from support.raw_ws import RawWebSocket, frame

pytestmark = pytest.mark.integration

FLOOD_SECONDS = 3.0
# What one flooding client may add to the broker's resident memory. Before the fix a
# refused socket added ~60 MiB in these 3 s (and ~250 MiB in 11 s), a live session more.
RSS_BOUND_MIB = 16
# A masked ping with a 125-byte payload: the largest pong the broker can owe for one frame.
PING = frame(0x9, b"p" * 125)


@pytest.fixture(scope="module")
def flood_broker(tmp_path_factory: pytest.TempPathFactory) -> BrokerProcess:
    broker = start_broker(tmp_path_factory.mktemp("flood-state"))
    yield broker  # type: ignore[misc]
    broker.stop()


def upgrade(url: str) -> socket.socket:
    """A WebSocket from a client that will never read (receive buffer 4 KiB)."""
    return RawWebSocket(url, receive_buffer=4096).sock


def flood(sock: socket.socket, seconds: float) -> int:
    """Send pings for `seconds`, never reading; returns bytes sent."""
    burst = PING * 256
    sock.settimeout(0.2)
    sent = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            sent += sock.send(burst)
        except (TimeoutError, BlockingIOError):
            continue
        except OSError:  # the broker gave up on us: fine
            break
    return sent


def flood_and_measure(broker: BrokerProcess, sock: socket.socket) -> tuple[float, list[float]]:
    """Flood from `sock` while another client polls /healthz; (RSS growth MiB, healthz latencies)."""
    before = broker.rss_mib()
    peak = before
    latencies: list[float] = []
    done = threading.Event()

    def other_client() -> None:
        while not done.is_set():
            t0 = time.monotonic()
            assert httpx.get(broker.url + "/healthz", timeout=10).status_code == 200
            latencies.append(time.monotonic() - t0)
            time.sleep(0.1)

    poller = threading.Thread(target=other_client)
    poller.start()
    flooder = threading.Thread(target=flood, args=(sock, FLOOD_SECONDS))
    flooder.start()
    while flooder.is_alive():
        peak = max(peak, broker.rss_mib())
        time.sleep(0.05)
    peak = max(peak, broker.rss_mib())
    done.set()
    poller.join()
    return peak - before, latencies


def released(sock: socket.socket, timeout: float) -> bool:
    """Whether the broker closes or resets the connection within `timeout` (reading out what it sent)."""
    sock.settimeout(0.5)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if not sock.recv(1 << 20):
                return True
        except TimeoutError:
            continue
        except OSError:
            return True
    return False


def check_flood(broker: BrokerProcess, sock: socket.socket) -> None:
    try:
        growth, latencies = flood_and_measure(broker, sock)
        print(f"flood: RSS +{growth:.1f} MiB, healthz max {max(latencies or [0]) * 1000:.0f} ms")
        assert growth < RSS_BOUND_MIB, f"the broker's RSS grew {growth:.0f} MiB under one flooding client"
        assert latencies and max(latencies) < 1.0, f"other clients stalled: {max(latencies or [0]):.2f} s"
        # The broker must not hold the connection (and its buffer) until the client leaves.
        assert released(sock, timeout=25), "the broker still holds the flooding connection"
    finally:
        sock.close()


def test_ping_flood_on_a_refused_socket_is_bounded(flood_broker: BrokerProcess) -> None:
    check_flood(flood_broker, upgrade(f"{flood_broker.ws_url}/websockify?token={'A' * 43}"))


def test_ping_flood_on_a_page_socket_that_never_says_who_it_is_is_bounded(flood_broker: BrokerProcess) -> None:
    uuid = "00000000-0000-4000-8000-000000000000"
    check_flood(flood_broker, upgrade(f"{flood_broker.ws_url}/console/{uuid}/websockify"))


def test_ping_flood_in_a_live_session_is_bounded(flood_broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    minted = flood_broker.mint(tcp_vm.name())
    sock = upgrade(minted["websocket_url"])
    try:
        growth, latencies = flood_and_measure(flood_broker, sock)
        print(f"flood: RSS +{growth:.1f} MiB, healthz max {max(latencies or [0]) * 1000:.0f} ms")
        assert growth < RSS_BOUND_MIB, f"the broker's RSS grew {growth:.0f} MiB under one flooding client"
        assert latencies and max(latencies) < 1.0, f"other clients stalled: {max(latencies or [0]):.2f} s"
    finally:
        sock.close()

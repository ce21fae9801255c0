"""Large updates moved by the kernel (zerocopy.py), checked byte for byte on a real broker.

A real `broker serve` (uvloop, the spliced protocol) relays static consoles whose VNC-like
server streams known bytes. The client is websockets' own, which parses every frame
strictly: a frame header in the wrong place fails a test as surely as a wrong byte. The
broker sends keepalive pings every 20 ms, so uvicorn's own writes fall between the kernel's.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect, unix_connect

from support.processes import BrokerProcess, start_broker, zero_copied_mib
from support.raw_ws import RawWebSocket, frame
from support.stream_server import GREETING, StreamServer, command, pattern
from support.wait import wait_until

MiB = 1024 * 1024


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, StreamServer]]:
    tcp = StreamServer()
    unix = StreamServer(str(tmp_path_factory.mktemp("vnc") / "stream.sock"))
    yield {"tcp": tcp, "unix": unix}
    tcp.close()
    unix.close()


def static_broker(state_dir: Path, servers: dict[str, StreamServer], *args: str, **env: str) -> BrokerProcess:
    """A real `broker serve` on test:///default whose consoles stream-KIND are `servers`."""
    consoles = ",".join(f"stream-{kind}={server.target}" for kind, server in servers.items())
    return start_broker(
        state_dir, *args, extra_env={"BROKER_CONNECT": "test:///default", "BROKER_STATIC_CONSOLES": consoles, **env}
    )


def broker_for(tmp_path_factory: pytest.TempPathFactory, servers: dict[str, StreamServer], *args: str) -> BrokerProcess:
    return static_broker(tmp_path_factory.mktemp("zerocopy-state"), servers, *args, BROKER_PING_INTERVAL="0.02")


@pytest.fixture(scope="module")
def tcp_broker(tmp_path_factory, servers) -> Iterator[BrokerProcess]:
    process = broker_for(tmp_path_factory, servers)
    yield process
    process.stop()


@pytest.fixture(scope="module")
def uds_broker(tmp_path_factory, servers) -> Iterator[BrokerProcess]:
    """The browser's side on a UNIX socket, as behind nginx (contrib/nginx)."""
    path = tmp_path_factory.mktemp("uds") / "broker.sock"
    process = broker_for(tmp_path_factory, servers, "--uds", str(path))
    process.uds = str(path)  # type: ignore[attr-defined]
    yield process
    process.stop()


Opener = Callable[..., AbstractContextManager[ClientConnection]]


def opener(broker: BrokerProcess, console: str) -> Opener:
    @contextmanager
    def open_console(**kwargs: Any) -> Iterator[ClientConnection]:
        uds = getattr(broker, "uds", None)
        headers = {"Authorization": f"Bearer {broker.api_key}"}
        base = "http://localhost" if uds else broker.url
        with httpx.Client(transport=httpx.HTTPTransport(uds=uds) if uds else None) as client:
            response = client.post(f"{base}/api/v1/domains/{console}/console", headers=headers)
        assert response.status_code == 201, response.text
        url = response.json()["websocket_url"]
        with unix_connect(uds, url, max_size=None, **kwargs) if uds else connect(url, max_size=None, **kwargs) as ws:
            assert receive(ws, len(GREETING)) == GREETING
            yield ws

    return open_console


@pytest.fixture(params=["tcp", "uds"])
def browser(request: pytest.FixtureRequest) -> tuple[BrokerProcess, Opener]:
    """A broker whose browser side is TCP or a UNIX socket, and how to open its TCP console."""
    broker = request.getfixturevalue(f"{request.param}_broker")
    return broker, opener(broker, "stream-tcp")


def receive(ws: ClientConnection, count: int, pause: float = 0.0) -> bytes:
    data = bytearray()
    while len(data) < count:
        message = ws.recv(timeout=10)
        assert isinstance(message, bytes)
        data += message
        if pause:
            time.sleep(pause)
    assert len(data) == count, "more bytes than the VNC server sent"
    return bytes(data)


def test_a_large_update_arrives_byte_for_byte_and_the_kernel_moves_most_of_it(browser) -> None:
    broker, open_console = browser
    before = len(broker.ended_sessions())
    with open_console() as ws:
        ws.send(command(b"D", 16 * MiB))
        assert receive(ws, 16 * MiB) == pattern(16 * MiB)
    line = broker.ended_session(before)
    assert "16.0 MiB to the browser" in line
    assert zero_copied_mib(line) > 8, line


def test_a_slow_browser_gets_every_byte_in_order_and_still_no_copies(browser) -> None:
    """The browser's socket fills up halfway through frames: the rest of each waits in the
    pipe (not copied out to the transport), and keepalive pings wait for the frame's end."""
    broker, open_console = browser
    before = len(broker.ended_sessions())
    with open_console(max_queue=1) as ws:  # websockets stops reading while a message waits
        ws.send(command(b"D", 24 * MiB))
        assert receive(ws, 24 * MiB, pause=0.003) == pattern(24 * MiB)
    line = broker.ended_session(before)
    assert zero_copied_mib(line) > 23, line


def test_pings_from_the_browser_are_answered_between_large_frames(browser) -> None:
    _broker, open_console = browser
    with open_console() as ws:
        ws.send(command(b"D", 48 * MiB))
        pongs: list[bool] = []

        def ping_while_streaming() -> None:
            for _ in range(10):
                pongs.append(ws.ping().wait(10))

        pinger = threading.Thread(target=ping_while_streaming)
        pinger.start()
        assert receive(ws, 48 * MiB, pause=0.001) == pattern(48 * MiB)
        pinger.join(20)
    assert pongs == [True] * 10


def test_small_messages_flow_again_after_a_large_update(browser) -> None:
    _broker, open_console = browser
    with open_console() as ws:
        for round_ in range(3):
            ws.send(command(b"D", 4 * MiB))
            assert receive(ws, 4 * MiB) == pattern(4 * MiB)
            for key in range(20):
                event = f"key{round_}{key:02d}".encode()
                ws.send(command(b"E", len(event)) + event)
                assert receive(ws, len(event)) == event


def test_the_vnc_server_closing_after_a_large_update_ends_the_session_after_its_bytes(browser) -> None:
    _broker, open_console = browser
    with open_console() as ws:
        ws.send(command(b"X", 8 * MiB))
        assert receive(ws, 8 * MiB) == pattern(8 * MiB)
        with pytest.raises(ConnectionClosed) as closed:
            ws.recv(timeout=10)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4301


def test_a_unix_socket_vnc_server_is_relayed_by_copying(tcp_broker: BrokerProcess) -> None:
    """From a UNIX socket the kernel's splice costs more than a copy (docs/benchmarks.md)."""
    before = len(tcp_broker.ended_sessions())
    with opener(tcp_broker, "stream-unix")() as ws:
        ws.send(command(b"D", 8 * MiB))
        assert receive(ws, 8 * MiB) == pattern(8 * MiB)
    line = tcp_broker.ended_session(before)
    assert "8.0 MiB to the browser" in line and zero_copied_mib(line) == 0, line


@pytest.fixture(scope="module")
def impatient_broker(tmp_path_factory, servers) -> Iterator[BrokerProcess]:
    """Pings every 0.1 s that must be answered within 0.5 s."""
    process = static_broker(
        tmp_path_factory.mktemp("impatient-state"),
        {"tcp": servers["tcp"]},
        BROKER_PING_INTERVAL="0.1",
        BROKER_PING_TIMEOUT="0.5",
    )
    yield process
    process.stop()


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_browser_that_stops_reading_mid_update_is_dropped_with_everything_it_held(impatient_broker) -> None:
    """It can no longer take a close frame: the session ends after ping_timeout and the
    connection, the VNC connection and the session's pipe are all released."""
    broker = impatient_broker
    pid = broker.process.pid
    idle_descriptors = open_descriptors(pid)
    before = len(broker.ended_sessions())
    stalled = RawWebSocket(broker.mint("stream-tcp")["websocket_url"], receive_buffer=4096)  # fills at once
    stalled.send_binary(command(b"D", 64 * MiB))
    try:
        line = broker.ended_session(before, timeout=15)  # and then never read again
        assert "the client stopped answering pings" in line, line
        wait_until(
            lambda: open_descriptors(pid) <= idle_descriptors, 5, f"the broker back to {idle_descriptors} descriptors"
        )
    finally:
        stalled.close()


# Loaded by the broker's interpreter at start (PYTHONPATH): os.splice fails once, at call
# number TEST_SPLICE_FAIL_AT, with TEST_SPLICE_ERRNO. Call 1 is the first splice from the VNC
# socket; call 2 the first into the browser's socket, after that frame's header is out.
FAILING_SPLICE = """
import errno, os
_real_splice, _calls = os.splice, [0]
_fail_at, _errno = int(os.environ["TEST_SPLICE_FAIL_AT"]), getattr(errno, os.environ["TEST_SPLICE_ERRNO"])
def splice(*args, **kwargs):
    _calls[0] += 1
    if _calls[0] == _fail_at:
        raise OSError(_errno, os.strerror(_errno))
    return _real_splice(*args, **kwargs)
os.splice = splice
"""


@pytest.mark.parametrize(
    "error, at_call, refused",
    [("EPERM", 1, True), ("EINVAL", 2, True), ("ENOMEM", 1, False)],
    ids=["refused-by-policy", "refused-mid-frame", "out-of-memory-once"],
)
def test_a_failing_splice_falls_back_to_copying_without_losing_a_byte(
    tmp_path: Path, servers, error: str, at_call: int, refused: bool
) -> None:
    """A kernel or policy that refuses splice(2) (seccomp, an LSM, an old kernel) switches
    the broker to copying for good; a passing failure only for the moment. Either way the
    session goes on and every byte arrives."""
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "sitecustomize.py").write_text(FAILING_SPLICE)
    broker = static_broker(
        tmp_path / "state",
        {"tcp": servers["tcp"]},
        PYTHONPATH=os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
        TEST_SPLICE_FAIL_AT=str(at_call),
        TEST_SPLICE_ERRNO=error,
    )
    try:
        with opener(broker, "stream-tcp")() as ws:
            for _ in range(2):  # the second update: copied for good, or through the kernel again
                ws.send(command(b"D", 8 * MiB))
                assert receive(ws, 8 * MiB) == pattern(8 * MiB)
        line = broker.ended_session(0)
        assert "16.0 MiB to the browser" in line, line
        assert ("splice(2) refused" in broker.log()) is refused
        assert (zero_copied_mib(line) == 0) is refused, line
    finally:
        broker.stop()


def test_a_client_flooding_pings_mid_update_is_read_again_once_it_catches_up(tcp_broker: BrokerProcess) -> None:
    """Pings pile up pongs behind a frame the kernel is moving; past the backlog limit the
    client is not read. Once it reads everything, it must be read again (the held pongs
    reach the socket in one go, with no resume_writing to say so)."""
    ws = RawWebSocket(tcp_broker.mint("stream-tcp")["websocket_url"], receive_buffer=4096)
    try:
        assert ws.read_payload(len(GREETING)) == GREETING
        ws.send_binary(command(b"D", 8 * MiB))
        # A slow reader on purpose: the client reads nothing while the update fills every
        # buffer on the way, so that the pings below land behind a frame in mid-flight.
        time.sleep(0.5)
        ping = frame(0x9, b"p" * 125)
        ws.sock.settimeout(0.5)
        with contextlib.suppress(TimeoutError):
            ws.sock.sendall(ping * 5000)  # ~640 KiB of pongs owed: past the limit
        ws.sock.settimeout(10)
        assert binary_payload(ws, 8 * MiB) == pattern(8 * MiB)
        ws.send_binary(command(b"E", 4) + b"echo")
        assert binary_payload(ws, 4) == b"echo", "the client was never read again"
    finally:
        ws.close()


def binary_payload(ws: RawWebSocket, count: int) -> bytes:
    """`count` bytes of binary payload, passing over pongs and pings."""
    data = bytearray()
    while len(data) < count:
        opcode, payload = ws.read_frame()
        if opcode == 0x2:
            data += payload
    return bytes(data)

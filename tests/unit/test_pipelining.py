"""Pipelined requests and the request-head guard (broker/server/httpguard.py), on a real broker.

Several requests in one write reach uvicorn's h11 protocol as one read: it serves the
first while the others wait, already buffered, in h11. The guard must treat each of
those heads like one that arrives on its own: the same size caps, a header deadline only
while a head is still arriving (never while an earlier answer is being produced), and
never a `408` written into a connection that has become a WebSocket.

Raw sockets throughout: no client library pipelines requests, or lets a test read what
follows a `101` byte for byte.
"""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator

import h11
import pytest

from broker.server.httpguard import (
    MAX_HEAD_BYTES,
    MAX_HEAD_LINES,
    MAX_REQUEST_LINE,
    _HeadCheckingConnection,
    _HeadRefused,
    head_refusal,
)
from support.processes import BrokerProcess, start_broker
from support.raw_ws import frame, upgrade_head
from support.stream_server import GREETING, StreamServer, command

HEADER_TIMEOUT = 1.0
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n"


@pytest.fixture(scope="module")
def vnc() -> Iterator[StreamServer]:
    server = StreamServer()
    yield server
    server.close()


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory, vnc: StreamServer) -> Iterator[BrokerProcess]:
    """header_timeout = 1 s; no keepalive pings, so a WebSocket carries only what the test asks for."""
    env = {
        "BROKER_CONNECT": "test:///default",
        "BROKER_STATIC_CONSOLES": f"stream={vnc.target}",
        "BROKER_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "BROKER_PING_INTERVAL": "0",
    }
    process = start_broker(tmp_path_factory.mktemp("pipelining-state"), extra_env=env)
    yield process
    process.stop()


class Conn:
    """A raw client connection that reads HTTP answers and WebSocket frames off one buffer."""

    def __init__(self, broker: BrokerProcess, timeout: float = 5.0) -> None:
        host, port = broker.url.removeprefix("http://").split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed by the broker; unread: {self.buffer!r}")
        self.buffer += chunk

    def _take(self, count: int) -> bytes:
        while len(self.buffer) < count:
            self._fill()
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    def answer(self) -> tuple[int, dict[str, str], bytes]:
        """The next HTTP answer: status, headers (lower-case names) and a Content-Length body."""
        while b"\r\n\r\n" not in self.buffer:
            self._fill()
        head, self.buffer = self.buffer.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 "), lines[0]
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        body = self._take(int(headers.get("content-length", "0")))
        return int(lines[0].split()[1]), headers, body

    def frame(self) -> tuple[int, bytes]:
        """The next WebSocket frame from the broker (unmasked): opcode and payload."""
        first, second = self._take(2)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack(">H", self._take(2))[0]
        elif length == 127:
            length = struct.unpack(">Q", self._take(8))[0]
        return first & 0x0F, self._take(length)

    def send_binary(self, payload: bytes) -> None:
        self.send(frame(0x2, payload))

    def answered_or_closed_within(self, seconds: float) -> bool:
        self.sock.settimeout(seconds)
        try:
            self.buffer += self.sock.recv(65536)
            return True
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(5.0)

    def quiet_for(self, seconds: float) -> bytes:
        """Whatever the broker sends within `seconds` (b"" if nothing, or if it closed)."""
        self.sock.settimeout(seconds)
        try:
            return self.sock.recv(65536)
        except (TimeoutError, ConnectionResetError):
            return b""
        finally:
            self.sock.settimeout(5.0)


@pytest.fixture
def conn(broker: BrokerProcess) -> Iterator[Conn]:
    connection = Conn(broker)
    yield connection
    connection.close()


def console_target(broker: BrokerProcess) -> str:
    response = broker.api("POST", "/api/v1/domains/stream/console")
    assert response.status_code == 201, response.text
    return "/" + response.json()["websocket_url"].split("/", 3)[3]


def mint_head(broker: BrokerProcess, body_length: int) -> bytes:
    return (
        f"POST /api/v1/domains/stream/console HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {broker.api_key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {body_length}\r\n\r\n"
    ).encode()


def test_an_upgrade_pipelined_behind_a_request_outlives_the_header_timeout(broker: BrokerProcess, conn: Conn) -> None:
    """The WebSocket keeps relaying past header_timeout, and no HTTP ever appears in it."""
    conn.send(HEALTHZ + upgrade_head(console_target(broker), host="h"))
    assert conn.answer()[0] == 200
    assert conn.answer()[0] == 101
    assert conn.frame() == (0x2, GREETING)
    time.sleep(HEADER_TIMEOUT + 0.5)  # on purpose: the deadline must pass with the session open
    conn.send_binary(command(b"E", 5) + b"hello")
    assert conn.frame() == (0x2, b"hello"), "the console still relays"
    assert b"HTTP/" not in conn.buffer + conn.quiet_for(0.2)


def test_a_slow_pipelined_request_gets_its_own_answer(broker: BrokerProcess, conn: Conn) -> None:
    """A mint behind a health check whose body takes longer than header_timeout: its head was
    in time, so it gets its link (201), not a 408."""
    body = b"{}"
    conn.send(HEALTHZ + mint_head(broker, len(body)) + body[:1])
    assert conn.answer()[0] == 200
    time.sleep(HEADER_TIMEOUT + 0.5)  # on purpose: the body is late past the deadline
    conn.send(body[1:])
    status, _headers, answer = conn.answer()
    assert status == 201, answer
    assert b"websocket_url" in answer


def test_a_pipelined_head_still_arriving_gets_the_deadline(conn: Conn) -> None:
    """The deadline covers a pipelined head that is not all there: 408 after header_timeout."""
    conn.send(HEALTHZ + b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Loris: a")
    assert conn.answer()[0] == 200
    started = time.monotonic()
    status, headers, _body = conn.answer()
    assert status == 408 and headers["connection"] == "close"
    assert HEADER_TIMEOUT - 0.2 <= time.monotonic() - started <= HEADER_TIMEOUT + 1.0


def status_of(refusal: bytes | None) -> int | None:
    return None if refusal is None else int(refusal.split()[1])


@pytest.mark.parametrize(
    ("buffered", "status"),
    [
        pytest.param(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_HEAD_LINES - 2) + b"\r\n", None, id="100-lines"),
        pytest.param(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * (MAX_HEAD_LINES - 1) + b"\r\n", 431, id="101-lines"),
        pytest.param(b"GET / HTTP/1.1\nHost: h\n\n" + b"POST / HTTP/1.1\n" * 500, None, id="what-follows-uncounted"),
        pytest.param(b"GET / HTTP/1.1\r\nX: " + b"a" * MAX_HEAD_BYTES, 431, id="incomplete-too-large"),
        pytest.param(b"GET /" + b"a" * MAX_REQUEST_LINE, 414, id="incomplete-line-too-long"),
        pytest.param(b"GET /" + b"a" * 100, None, id="incomplete-small"),
    ],
)
def test_head_refusal_measures_only_the_first_head(buffered: bytes, status: int | None) -> None:
    """A head ends where h11 says (a bare \\n too), and what the client pipelined behind it
    is left for its own turn."""
    assert status_of(head_refusal(buffered)) == status


@pytest.mark.parametrize("eol", [b"\r\n", b"\n"], ids=["crlf", "bare-lf"])
def test_a_head_cut_anywhere_is_still_found_whole(eol: bytes) -> None:
    """The search for the head's end resumes where the last one stopped (a head trickled
    byte by byte is searched once, not once per byte): an end that straddles reads is
    never skipped, or what was pipelined behind it would count as head (a false 431)."""
    head = eol.join([b"GET / HTTP/1.1", b"Host: h", b"X: y", b"", b""])
    pipelined = b"GET / HTTP/1.1" + eol + b"X: " + b"a" * MAX_HEAD_BYTES
    for first in range(1, len(head)):
        for second in range(first + 1, len(head)):
            conn = _HeadCheckingConnection(h11.SERVER)
            events = []
            for part in (head[:first], head[first:second], head[second:] + pipelined):
                conn.receive_data(part)
                events.append(conn.next_event())
            assert isinstance(events[-1], h11.Request), (first, second, events)


def test_a_head_trickled_byte_by_byte_is_refused_once_it_has_too_many_lines() -> None:
    head = b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X: y\r\n" * MAX_HEAD_LINES + b"\r\n"
    conn = _HeadCheckingConnection(h11.SERVER)
    with pytest.raises(_HeadRefused) as refused:
        for i in range(len(head)):
            conn.receive_data(head[i : i + 1])
            assert conn.next_event() is h11.NEED_DATA
    assert refused.value.answer.startswith(b"HTTP/1.1 431 ")


OVERSIZED = [
    pytest.param(b"GET /healthz?" + b"a" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", 414, id="request-line-9000"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: h\r\n" + b"X-Many: y\r\n" * 200 + b"\r\n", 431, id="200-fields"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n", 431, id="one-field-20kB"),
]


@pytest.mark.parametrize(("head", "status"), OVERSIZED)
def test_pipelined_heads_meet_the_same_caps(conn: Conn, head: bytes, status: int) -> None:
    conn.send(HEALTHZ + head)
    assert conn.answer()[0] == 200
    assert conn.answer()[0] == status


@pytest.mark.parametrize(("head", "status"), OVERSIZED)
def test_a_head_behind_a_body_sent_after_its_answer_meets_the_caps(conn: Conn, head: bytes, status: int) -> None:
    """A POST answered before its body came (405 here); the body then arrives with the
    next head in the same write: h11 reads on into that head without pausing."""
    conn.send(b"POST /healthz HTTP/1.1\r\nHost: h\r\nContent-Length: 5\r\n\r\n")
    assert conn.answer()[0] == 405
    conn.send(b"hello" + head)
    assert conn.answer()[0] == status


def test_http_1_0_websocket_upgrades_are_refused(broker: BrokerProcess, conn: Conn) -> None:
    """RFC 6455 §4.1 asks for HTTP/1.1: a clear 400 (often a proxy without
    `proxy_http_version 1.1`), one log line, no traceback, and the token is not spent."""
    target = console_target(broker)
    conn.send(upgrade_head(target, host="h", version="1.0"))
    status, headers, body = conn.answer()
    assert status == 400 and headers["connection"] == "close"
    assert b"HTTP/1.1" in body
    log = broker.log()
    assert "HTTP/1.0" in log and "Traceback" not in log
    again = Conn(broker)
    try:
        again.send(upgrade_head(target, host="h"))
        assert again.answer()[0] == 101
        assert again.frame() == (0x2, GREETING)
    finally:
        again.close()


@pytest.mark.parametrize("trickle", [True, False], ids=["trickled", "silent"])
def test_a_body_still_owed_after_its_answer_is_cut_at_the_deadline(conn: Conn, trickle: bool) -> None:
    """The answer went out before the body (405): what the client still owes counts as
    waiting for the next head, so neither trickling it byte by byte nor sending nothing
    keeps the connection open past header_timeout (uvicorn's keep-alive timer is 5 s)."""
    conn.send(b"POST /healthz HTTP/1.1\r\nHost: h\r\nContent-Length: 1000\r\n\r\n")
    assert conn.answer()[0] == 405
    started = time.monotonic()
    while time.monotonic() - started < HEADER_TIMEOUT + 1.5:
        try:
            if trickle:
                conn.send(b"a")
        except OSError:
            break
        if conn.answered_or_closed_within(0.2):
            break
    else:
        raise AssertionError(f"still open {HEADER_TIMEOUT + 1.5:g}s after the answer")
    assert time.monotonic() - started <= HEADER_TIMEOUT + 1.0


def test_a_pipelined_upgrade_that_never_completes_its_handshake_is_closed_without_a_word(
    broker: BrokerProcess, conn: Conn
) -> None:
    """An upgrade with a body, which websockets refuses to parse and uvicorn never answers:
    pipelined, its head was in at once, so the handshake gets a deadline of its own, which
    closes the connection and writes nothing. uvicorn 0.55 answers it instead, with
    websockets' own 400 "Failed to open a WebSocket connection: invalid request." and a
    close: also an end, and one with a reason."""
    upgrade = upgrade_head(console_target(broker), host="h").replace(b"\r\n\r\n", b"\r\nContent-Length: 5\r\n\r\nhello")
    conn.send(HEALTHZ + upgrade)
    assert conn.answer()[0] == 200
    started = time.monotonic()
    conn.sock.settimeout(HEADER_TIMEOUT + 2)
    rest = b""
    while chunk := conn.sock.recv(65536):
        rest += chunk
    if rest:
        assert rest.startswith(b"HTTP/1.1 400 ") and b"invalid request" in rest.lower(), rest
        return
    assert HEADER_TIMEOUT - 0.2 <= time.monotonic() - started <= HEADER_TIMEOUT + 1.0

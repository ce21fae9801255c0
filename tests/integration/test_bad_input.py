"""The bad-input matrix: every hostile or broken input gets its documented answer,
and the broker keeps serving everyone else while it does.

One broker process for the module (`tight_broker`: max_viewers=2, header_timeout=2 s,
max_message_size=64 KiB) relays one healthy console session from start to end; after
every test, `keeps_serving` proves that session still relays a framebuffer update, that
a fresh link still completes an RFB handshake, and that /healthz answers 200.

Rows that once wrote a traceback or a secret into the log (fixed since) run on
`spare_broker`, so that a regression there cannot hide behind the main broker's log,
which stays the witness for `test_log_holds_no_secrets_and_no_traceback`.

Raw sockets are used wherever a client library would normalise the bytes away.
"""

from __future__ import annotations

import os
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import libvirt
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from support.processes import BrokerProcess, start_broker
from support.raw_ws import RawWebSocket, frame, upgrade_head
from support.rfb_client import ServerInit, handshake, request_update
from support.wait import wait_until
from support.ws import close_of

pytestmark = pytest.mark.integration

HEADER_TIMEOUT = 2.0
MAX_MESSAGE_SIZE = 65536
MAX_VIEWERS = 2
# A FramebufferUpdateRequest for the top-left pixel only: a full answer proves the
# session relays both ways, at a few bytes instead of the whole screen.
ONE_PIXEL = ServerInit(width=1, height=1, name="")

# Every token this module handles, forged or minted: none may ever reach a log.
SEEN_TOKENS: list[str] = []


# -- raw HTTP, written by hand (raw WebSockets: support/raw_ws.py) ---------------------------


def port_of(broker: BrokerProcess) -> int:
    return int(broker.url.rsplit(":", 1)[1])


@dataclass
class HttpAnswer:
    status: int | None  # None: closed (or silent) without a status line
    head: str = ""
    closed: bool = False  # the broker closed (FIN or RST) within the time allowed
    elapsed: float = 0.0

    def header(self, name: str) -> str | None:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


def http_exchange(port: int, data: bytes, timeout: float = 5.0) -> HttpAnswer:
    """Send bytes exactly as given; read the status line and head (or the close)."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(data)
        except OSError:  # the broker gave up on us mid-send: that is an answer too
            pass
        received = b""
        closed = False
        try:
            while b"\r\n\r\n" not in received:
                chunk = sock.recv(65536)
                if not chunk:
                    closed = True
                    break
                received += chunk
        except ConnectionResetError:
            closed = True
        except TimeoutError:
            pass
    head = received.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status = int(head.split(" ", 2)[1]) if head.startswith("HTTP/1.") else None
    return HttpAnswer(status, head, closed, time.monotonic() - started)


# -- the broker under test, and the session that must survive everything --------------------


# One HTTP client for the module: httpx builds an SSL context per client (~40 ms), and
# BrokerProcess.api() makes a client per call.
HTTP = httpx.Client(timeout=15)


def api(broker: BrokerProcess, method: str, path: str, **kwargs: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {broker.api_key}"}
    return HTTP.request(method, broker.url + path, headers=headers, **kwargs)  # type: ignore[arg-type]


def mint(broker: BrokerProcess, vm: libvirt.virDomain, **body: object) -> dict:
    """broker.mint, remembering the token (the log test checks none of them was logged)."""
    minted = broker.mint(vm.name(), **body)
    SEEN_TOKENS.append(minted["token"])
    return minted


def mint_when_free(broker: BrokerProcess, vm: libvirt.virDomain, wait: float = 5.0) -> dict:
    """Mint once a viewer slot is free: a session a client just closed leaves the
    broker's books a moment after the client saw the close."""

    def attempt() -> dict | None:
        response = api(broker, "POST", f"/api/v1/domains/{vm.name()}/console")
        if response.status_code == 201:
            SEEN_TOKENS.append(response.json()["token"])
            return response.json()
        assert response.status_code == 429 and response.json()["error"]["code"] == "too_many_viewers", response.text
        return None

    return wait_until(attempt, wait, "a viewer slot to be given back", interval=0.05)


def log_since(broker: BrokerProcess, offset: int) -> str:
    """The broker's log from `offset` on, once a request made after the one under test is
    in it: whatever the broker had to say about the earlier one is in by then."""
    marker = f"/healthz?after={secrets.token_hex(4)}"
    assert HTTP.get(broker.url + marker).status_code == 200
    wait_until(lambda: marker in broker.log()[offset:], 5, f"the broker to log {marker}")
    return broker.log()[offset:]


@pytest.fixture(scope="module")
def tight_broker(tmp_path_factory: pytest.TempPathFactory, conn: libvirt.virConnect) -> Iterator[BrokerProcess]:
    process = start_broker(
        tmp_path_factory.mktemp("bad-input-broker"),
        extra_env={
            "BROKER_MAX_VIEWERS": str(MAX_VIEWERS),
            "BROKER_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
            "BROKER_MAX_MESSAGE_SIZE": str(MAX_MESSAGE_SIZE),
            # Minting is not under test here (test_mint_rate_limit has its own broker).
            "BROKER_MINT_RATE": "100000",
            "BROKER_MINT_BURST": "10000",
        },
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def spare_broker(tmp_path_factory: pytest.TempPathFactory, conn: libvirt.virConnect) -> Iterator[BrokerProcess]:
    """For rows whose known bug dirties the log (a traceback, a token)."""
    process = start_broker(
        tmp_path_factory.mktemp("bad-input-spare"), extra_env={"BROKER_HEADER_TIMEOUT": str(HEADER_TIMEOUT)}
    )
    yield process
    process.stop()


@pytest.fixture(scope="module")
def healthy(tight_broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> Iterator[tuple[ClientConnection, ServerInit]]:
    """One real console session, opened before any bad input and kept to the end."""
    with connect(mint(tight_broker, tcp_vm)["websocket_url"], open_timeout=10) as ws:
        yield ws, handshake(ws)


@pytest.fixture(autouse=True)
def keeps_serving(tight_broker: BrokerProcess, tcp_vm: libvirt.virDomain, healthy) -> Iterator[None]:
    """After every row: the healthy session still relays both ways (a non-incremental
    FramebufferUpdateRequest, answered in full), a fresh link still completes an RFB
    handshake, and /healthz is 200."""
    yield
    ws, _init = healthy
    rectangles, _pixels = request_update(ws, ONE_PIXEL)
    assert rectangles >= 1, "the healthy session stopped relaying"
    with connect(mint_when_free(tight_broker, tcp_vm)["websocket_url"], open_timeout=10) as fresh:
        assert handshake(fresh).width > 0
    assert HTTP.get(tight_broker.url + "/healthz").status_code == 200


# -- tokens --------------------------------------------------------------------------------------


def _forged() -> str:
    return secrets.token_urlsafe(32)  # well-formed, never minted


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda real: _forged(), id="forged"),
        pytest.param(lambda real: real[:20], id="truncated-20"),
        pytest.param(lambda real: real + "A", id="one-char-too-long"),
        pytest.param(lambda real: secrets.token_urlsafe(3750)[:5000], id="overlong-5000"),
        pytest.param(
            lambda real: secrets.token_urlsafe(7500)[:10_000],
            id="overlong-10000",
        ),
        pytest.param(lambda real: "%C3%A9%E2%82%AC%F0%9F%92%A9" * 6, id="non-ascii-percent-encoded"),
        pytest.param(lambda real: "é€💩" + real[:40], id="non-ascii-iri"),  # the client percent-encodes it
        pytest.param(lambda real: "%ZZ%00%FF%fe%%%2" + real[:30], id="percent-garbage"),
        pytest.param(lambda real: real[:42] + "%00", id="nul-byte"),
    ],
)
def test_invalid_tokens_are_refused_fast(tight_broker: BrokerProcess, tcp_vm: libvirt.virDomain, make) -> None:
    """Token guessing and parser abuse: anything but a live minted token closes with 4101
    and a reason, fast, whatever its length or bytes (a refusal with HTTP 414 for a
    request line too long to parse would do as well)."""
    token = make(mint(tight_broker, tcp_vm)["token"])
    SEEN_TOKENS.append(token)
    url = f"{tight_broker.ws_url}/websockify?token={token}"
    started = time.monotonic()
    try:
        closed = close_of(url, timeout=1.5)
        code, reason = closed.code, closed.reason
    except InvalidStatus as refused:
        code, reason = refused.response.status_code, refused.response.reason_phrase
        assert code == 414, (code, reason)
    except TimeoutError:
        raise AssertionError(f"no answer within 1.5 s to a {len(token)}-character token") from None
    elapsed = time.monotonic() - started
    assert code in (4101, 414), (code, reason)
    assert reason
    assert elapsed < 1.0, f"refusal took {elapsed:.2f}s"


def test_foreign_origin_is_refused_and_the_token_kept(tight_broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    """Cross-site WebSocket hijacking: a page on another origin gets 4106, and cannot
    burn the user's link by trying (the Origin is checked before the token is spent)."""
    url = mint_when_free(tight_broker, tcp_vm)["websocket_url"]
    closed = close_of(url, origin="https://evil.example")
    assert closed.code == 4106 and "evil.example" in closed.reason
    with connect(url, open_timeout=10) as ws:  # no Origin: a panel's own client
        assert handshake(ws).width > 0


# -- malformed upgrades: an HTTP 4xx from uvicorn, never a 500 or a traceback ---------------------


@pytest.mark.parametrize(
    ("request_bytes", "allowed"),
    [
        # Without both Upgrade and Connection: Upgrade it is a plain GET of a WebSocket-only route.
        pytest.param(lambda: upgrade_head("/websockify?token=x", drop=("Upgrade",)), {404}, id="no-upgrade-header"),
        pytest.param(
            lambda: upgrade_head("/websockify?token=x", drop=("Connection",)), {404}, id="no-connection-header"
        ),
        pytest.param(lambda: upgrade_head("/websockify?token=x", headers={"Upgrade": "h2c"}), {404}, id="upgrade-h2c"),
        pytest.param(
            lambda: upgrade_head("/websockify?token=x", headers={"Sec-WebSocket-Key": "not*base64!"}),
            {400},
            id="bad-key",
        ),
        pytest.param(
            lambda: upgrade_head("/websockify?token=x", headers={"Sec-WebSocket-Key": "c2hvcnQ="}),
            {400},
            id="short-key",
        ),
        pytest.param(lambda: upgrade_head("/websockify?token=x", drop=("Sec-WebSocket-Key",)), {400}, id="no-key"),
        # RFC 6455 §4.4: 426 (for instance) + Sec-WebSocket-Version: 13; websockets answers a bare 400.
        pytest.param(
            lambda: upgrade_head("/websockify?token=x", headers={"Sec-WebSocket-Version": "8"}),
            {400, 426},
            id="version-8",
        ),
        pytest.param(
            lambda: upgrade_head("/websockify?token=x", headers={"Sec-WebSocket-Protocol": "binary, \xe9"}),
            {400},
            id="bad-subprotocol",
        ),
        pytest.param(
            lambda: upgrade_head("/websockify?token=x").replace(b"GET ", b"POST ", 1), {405}, id="post-upgrade"
        ),
        # RFC 6455 §4.1: HTTP/1.1 or later; uvicorn alone would rebuild the head as 1.1 and accept it.
        pytest.param(
            lambda: upgrade_head("/websockify?token=x", version="1.0"),
            {400},
            id="http-1.0-upgrade",
        ),
        pytest.param(lambda: upgrade_head("/websockify?token=\xe9\xff"), {400}, id="raw-non-ascii-target"),
        pytest.param(lambda: upgrade_head("/websockify?token=x", drop=("Host",)), {400}, id="no-host"),
        pytest.param(lambda: upgrade_head("/healthz"), {403}, id="upgrade-to-an-http-route"),
        pytest.param(lambda: upgrade_head("/static/console.css"), {403}, id="upgrade-to-a-static-file"),
    ],
)
def test_malformed_upgrade_gets_an_http_4xx(tight_broker: BrokerProcess, request_bytes, allowed: set[int]) -> None:
    """Handshake fuzzing: a broken upgrade is answered by the HTTP layer with a 4xx
    (the exact status is recorded in `allowed`), never a 500 or a traceback."""
    offset = len(tight_broker.log())
    answer = http_exchange(port_of(tight_broker), request_bytes())
    assert answer.status in allowed, answer.head
    if answer.status == 426:
        assert answer.header("Sec-WebSocket-Version") == "13", answer.head
    new_log = log_since(tight_broker, offset)
    assert "Traceback" not in new_log and "Internal Server Error" not in new_log and '" 500' not in new_log, new_log


@pytest.mark.parametrize(
    "request_bytes",
    [
        pytest.param(lambda: upgrade_head("/websockify?token=x", headers={"X-Big": "a" * 9000}), id="header-line-9000"),
        pytest.param(
            lambda: upgrade_head("/websockify?token=x", headers={f"X-H{i}": "v" for i in range(200)}), id="200-headers"
        ),
        pytest.param(
            lambda: upgrade_head("/websockify?token=x", headers={"Content-Length": "5"}) + b"hello", id="with-body"
        ),
    ],
)
def test_upgrade_heads_websockets_cannot_parse_are_answered(tight_broker: BrokerProcess, request_bytes) -> None:
    """Resource exhaustion through half-parsed upgrades: each is refused (4xx) and closed
    within header_timeout."""
    answer = http_exchange(port_of(tight_broker), request_bytes(), timeout=HEADER_TIMEOUT + 0.5)
    assert answer.status is not None and 400 <= answer.status < 500 or answer.closed, answer


# -- broken frames after a valid handshake ------------------------------------------------------------


@pytest.mark.parametrize(
    ("frames", "expected"),
    [
        pytest.param(lambda: frame(0x2, b"RFB", masked=False), 1002, id="unmasked"),
        pytest.param(lambda: frame(0x2, os.urandom(MAX_MESSAGE_SIZE + 1)), 1009, id="oversized"),
        pytest.param(lambda: frame(0x2, b"", length=10_000_000)[:14], 1009, id="oversized-announced-only"),
        pytest.param(
            # Payload streams through as it arrives: the first fragment is shorter than the
            # 12-byte RFB version, so QEMU waits for more instead of closing first.
            lambda: frame(0x2, b"RFB 003", fin=False) + frame(0x0, b"b" * (MAX_MESSAGE_SIZE - 3)),
            1009,
            id="oversized-in-fragments",
        ),
        pytest.param(lambda: frame(0x9, b"ping", fin=False), 1002, id="fragmented-ping"),
        pytest.param(lambda: frame(0x3, b"x"), 1002, id="reserved-opcode"),
        pytest.param(lambda: frame(0x2, b"x", rsv=4), 1002, id="rsv1-without-extension"),
        pytest.param(lambda: frame(0x0, b"x"), 1002, id="continuation-without-start"),
        pytest.param(lambda: frame(0x1, b"hello"), 4302, id="text"),
    ],
)
def test_broken_frames_close_with_their_code(
    tight_broker: BrokerProcess, tcp_vm: libvirt.virDomain, frames, expected: int
) -> None:
    """Frame-level attacks on a live session: the session closes with the protocol's
    code (1002 protocol error, 1009 too big) or the broker's (4302 text), never hangs
    or takes down anyone else's session."""
    ws = RawWebSocket(mint_when_free(tight_broker, tcp_vm)["websocket_url"])
    try:
        opcode, payload = ws.read_frame()  # the console is live: QEMU's ProtocolVersion arrives
        assert opcode == 0x2 and payload.startswith(b"RFB ")
        offset = len(tight_broker.log())
        ws.send(frames())
        code, reason = ws.read_close()
    finally:
        ws.close()
    assert code == expected, (code, reason)
    assert "Traceback" not in log_since(tight_broker, offset)


def test_invalid_utf8_text_closes_without_a_traceback(spare_broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    """Log flooding through a protocol error: 1007, one quiet log line at most."""
    offset = len(spare_broker.log())
    ws = RawWebSocket(mint(spare_broker, tcp_vm)["websocket_url"])
    try:
        ws.read_frame()
        ws.send(frame(0x1, b"\xff\xfe"))
        code, _reason = ws.read_close()
    finally:
        ws.close()
    assert code == 1007
    assert "Traceback" not in log_since(spare_broker, offset)


# -- floods and slow clients ------------------------------------------------------------------------------

_BAD_LINES = [
    b"GET\r\n\r\n",
    b"GET / HTTP/1.1 extra\r\n\r\n",
    b"\x00\x01\x02 / HTTP/1.1\r\n\r\n",
    b"GET /\xff\xfe HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost : h\r\n\r\n",
    b"GET / HTTP/1.1\r\nNo-Colon\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: -1\r\n\r\n",
    b"POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"\r\n\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n",  # a TLS ClientHello on the plain port
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
    b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\n\r\n",
    b"GET //evil.example/%2F.. HTTP/1.1\r\nHost: h\r\n\r\n",
    b"GET /static/..%2f..%2fREADME.md HTTP/1.1\r\nHost: h\r\n\r\n",
]


def _garbage(i: int) -> bytes:
    kind = i % 4
    if kind == 0:
        return os.urandom(1 + i % 2048) + b"\r\n\r\n"
    if kind == 1:
        return _BAD_LINES[i % len(_BAD_LINES)]
    if kind == 2:  # absurd header sizes: 20 kB, 70 kB, 300 kB in one header
        return b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * (20_000, 70_000, 300_000)[i % 3] + b"\r\n\r\n"
    return b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Many: y\r\n" * (50, 100)[i % 2] + b"\r\n"


def test_thousands_of_garbage_requests(tight_broker: BrokerProcess) -> None:
    """Request flooding and parser fuzzing: 3000 requests of random bytes, malformed
    request lines and absurd header sizes, 200 at a time. Each is answered with a 4xx
    or closed, none with a 5xx; memory does not balloon; no traceback."""
    port = port_of(tight_broker)
    offset = len(tight_broker.log())
    rss_before = tight_broker.rss_mib()
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=200) as pool:
        answers = list(pool.map(lambda i: http_exchange(port, _garbage(i), timeout=HEADER_TIMEOUT + 3), range(3000)))
    elapsed = time.monotonic() - started
    rss_growth_mib = tight_broker.rss_mib() - rss_before
    statuses = Counter(a.status for a in answers)
    assert all((a.status is not None and 400 <= a.status < 500) or a.closed for a in answers), statuses
    assert not any(a.status and a.status >= 500 for a in answers), statuses
    assert elapsed < 30, f"3000 garbage requests took {elapsed:.1f}s"
    assert rss_growth_mib < 50, f"RSS grew by {rss_growth_mib:.0f} MiB"
    assert "Traceback" not in log_since(tight_broker, offset)


@pytest.mark.parametrize(
    "head",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\n" + b"X-Many: y\r\n" * 3000 + b"\r\n", id="3000-fields-33kB"),
        pytest.param(b"GET / HTTP/1.1\r\nHost: h\r\nX-Big: " + b"a" * 65536 + b"\r\n\r\n", id="one-field-64kB"),
    ],
)
def test_oversized_request_head_is_refused(tight_broker: BrokerProcess, head: bytes) -> None:
    """Memory and CPU amplification through request heads: a head over 16 KiB, or with
    thousands of fields, is refused (431 or 400) before anything parses it into objects."""
    answer = http_exchange(port_of(tight_broker), head)
    assert answer.status in (400, 431), answer.head


def test_malformed_chunked_body_leaves_no_traceback(spare_broker: BrokerProcess) -> None:
    """Log flooding through request smuggling-shaped bodies: a 4xx, one quiet line."""
    offset = len(spare_broker.log())
    answer = http_exchange(
        port_of(spare_broker),
        b"POST /api/v1/domains/x/console HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    )
    assert answer.status == 400
    assert "Traceback" not in log_since(spare_broker, offset)


def test_slowloris_connections_are_cut_at_header_timeout(tight_broker: BrokerProcess, healthy) -> None:
    """Slowloris: 20 connections send a partial request line, then one header byte a
    second. Each is cut (408 or a close) within header_timeout + 2 s, and the healthy
    session relays meanwhile."""
    port = port_of(tight_broker)
    socks = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.sendall(b"GET /healthz HT")
        sock.setblocking(False)
        socks.append((sock, time.monotonic()))
    trickle = iter(b"TP/1.1\r\nX-Loris: " + b"a" * 100)
    cut_after: dict[int, float] = {}
    answered: dict[int, bytes] = {}
    checked_healthy = False
    next_byte = time.monotonic() + 1.0
    deadline = time.monotonic() + HEADER_TIMEOUT + 4
    try:
        while len(cut_after) < len(socks) and time.monotonic() < deadline:
            now = time.monotonic()
            for i, (sock, opened) in enumerate(socks):
                if i in cut_after:
                    continue
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    data = b""
                if data:
                    answered[i] = answered.get(i, b"") + data
                else:
                    cut_after[i] = now - opened
            if now >= next_byte:
                byte = bytes([next(trickle)])
                for i, (sock, _opened) in enumerate(socks):
                    if i not in cut_after:
                        try:
                            sock.send(byte)
                        except OSError:
                            cut_after[i] = now - socks[i][1]
                next_byte += 1.0
                if not checked_healthy:  # mid-attack: the healthy session still relays
                    ws, _init = healthy
                    assert request_update(ws, ONE_PIXEL)[0] >= 1
                    checked_healthy = True
            time.sleep(0.05)
    finally:
        for sock, _opened in socks:
            sock.close()
    assert len(cut_after) == len(socks), f"{len(socks) - len(cut_after)} slow connection(s) never cut"
    assert max(cut_after.values()) <= HEADER_TIMEOUT + 2, sorted(cut_after.values())
    assert all(data.startswith(b"HTTP/1.1 408 ") for data in answered.values()), answered
    assert checked_healthy


def test_slowloris_after_a_first_request_is_cut_too(tight_broker: BrokerProcess) -> None:
    """Slowloris on a kept-alive connection: the second request's headers get the same deadline."""
    sock = socket.create_connection(("127.0.0.1", port_of(tight_broker)), timeout=5)
    try:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first:
            first += sock.recv(4096)
        head, body = first.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.1 200 "), head
        length = int(HttpAnswer(200, head.decode("latin-1")).header("content-length") or 0)
        while len(body) < length:  # read the whole first answer, so that whatever comes next is new
            body += sock.recv(4096)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nX-Loris: ")
        sock.settimeout(0.9)
        started = time.monotonic()
        while time.monotonic() - started < HEADER_TIMEOUT + 2:
            try:
                sock.send(b"a")
                data = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return  # cut: reset
            assert not data or data.startswith(b"HTTP/1.1 408 "), data
            return  # cut: EOF or 408
        raise AssertionError(f"still open after {HEADER_TIMEOUT + 2:g}s of trickled headers")
    finally:
        sock.close()


# -- too many sessions per console -------------------------------------------------------------------------


def test_third_viewer_is_refused(tight_broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    """Unlimited sessions per console (OSSN-0008): with max_viewers=2 and the healthy
    session as the first, the second viewer works, the third gets 4401, and minting at
    the cap is refused with REST 429 too_many_viewers."""
    second = mint_when_free(tight_broker, tcp_vm)["websocket_url"]
    third = mint(tight_broker, tcp_vm)["websocket_url"]  # minted below the cap
    with connect(second, open_timeout=10) as ws:
        assert handshake(ws).width > 0
        closed = close_of(third)
        assert closed.code == 4401 and str(MAX_VIEWERS) in closed.reason
        response = api(tight_broker, "POST", f"/api/v1/domains/{tcp_vm.name()}/console")
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "too_many_viewers"


def test_simultaneous_opens_cannot_exceed_max_viewers(tight_broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    """Viewer-cap race (time of check to time of use): only max_viewers sessions in all."""
    urls = [mint_when_free(tight_broker, tcp_vm)["websocket_url"] for _ in range(4)]
    start = threading.Barrier(len(urls))
    counted = threading.Barrier(len(urls) + 1)  # every outcome is in before anyone lets go
    release = threading.Event()
    outcomes: list[int | str] = []  # "open", or the close code of a refusal
    lock = threading.Lock()

    def open_one(url: str) -> None:
        start.wait()
        with connect(url, open_timeout=10) as ws:
            try:
                handshake(ws)
                outcome: int | str = "open"
            except ConnectionClosed as closed:
                outcome = closed.rcvd.code if closed.rcvd else 1006
            with lock:
                outcomes.append(outcome)
            counted.wait(timeout=20)
            release.wait(timeout=20)

    threads = [threading.Thread(target=open_one, args=(url,)) for url in urls]
    for thread in threads:
        thread.start()
    try:
        counted.wait(timeout=20)
        opened = outcomes.count("open")
        assert opened <= MAX_VIEWERS - 1, f"{opened + 1} viewers at once with max_viewers={MAX_VIEWERS}: {outcomes}"
        assert set(outcomes) == {"open", 4401}, outcomes
    finally:
        release.set()
        for thread in threads:
            thread.join(timeout=20)


# -- REST ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        pytest.param(None, id="none"),
        pytest.param(b"Bearer " + b"x" * 43, id="wrong-key"),
        pytest.param(b"Bearer", id="empty-bearer"),
        pytest.param(b"Bearer \xe9\xffgarbage", id="non-ascii"),
        pytest.param("basic-with-the-right-key", id="right-key-basic-scheme"),
        pytest.param("right-key-with-suffix", id="right-key-plus-one"),
    ],
)
@pytest.mark.parametrize(("method", "path"), [("GET", "/api/v1/domains"), ("POST", "/api/v1/domains/x/console")])
def test_rest_without_a_valid_key_is_401(tight_broker: BrokerProcess, authorization, method: str, path: str) -> None:
    """API key guessing and scheme confusion: 401 with WWW-Authenticate: Bearer, no detail."""
    if authorization == "basic-with-the-right-key":
        authorization = f"Basic {tight_broker.api_key}".encode()
    elif authorization == "right-key-with-suffix":
        authorization = f"Bearer {tight_broker.api_key}x".encode()
    headers = {} if authorization is None else {"Authorization": authorization}
    response = HTTP.request(method, tight_broker.url + path, headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["error"]["code"] == "unauthorized"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b"{", id="truncated"),
        pytest.param(b"not json", id="not-json"),
        pytest.param(b"\xff\xfe\x00", id="invalid-utf8"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(b'"ttl"', id="string"),
        pytest.param(b'{"ttl": "60"}', id="ttl-string"),
        pytest.param(b'{"ttl": 1e999}', id="ttl-infinite"),
        pytest.param(b'{"ttl": NaN}', id="ttl-nan"),
        pytest.param(b'{"ttl": -1}', id="ttl-negative"),
        pytest.param(b'{"ttl": 100000}', id="ttl-above-max"),
        pytest.param(b'{"graphics": true}', id="graphics-bool"),
        pytest.param(b'{"graphics": -1}', id="graphics-negative"),
        pytest.param(b'{"ttl": 10, "admin": true}', id="unknown-field"),
    ],
)
def test_malformed_json_is_422(tight_broker: BrokerProcess, tcp_vm: libvirt.virDomain, body: bytes) -> None:
    """Input-validation bypass on minting: a clear 422 invalid_input, never a 500, no link."""
    response = api(tight_broker, "POST", f"/api/v1/domains/{tcp_vm.name()}/console", content=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid_input"


def test_deeply_nested_json_is_422(spare_broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    """Parser exhaustion on minting: 422, never a 500."""
    response = api(spare_broker, "POST", f"/api/v1/domains/{tcp_vm.name()}/console", content=b"[" * 100_000)
    assert response.status_code == 422, response.text


def test_mint_rate_limit(tmp_path: Path, tcp_vm: libvirt.virDomain) -> None:
    """Link flooding by a panel (or a stolen key): past mint_burst, 429 rate_limited with Retry-After."""
    small = start_broker(tmp_path / "state", extra_env={"BROKER_MINT_RATE": "6", "BROKER_MINT_BURST": "3"})
    try:
        answers = [api(small, "POST", f"/api/v1/domains/{tcp_vm.name()}/console") for _ in range(4)]
        SEEN_TOKENS.extend(a.json()["token"] for a in answers if a.status_code == 201)
        assert [a.status_code for a in answers] == [201, 201, 201, 429]
        assert answers[3].json()["error"]["code"] == "rate_limited"
        assert 1 <= int(answers[3].headers["retry-after"]) <= 10
    finally:
        small.stop()


# -- logs -----------------------------------------------------------------------------------------------------


def test_percent_encoded_token_key_is_redacted(spare_broker: BrokerProcess, tcp_vm: libvirt.virDomain) -> None:
    """Tokens in access logs: however the query spells 'token', the log never holds one."""
    token = mint(spare_broker, tcp_vm)["token"]
    response = HTTP.get(f"{spare_broker.url}/console?%74oken={token}")  # httpx does not follow redirects
    assert response.status_code == 200  # the broker read the token (the page for it): so must the redaction
    assert token not in log_since(spare_broker, 0)


def test_log_holds_no_secrets_and_no_traceback(tight_broker: BrokerProcess) -> None:
    """Secrets in logs: after every row above, the main broker's log holds none of the
    tokens used, no API key and no traceback."""
    log = tight_broker.log()
    assert "Traceback" not in log
    assert tight_broker.api_key not in log
    leaked = [t for t in SEEN_TOKENS if len(t) >= 20 and t in log]
    assert not leaked, f"{len(leaked)} token(s) in the log, e.g. {leaked[0][:12]}…"
    assert SEEN_TOKENS  # at least the healthy session's token was counted

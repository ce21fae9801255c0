"""A scripted stand-in for the broker's side of the terminal page, for page tests that need
exact control of the frames (a character split across two frames, a dropped-output
notice, a take-over close) that a real guest cannot be made to produce on cue.

It serves the real page and static files with the broker's own headers (so its
Content-Security-Policy applies); on each WebSocket connection it reads the page's first
frame (its token or pass, web/pageauth.py), answers with `session` as the broker's session
frame, and records the query and every later frame the page sends; the test sends and
closes from its own thread. Everything else is the real broker's job, tested
against it in test_terminal_page.py's other tests.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from broker.web.app import PAGE_HEADERS, STATIC_HEADERS
from broker.web.assets import WebFiles

UUID = "0b7c3f4e-5a51-4e3e-9d0c-3c1f2a6b9e10"
TOKEN = "t" * 43  # what the page presents first (the stand-in takes anything)
PASS = "p" * 43  # what it is given for next time


@dataclass
class Connection:
    query: dict[str, str]
    credential: dict[str, str] = field(default_factory=dict)  # the page's first frame
    frames: list[bytes | str] = field(default_factory=list)  # what the page sent after it, in order
    closed: bool = False

    def sent_bytes(self) -> bytes:
        return b"".join(f for f in self.frames if isinstance(f, bytes))

    def sent_controls(self) -> list[dict[str, Any]]:
        return [json.loads(f) for f in self.frames if isinstance(f, str)]


@dataclass
class FakeSerial:
    url: str
    session: dict[str, Any]
    # Called with a new connection's query: a (code, reason) refuses it at once.
    refuse: Callable[[dict[str, str]], tuple[int, str] | None] = lambda _query: None
    # Sent on each accepted connection, as the broker opens with its history message;
    # by default an empty history.
    greeting: list[bytes | str | dict[str, Any]] = field(
        default_factory=lambda: [{"type": "history", "available": True, "bytes": 0}, {"type": "live"}]
    )
    # Seconds the stand-in waits between the page's credential and its session frame: an
    # attempt kept in flight (as a slow libvirt lookup would).
    session_delay: float = 0.0
    connections: list[Connection] = field(default_factory=list)
    loop: asyncio.AbstractEventLoop | None = None
    sockets: list[WebSocket] = field(default_factory=list)

    @property
    def page_url(self) -> str:
        """The terminal page as a link opens it (the token in the fragment, which the page
        accepts as well as the query); the page then moves to clean_url."""
        return self.link("terminal")

    @property
    def clean_url(self) -> str:
        return f"{self.url}/console/{UUID}/terminal"

    def link(self, page: str) -> str:
        """A page ('' the VNC page, 'terminal') opened with the token."""
        return f"{self.url}/console/{UUID}/{page}#token={TOKEN}"

    def wait_connections(self, count: int, timeout: float = 10.0) -> Connection:
        """The `count`th connection (from 1), once the page has opened it."""
        deadline = time.monotonic() + timeout
        while len(self.connections) < count:
            assert time.monotonic() < deadline, f"the page opened {len(self.connections)} connection(s), not {count}"
            time.sleep(0.02)
        return self.connections[count - 1]

    def open_connections(self) -> list[Connection]:
        return [c for c in self.connections if not c.closed]

    def _run(self, coro: Any) -> None:
        assert self.loop is not None
        asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout=10)

    def send(self, *frames: bytes | str | dict[str, Any]) -> None:
        """Frames to the page on the newest connection: bytes binary, str or dict (as JSON) text."""
        self._run(_send(self.sockets[-1], frames))

    def close(self, code: int, reason: str = "") -> None:
        """Close the newest connection as the broker would."""
        self._run(self.sockets[-1].close(code, reason))

    def app(self) -> Starlette:
        web = WebFiles(headers=STATIC_HEADERS)  # the pages as built, like the broker's

        def render(name: str) -> Response:
            html = web.render(name, uuid=UUID, console_dir="./", static="../../static")
            return HTMLResponse(html, headers=PAGE_HEADERS)

        async def vnc_page(_request: Request) -> Response:
            return render("console")

        async def page(_request: Request) -> Response:
            return render("terminal")

        async def websocket(ws: WebSocket) -> None:
            offered = ws.scope.get("subprotocols") or []
            await ws.accept(subprotocol="binary" if "binary" in offered else None)
            connection = Connection(dict(ws.query_params))
            self.connections.append(connection)
            first = await ws.receive()
            if first["type"] == "websocket.disconnect":
                connection.closed = True
                return
            connection.credential = json.loads(first["text"])
            try:
                if self.session_delay:
                    await asyncio.sleep(self.session_delay)
                # As the broker does: the session frame as soon as the credential is good,
                # before the console is opened (and maybe refused).
                await _send(ws, [{"type": "session", "pass": PASS, **self.session}])
                refusal = self.refuse(connection.query)
                if refusal:
                    await ws.close(*refusal)
                    connection.closed = True
                    return
                self.sockets.append(ws)
                await _send(ws, self.greeting)
                while True:
                    message = await ws.receive()
                    if message["type"] == "websocket.disconnect":
                        break
                    connection.frames.append(message["bytes"] if message.get("bytes") is not None else message["text"])
            except (WebSocketDisconnect, OSError, RuntimeError):
                pass  # the page closed it (maybe while the stand-in was still talking)
            connection.closed = True

        return Starlette(
            routes=[
                Route(f"/console/{UUID}/terminal", page),
                Route(f"/console/{UUID}/", vnc_page),
                WebSocketRoute(f"/console/{UUID}/websockify", websocket),
                Route("/static/{name}", web.static_file),
            ]
        )


async def _send(ws: WebSocket, frames: Sequence[bytes | str | dict[str, Any]]) -> None:
    for frame in frames:
        if isinstance(frame, bytes):
            await ws.send_bytes(frame)
        else:
            await ws.send_text(frame if isinstance(frame, str) else json.dumps(frame))


def serial_session(**overrides: Any) -> dict[str, Any]:
    """What the broker's session frame says for a serial console (besides its type and pass)."""
    return {
        "domain": {"name": "web-1", "uuid": UUID},
        "expires_at": "2099-01-01T00:00:00+00:00",
        "expires_in": 600,
        "kind": "serial",
        "console": "serial0",
        "may_take_over": True,
        **overrides,
    }


@contextmanager
def fake_serial(**session: Any) -> Iterator[FakeSerial]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    fake = FakeSerial(f"http://127.0.0.1:{sock.getsockname()[1]}", serial_session(**session))
    config = uvicorn.Config(fake.app(), log_config=None, access_log=False, lifespan="off")
    server = uvicorn.Server(config)

    def run() -> None:
        fake.loop = asyncio.new_event_loop()
        fake.loop.run_until_complete(server.serve(sockets=[sock]))

    thread = threading.Thread(target=run, name="fake-serial", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the stand-in server did not start"
        time.sleep(0.01)
    try:
        yield fake
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()

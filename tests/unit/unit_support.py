"""Plain helpers for the unit tests (fixtures live in conftest.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from broker.sources.consoles import LibvirtConsoles

T = TypeVar("T")

TEST_URI = "test:///default"
API_KEY = "k" * 32
AUTH = {"Authorization": f"Bearer {API_KEY}"}
# The domain the test driver ships with: running, and without any graphics device.
BUILTIN_DOMAIN = "test"
START_TIME = 1_700_000_000.0


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, now: float = START_TIME) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (right now)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def vnc_graphics(port: int, listen: str = "127.0.0.1") -> str:
    return f"<graphics type='vnc' port='{port}' autoport='no' listen='{listen}'/>"


class FakeVncServer:
    """A listener on 127.0.0.1 that greets like a VNC server and then echoes."""

    GREETING = b"RFB 003.008\n"

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(4)
        self.port = self.listener.getsockname()[1]
        self.connections: list[socket.socket] = []
        self.accepted = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:
                return
            self.connections.append(sock)
            self.accepted.set()
            threading.Thread(target=self._echo, args=(sock,), daemon=True).start()

    def _echo(self, sock: socket.socket) -> None:
        try:
            sock.sendall(self.GREETING)
            while data := sock.recv(65536):
                sock.sendall(data)
        except OSError:
            pass

    def drop_clients(self) -> None:
        for sock in self.connections:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        self.drop_clients()


def mute(consoles: LibvirtConsoles) -> None:
    """Stop a LibvirtConsoles from handing lifecycle events to its event loop.

    Needed before that loop closes: close() does not deregister the lifecycle
    callback, and the test driver keeps a closed-but-referenced connection
    delivering events, so later tests' domains would be reported to a closed loop
    ("RuntimeError: Event loop is closed" on libvirt's event thread).
    """
    consoles._on_ended.clear()


def run_async(coroutine: Coroutine[Any, Any, T]) -> T:
    """asyncio.run() in a thread of its own: in the whole suite, Playwright's sync API
    (tests/e2e) leaves an event loop running in the main thread, where asyncio.run() fails."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coroutine).result(timeout=60)


@contextlib.contextmanager
def page_socket(client: Any, uuid: str, **credential: str) -> Iterator[Any]:
    """What the console page does (web/public/session.js), on a TestClient: open
    /console/{uuid}/websockify and send {"token": …} or {"pass": …} as its first frame.
    The broker answers with its session frame (see session_of) or closes."""
    with client.websocket_connect(f"/console/{uuid}/websockify") as ws:
        ws.send_text(json.dumps(credential))
        yield ws


def session_of(ws: Any) -> dict[str, Any]:
    """The broker's first frame on a page socket: {"type": "session", "pass": …, …}."""
    frame = json.loads(ws.receive_text())
    assert frame["type"] == "session", frame
    return frame  # type: ignore[no-any-return]

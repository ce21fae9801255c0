"""How a console WebSocket ended, seen from a real client; the console page's socket as the page opens it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect


@dataclass
class Closed:
    code: int
    reason: str
    received: bytes  # what the broker relayed before it closed
    seconds: float  # from connect to close


def close_of(url: str, *, origin: str | None = None, timeout: float = 10.0) -> Closed:
    """Connect, read until closed, and say how it ended; a close without a close frame (a
    bare 1006) fails the test."""
    started = time.monotonic()
    received = b""
    with connect(url, origin=origin, open_timeout=timeout) as ws:  # type: ignore[arg-type]
        try:
            while True:
                message = ws.recv(timeout=timeout)
                received += message if isinstance(message, bytes) else message.encode()
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "closed without a close frame (a bare 1006)"
            return Closed(closed.rcvd.code, closed.rcvd.reason, received, time.monotonic() - started)
    raise AssertionError("unreachable")


@contextmanager
def page_socket(
    ws_base: str,
    uuid: str,
    *,
    origin: str | None = None,
    takeover: bool = False,
    timeout: float = 10.0,
    **credential: str,
) -> Iterator[ClientConnection]:
    """What the console page does (web/public/session.js): open {ws_base}/console/{uuid}/websockify
    and send {"token": …} or {"pass": …} as the first frame. The broker answers with its
    session frame (session_of) and then the console's stream, or closes with a reason."""
    url = f"{ws_base}/console/{uuid}/websockify" + ("?takeover=1" if takeover else "")
    with connect(url, origin=origin, open_timeout=timeout, subprotocols=["binary"]) as ws:  # type: ignore[arg-type,list-item]
        try:
            ws.send(json.dumps(credential))
        except ConnectionClosed:
            pass  # refused before it was read (a foreign Origin): the next recv says how
        yield ws


def session_of(ws: ClientConnection, timeout: float = 10.0) -> dict[str, Any]:
    """The broker's first frame on a page socket: {"type": "session", "pass": …, …}."""
    frame = ws.recv(timeout=timeout)
    assert isinstance(frame, str), f"a binary frame before the session frame: {frame[:40]!r}"
    body = json.loads(frame)
    assert body["type"] == "session", body
    return body  # type: ignore[no-any-return]


@contextmanager
def open_page(ws_base: str, link: dict[str, Any], **kwargs: Any) -> Iterator[tuple[ClientConnection, dict[str, Any]]]:
    """A minted link opened as the page opens it: (the socket, the session frame)."""
    with page_socket(ws_base, link["domain"]["uuid"], token=link["token"], **kwargs) as ws:
        yield ws, session_of(ws)


def page_close_of(ws_base: str, uuid: str, *, timeout: float = 10.0, **credential: str) -> Closed:
    """A page socket that is refused, before or after its session frame: how it ended."""
    started = time.monotonic()
    received = b""
    with page_socket(ws_base, uuid, timeout=timeout, **credential) as ws:
        try:
            while True:
                message = ws.recv(timeout=timeout)
                if isinstance(message, bytes):
                    received += message
        except ConnectionClosed as closed:
            assert closed.rcvd is not None, "closed without a close frame (a bare 1006)"
            return Closed(closed.rcvd.code, closed.rcvd.reason, received, time.monotonic() - started)
    raise AssertionError("unreachable")

"""How a console WebSocket ended, seen from a real client."""

from __future__ import annotations

import time
from dataclasses import dataclass

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect


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

"""Limits that keep one client from using up the broker: rate of minting, slow requests.

Session caps live with the sessions in app.py; these are the parts with state of
their own.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import h11

if TYPE_CHECKING:  # imported where used: config.py (and so the CLI) imports this module
    from uvicorn.protocols.http.h11_impl import H11Protocol


@dataclass(frozen=True)
class SessionLimits:
    """Caps on console sessions; 0 turns idle_timeout and max_session_length off."""

    max_sessions: int = 1024
    max_viewers: int = 16
    max_pending: int = 64
    idle_timeout: float = 0.0
    max_session_length: float = 0.0
    mint_rate: float = 120.0
    mint_burst: int = 30


class RateLimiter:
    """A token bucket per key: `rate` per minute on average, bursts up to `burst`."""

    def __init__(self, rate_per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str) -> float:
        """0 if allowed now (and counted), else the seconds to wait before trying again."""
        now = self.clock()
        level, last = self._buckets.get(key, (self.burst, now))
        level = min(self.burst, level + (now - last) * self.rate)
        if level >= 1.0:
            self._buckets[key] = (level - 1.0, now)
            return 0.0
        self._buckets[key] = (level, now)
        return (1.0 - level) / self.rate


MAX_REQUEST_LINE = 8 * 1024
MAX_HEAD_BYTES = 16 * 1024
MAX_HEAD_LINES = 100


def _plain_response(status: bytes, body: bytes) -> bytes:
    return (
        b"HTTP/1.1 %s\r\ncontent-type: text/plain\r\nconnection: close\r\ncontent-length: %d\r\n\r\n%s"
        % (status, len(body), body)
    )


_TOO_SLOW = _plain_response(b"408 Request Timeout", b"The request headers took too long to arrive.\n")
_LINE_TOO_LONG = _plain_response(b"414 URI Too Long", b"The request line is too long.\n")
_HEAD_TOO_LARGE = _plain_response(b"431 Request Header Fields Too Large", b"The request headers are too large.\n")


def guarded_http_protocol(header_timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol with the guards it lacks, for every request on a connection:

    - the request head must arrive within `header_timeout` seconds (slowloris): uvicorn's
      keep-alive timer runs only between requests and every byte resets it;
    - a WebSocket upgrade must also complete its handshake by then: uvicorn's websockets
      protocol never answers a head that websockets refuses to parse, and never closes it;
    - the request line may hold 8 KiB and the head 16 KiB in 100 lines: h11's own limit
      applies only to heads that arrive in pieces, and a whole 3000-field head costs
      megabytes of Python objects to parse.
    """
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._deadline: asyncio.TimerHandle | None = None
            self._guard_next_head()

        def _guard_next_head(self) -> None:
            """Start guarding the head of the next request (the cycle of the last one is known)."""
            self._cancel_deadline()
            self._guarded_after = self.cycle
            self._head_bytes = 0
            self._head_lines = 0
            self._line_done = False
            self._head_done = False
            self._tail = b""  # the last bytes seen, in case the blank line straddles two reads
            self._deadline = self.loop.call_later(header_timeout, self._too_slow)

        def _head_pending(self) -> bool:
            return self._deadline is not None and self.cycle is self._guarded_after

        def data_received(self, data: bytes) -> None:
            if self._head_pending() and not self._head_done:
                refusal = self._check_head(data)
                if refusal is not None:
                    self._cancel_deadline()
                    self.transport.write(refusal)
                    self.transport.close()
                    return
            super().data_received(data)

        def _check_head(self, data: bytes) -> bytes | None:
            """Count the head's bytes and lines (not the body's that may follow in the same read)."""
            window = self._tail + data
            end = window.find(b"\r\n\r\n")
            if end >= 0:
                data = data[: max(0, end + 4 - len(self._tail))]
                self._head_done = True
            self._tail = window[-3:]
            if not self._line_done:
                end = data.find(b"\n")
                line_length = self._head_bytes + (end if end >= 0 else len(data))
                if line_length > MAX_REQUEST_LINE:
                    return _LINE_TOO_LONG
                self._line_done = end >= 0
            self._head_bytes += len(data)
            self._head_lines += data.count(b"\n")
            if self._head_bytes > MAX_HEAD_BYTES or self._head_lines > MAX_HEAD_LINES:
                return _HEAD_TOO_LARGE
            return None

        def handle_events(self) -> None:
            super().handle_events()
            if self._deadline is not None and self.cycle is not self._guarded_after:
                self._cancel_deadline()  # the head is in: the request is being served

        def handle_websocket_upgrade(self, event: Any) -> None:
            # Keep the deadline: it now waits for the WebSocket handshake to complete. It is
            # re-armed on the transport alone, so that this h11 protocol object (~3 KiB) is
            # freed at once instead of living on in the timer for the rest of the deadline.
            self._guarded_after = None
            self.cycle = None
            deadline = self._deadline
            self._deadline = None
            super().handle_websocket_upgrade(event)
            if deadline is not None and not deadline.cancelled():
                deadline.cancel()
                # (uvloop turns sub-millisecond delays into plain Handles, without when())
                when = getattr(deadline, "when", self.loop.time)()
                self.loop.call_at(when, _close_unless_handshaken, self.transport)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._guard_next_head()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_deadline()
            super().connection_lost(exc)

        def _cancel_deadline(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _too_slow(self) -> None:
            self._deadline = None
            if self.transport.is_closing():
                return
            if self.cycle is self._guarded_after:
                self.transport.write(_TOO_SLOW)
                self.transport.close()

    return GuardedH11Protocol


def _close_unless_handshaken(transport: Any) -> None:
    """The upgraded connection's deadline: the WebSocket handshake must be done by now."""
    if not transport.is_closing() and not getattr(transport.get_protocol(), "handshake_complete", False):
        transport.close()


class _AnsweredAlready(Exception):
    pass


class QuietLateResponses:
    """uvicorn answers a malformed request body (say, bad chunked encoding) with 400 by
    itself; h11 then refuses the app's own response with LocalProtocolError, which uvicorn
    would log as "Exception in ASGI application" with a traceback. Nobody is waiting for
    that response any more: drop it quietly."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def guarded_send(message: Any) -> None:
            try:
                await send(message)
            except h11.LocalProtocolError:
                raise _AnsweredAlready from None

        try:
            await self.app(scope, receive, guarded_send)
        except _AnsweredAlready:
            pass

"""Limits that keep one client from using up the broker: rate of minting, slow requests.

Session caps live with the sessions in app.py; these are the parts with state of
their own.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Callable

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


_TIMEOUT_BODY = b"The request headers took too long to arrive.\n"
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain\r\nconnection: close\r\n"
    b"content-length: %d\r\n\r\n%s" % (len(_TIMEOUT_BODY), _TIMEOUT_BODY)
)


def header_timeout_protocol(timeout: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, but a connection must finish its request headers within
    `timeout` seconds (slowloris). uvicorn has no such timer: its keep-alive timer only
    runs between requests."""

    class HeaderTimeoutProtocol(H11Protocol):
        _upgraded = False

        def connection_made(self, transport: Any) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._header_timer: asyncio.TimerHandle | None = self.loop.call_later(timeout, self._headers_too_slow)

        def handle_websocket_upgrade(self, event: Any) -> None:
            self._upgraded = True
            self._cancel_header_timer()
            super().handle_websocket_upgrade(event)

        def handle_events(self) -> None:
            super().handle_events()
            if self.cycle is not None:
                self._cancel_header_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._cancel_header_timer()
            super().connection_lost(exc)

        def _cancel_header_timer(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_too_slow(self) -> None:
            self._header_timer = None
            if self.cycle is None and not self._upgraded and not self.transport.is_closing():
                self.transport.write(_TIMEOUT_RESPONSE)
                self.transport.close()

    return HeaderTimeoutProtocol

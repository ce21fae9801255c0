"""Limits that keep one client from using up the broker: session caps and rate limiters.

Pure: the guard on request heads and upgrades, which lives inside uvicorn's HTTP
protocol, is broker/server/httpguard.py.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass


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
    # Screenshots (GET /api/v1/domains/{ident}/screenshot): how long one is kept per domain
    # and width, and how many a minute one API key may have taken from libvirt.
    screenshot_cache: float = 2.0
    screenshot_rate: float = 120.0


# Failed API-key attempts one client may make (AUTH_FAILURE_BURST at once, then
# AUTH_FAILURE_RATE a minute) before its wrong keys get 429 (a valid key is always served).
AUTH_FAILURE_BURST = 20
AUTH_FAILURE_RATE = 10.0


class RateLimiter:
    """A token bucket per key: `rate` per minute on average, bursts up to `burst`.

    Buckets that have filled up again are dropped whenever the table has doubled since
    the last sweep, so keys a client chooses (its address) cannot grow it for ever.
    """

    def __init__(self, rate_per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate_per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._sweep_at = 1024

    def _level(self, key: str, now: float) -> float:
        level, last = self._buckets.get(key, (self.burst, now))
        return min(self.burst, level + (now - last) * self.rate)

    def allow(self, key: str) -> float:
        """0 if allowed now (and counted), else the seconds to wait before trying again."""
        now = self.clock()
        level = self._level(key, now)
        if level >= 1.0:
            self._buckets[key] = (level - 1.0, now)
            self._sweep(now)
            return 0.0
        self._buckets[key] = (level, now)
        return (1.0 - level) / self.rate

    def wait(self, key: str) -> float:
        """What allow() would say, without counting a try: 0, or the seconds to wait."""
        level = self._level(key, self.clock())
        return 0.0 if level >= 1.0 else (1.0 - level) / self.rate

    def _sweep(self, now: float) -> None:
        if len(self._buckets) < self._sweep_at:
            return
        for key in [k for k in self._buckets if self._level(k, now) >= self.burst]:
            del self._buckets[key]
        self._sweep_at = max(1024, 2 * len(self._buckets))

"""GET /api/v1/domains/{ident}/screenshot: a VM's screen as a PNG, cached and rate-limited.

A panel may poll a thousand thumbnails: each answer is kept `cache_seconds` per domain run
and width, and only the requests that reach libvirt count against the API key's
`rate_per_minute` (bursts up to a sixth of a minute's worth).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from typing import Protocol

from ..access.limits import RateLimiter
from ..errors import DOMAIN_NOT_RUNNING, INVALID_INPUT, LIBVIRT_ERROR, RATE_LIMITED, BrokerError
from ..images import MAX_WIDTH, MIN_WIDTH, ImageError, Png, to_png
from ..model import DomainInfo

# At most this many screenshots are kept at once (the oldest go first): a bound on memory
# whatever the number of domains and widths asked for.
MAX_CACHED = 256
# Conversions running at once (each on a thread of its own: Pillow releases the GIL).
MAX_CONVERSIONS = 2
QUERY_PARAMETERS = frozenset({"width"})
# A screen is news only now: no cache on the way may keep it.
SCREENSHOT_HEADERS = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class ScreenSource(Protocol):
    async def screenshot(self, uuid: str) -> tuple[str, bytes]: ...


def screenshot_width(query: Iterable[tuple[str, str]]) -> int | None:
    """`?width=N` checked: an integer from MIN_WIDTH to MAX_WIDTH, or None (the full screen).
    `query` is every (name, value) pair, so that a repeated parameter is refused, not half read."""
    pairs = list(query)
    unknown = {name for name, _ in pairs} - QUERY_PARAMETERS
    if unknown:
        raise BrokerError(INVALID_INPUT, f"Unknown query parameter(s): {', '.join(sorted(unknown))}.")
    if not pairs:
        return None
    if len(pairs) > 1:
        raise BrokerError(INVALID_INPUT, "width may be given once.")
    text = pairs[0][1]
    if not (text.isascii() and text.isdigit()) or not MIN_WIDTH <= int(text) <= MAX_WIDTH:
        raise BrokerError(INVALID_INPUT, f"width must be a whole number of pixels from {MIN_WIDTH} to {MAX_WIDTH}.")
    return int(text)


class Screenshots:
    """The cache and the per-key limiter in front of a ScreenSource."""

    def __init__(
        self, cache_seconds: float, rate_per_minute: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.cache_seconds = cache_seconds
        self.clock = clock
        self.limiter = RateLimiter(rate_per_minute, max(1, math.ceil(rate_per_minute / 6)), clock)
        self._cache: dict[tuple[str, int, int | None], tuple[float, Png]] = {}
        self._converting = asyncio.Semaphore(MAX_CONVERSIONS)

    async def take(self, source: ScreenSource, domain: DomainInfo, width: int | None, key: str) -> Png:
        """The screen of `domain` (a running one), from the cache or from libvirt."""
        if not domain.active:
            raise BrokerError(
                DOMAIN_NOT_RUNNING, f"Domain {domain.name!r} is not running (state: {domain.state}): it has no screen."
            )
        cache_key = (domain.uuid, domain.run_id, width)
        now = self.clock()
        cached = self._cache.get(cache_key)
        if cached is not None and now < cached[0]:
            return cached[1]
        wait = self.limiter.allow(key)
        if wait:
            raise BrokerError(
                RATE_LIMITED,
                f"Too many screenshots were asked for with this API key; try again in {math.ceil(wait)} s.",
                retry_after=wait,
            )
        mime, data = await source.screenshot(domain.uuid)
        async with self._converting:
            try:
                png = await asyncio.to_thread(to_png, data, width)
            except ImageError as exc:
                raise BrokerError(
                    LIBVIRT_ERROR, f"libvirt returned a screenshot of {domain.name!r} ({mime}) that {exc}."
                ) from None
        if self.cache_seconds > 0:
            self._store(cache_key, self.clock() + self.cache_seconds, png)
        return png

    def _store(self, key: tuple[str, int, int | None], until: float, png: Png) -> None:
        if len(self._cache) >= MAX_CACHED:
            now = self.clock()
            for old in [k for k, (expiry, _) in self._cache.items() if expiry <= now]:
                del self._cache[old]
            while len(self._cache) >= MAX_CACHED:  # dicts keep insertion order: the oldest first
                del self._cache[next(iter(self._cache))]
        self._cache.pop(key, None)
        self._cache[key] = (until, png)

"""Wait for a condition on a deadline instead of sleeping a fixed time and hoping.

A fixed sleep is either too long (a slow suite) or, on a loaded machine, too short (a
flaky one, or worse a check of "nothing happened" that passes because nothing had the
time to). A poll returns as soon as the thing happened and fails, with what it waited
for, once it plainly will not.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


def wait_until(predicate: Callable[[], T], timeout: float, what: str, *, interval: float = 0.02) -> T:
    """Call `predicate` until it returns something true, and return that; after `timeout`
    seconds fail with "… waiting for <what>"."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], T | Awaitable[T]], timeout: float, what: str, *, interval: float = 0.01
) -> T:
    """wait_until inside an event loop: the loop runs on between calls, and `predicate`
    may be a coroutine function."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"gave up after {timeout:g} s waiting for {what}")
        await asyncio.sleep(interval)

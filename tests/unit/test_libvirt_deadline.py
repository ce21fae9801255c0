"""Every libvirt call has a deadline, and a call stuck past it wedges nothing (review item 8).

A call that never returns is simulated by a function run on the libvirt worker that
waits on an Event: exactly what a blocking call into a hung libvirtd looks like to us.
The real thing (libvirtd behind a paused forwarder) is tests/integration/test_libvirt_hang.py.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator

import pytest

from broker.config import ConfigError, load_settings
from broker.errors import LIBVIRT_UNAVAILABLE, BrokerError
from broker.sources import consoles as consoles_module
from broker.sources.consoles import LibvirtConsoles
from support.wait import wait_until, wait_until_async
from unit_support import TEST_URI, mute, run_async

DEADLINE = 0.3


def stuck_until(release: threading.Event, result: object = None):
    def call(_conn: object) -> object:
        release.wait(10)
        return result

    return call


class Hung:
    """A LibvirtConsoles with a short deadline, and Events that stand for libvirtd answering;
    at the end every Event is set (nothing stays stuck) and the consoles are closed."""

    def __init__(self, timeout: float = DEADLINE) -> None:
        self.consoles = LibvirtConsoles(TEST_URI, timeout=timeout)
        self.releases: list[threading.Event] = []

    def release(self) -> threading.Event:
        self.releases.append(threading.Event())
        return self.releases[-1]

    def close(self) -> None:
        for release in self.releases:
            release.set()
        mute(self.consoles)
        self.consoles.close()


@pytest.fixture
def hung() -> Iterator[Hung]:
    made: list[Hung] = []

    def make(timeout: float = DEADLINE) -> Hung:
        made.append(Hung(timeout))
        return made[-1]

    yield make  # type: ignore[misc]
    for h in made:
        h.close()


def closed(fd: int) -> bool:
    """Whether `fd` is closed (the broker's discard callback closes it on the worker thread)."""
    try:
        os.fstat(fd)
    except OSError:
        return True
    return False


async def unavailable(consoles: LibvirtConsoles, fn) -> tuple[BrokerError, float]:
    started = time.monotonic()
    with pytest.raises(BrokerError) as caught:
        await consoles.run(fn)
    return caught.value, time.monotonic() - started


def test_a_stuck_call_is_libvirt_unavailable_at_the_deadline_and_the_next_call_works(hung) -> None:
    h = hung()
    consoles, release = h.consoles, h.release()

    async def scenario() -> None:
        error, elapsed = await unavailable(consoles, stuck_until(release))
        assert error.failure is LIBVIRT_UNAVAILABLE and "did not answer within 0.3 s" in error.message
        assert elapsed < DEADLINE + 0.5
        # A fresh worker and connection answer at once, while the old call is still stuck.
        ok, detail = await consoles.healthy()
        assert ok, detail

    run_async(scenario())


def test_calls_queued_behind_a_stuck_one_fail_with_it_not_each_at_its_own_deadline(hung) -> None:
    h = hung()
    consoles, release = h.consoles, h.release()

    async def scenario() -> None:
        started = time.monotonic()
        results = await asyncio.gather(
            consoles.run(stuck_until(release)),
            *(consoles.run(lambda conn: conn.getLibVersion()) for _ in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(r, BrokerError) and r.failure is LIBVIRT_UNAVAILABLE for r in results), results
        assert time.monotonic() - started < DEADLINE + 0.5

    run_async(scenario())


def test_stuck_threads_are_bounded_and_calls_resume_when_one_returns(hung) -> None:
    h = hung()
    consoles = h.consoles
    releases = [h.release() for _ in range(consoles_module.MAX_STUCK_WORKERS)]

    async def scenario() -> None:
        for release in releases:
            await unavailable(consoles, stuck_until(release))
        before = threading.active_count()
        # Past the bound: refused at once, and no thread is started for it.
        error, elapsed = await unavailable(consoles, lambda conn: conn.getLibVersion())
        assert error.failure is LIBVIRT_UNAVAILABLE and "has not answered 4 calls" in error.message
        assert elapsed < 0.1
        assert threading.active_count() == before
        releases[0].set()  # libvirtd answers one of them: its thread exits, a new one may start

        async def healthy() -> bool:
            return (await consoles.healthy())[0]

        await wait_until_async(healthy, 5, "calls to resume after a stuck one returned", interval=0.05)

    run_async(scenario())


def test_a_file_descriptor_returned_after_the_deadline_is_closed(hung) -> None:
    """openGraphicsFD answering late must not leak the descriptor nobody waits for any more."""
    h = hung()
    consoles, release = h.consoles, h.release()
    read_end, write_end = os.pipe()
    returned = threading.Event()

    def late_fd(_conn: object) -> int:
        release.wait(10)
        returned.set()
        return write_end

    async def scenario() -> None:
        with pytest.raises(BrokerError):
            await consoles.run(late_fd, discard=os.close)

    try:
        run_async(scenario())
        release.set()
        assert returned.wait(5)
        wait_until(lambda: closed(write_end), 5, "the late descriptor to be closed", interval=0.01)
    finally:
        os.close(read_end)


def test_libvirt_timeout_setting() -> None:
    assert load_settings(environ={}).libvirt_timeout == 5.0
    assert load_settings(environ={"BROKER_LIBVIRT_TIMEOUT": "2.5"}).libvirt_timeout == 2.5
    for bad in ("0", "-1", "soon", "inf"):
        with pytest.raises(ConfigError, match="libvirt_timeout"):
            load_settings(environ={"BROKER_LIBVIRT_TIMEOUT": bad})


def test_a_file_descriptor_returned_after_its_caller_was_cancelled_is_closed(hung) -> None:
    h = hung(timeout=5.0)
    consoles, release = h.consoles, h.release()
    read_end, write_end = os.pipe()
    called = threading.Event()

    def late_fd(_conn: object) -> int:
        called.set()
        release.wait(10)
        return write_end

    async def scenario() -> None:
        task = asyncio.ensure_future(consoles.run(late_fd, discard=os.close))
        await wait_until_async(called.is_set, 5, "the call to start on the worker")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        run_async(scenario())
        release.set()
        wait_until(lambda: closed(write_end), 5, "the descriptor of a cancelled call to be closed", interval=0.01)
    finally:
        os.close(read_end)

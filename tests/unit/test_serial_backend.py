"""SerialBackend (sources/serialstream.py) against a stand-in for libvirt's stream: what it
keeps for a slow browser, what it drops and says, how it ends. The real stream runs in
tests/integration/test_serial.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import libvirt

from broker.sources.serialstream import BUFFER_LIMIT, SerialBackend
from unit_support import run_async


class FakeStream:
    """libvirt.virStream's non-blocking side: recv() hands out what `output` holds, -2 when empty."""

    def __init__(self) -> None:
        self.output: list[bytes | Exception] = []
        self.sent = b""
        self.callback: Callable[..., None] | None = None
        self.recv_calls = 0
        self.aborted = False

    def eventAddCallback(self, events: int, callback: Callable[..., None], opaque: Any) -> None:  # noqa: N802
        self.callback = callback

    def eventRemoveCallback(self) -> None:  # noqa: N802
        self.callback = None

    def recv(self, size: int) -> bytes | int:
        self.recv_calls += 1
        if not self.output:
            return -2
        item = self.output.pop(0)
        if isinstance(item, Exception):
            raise item
        return item

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def abort(self) -> None:
        self.aborted = True

    def readable(self) -> None:
        """What libvirt's event thread does when data waits (here: on the loop's thread)."""
        assert self.callback is not None
        self.callback(self, libvirt.VIR_STREAM_EVENT_READABLE, None)


class RecordingSink:
    def __init__(self) -> None:
        self.data = b""
        self.closed = False
        self.can_write = 0

    def backend_data(self, data: bytes) -> None:
        self.data += data

    def backend_closed(self) -> None:
        self.closed = True

    def backend_can_write(self) -> None:
        self.can_write += 1


async def run_now(call: Callable[[], Any]) -> Any:
    return call()


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_output_reaches_the_sink_as_it_comes() -> None:
    async def scenario() -> bytes:
        stream = FakeStream()
        backend = SerialBackend(stream, run_now)  # type: ignore[arg-type]
        sink = RecordingSink()
        assert backend.splice(sink) == b""
        stream.output += [b"hello ", "wörld".encode()]
        stream.readable()
        await settle()
        return sink.data

    assert run_async(scenario()) == "hello wörld".encode()


def test_a_slow_browser_gets_the_newest_output_and_a_notice_of_what_was_dropped() -> None:
    """40 MiB arrive while the browser is full: libvirt is drained all the same (its own
    queue has no bound), at most BUFFER_LIMIT is kept, and the browser is told."""

    async def scenario() -> tuple[bytes, FakeStream, int]:
        stream = FakeStream()
        backend = SerialBackend(stream, run_now)  # type: ignore[arg-type]
        sink = RecordingSink()
        backend.splice(sink)
        backend.pause_reading()
        chunk = b"x" * 1023 + b"\n"
        for _ in range(40):
            stream.output += [chunk * 1024]  # 1 MiB each
            stream.readable()
            await settle()
        assert not stream.output  # drained while paused
        held = len(backend._buffer)
        backend.resume_reading()
        return sink.data, stream, held

    data, stream, held = run_async(scenario())
    assert held <= BUFFER_LIMIT
    assert data.startswith(b"\r\n\x1b[2m[console broker: ")
    assert b"KiB of console output dropped; the browser read too slowly]" in data
    assert len(data) <= BUFFER_LIMIT + 200
    assert data.endswith(b"x" * 1023 + b"\n")  # the newest output is what is kept


def test_before_the_splice_output_waits_for_read() -> None:
    async def scenario() -> tuple[bytes, bytes]:
        stream = FakeStream()
        backend = SerialBackend(stream, run_now)  # type: ignore[arg-type]
        stream.output += [b"boot log"]
        stream.readable()
        await settle()
        first = await backend.read(4)
        return first, backend.splice(RecordingSink())

    assert run_async(scenario()) == (b"boot", b" log")


def test_a_stream_that_lost_its_console_ends_once_and_stops_listening() -> None:
    """After a forced open elsewhere libvirt raises on every readable event until the
    callback goes: the backend ends at the first and removes its callback."""

    async def scenario() -> tuple[SerialBackend, FakeStream, RecordingSink]:
        stream = FakeStream()
        backend = SerialBackend(stream, run_now)  # type: ignore[arg-type]
        sink = RecordingSink()
        backend.splice(sink)
        stream.output += [libvirt.libvirtError("stream had I/O failure")]
        stream.readable()
        await settle()
        backend.close()
        await settle()
        return backend, stream, sink

    backend, stream, sink = run_async(scenario())
    assert sink.closed and backend.closed
    assert backend.failure and "I/O failure" in backend.failure
    assert stream.callback is None and stream.aborted
    assert stream.recv_calls == 1


def test_end_of_stream_is_a_close_without_failure() -> None:
    async def scenario() -> tuple[SerialBackend, RecordingSink]:
        stream = FakeStream()
        backend = SerialBackend(stream, run_now)  # type: ignore[arg-type]
        sink = RecordingSink()
        backend.splice(sink)
        stream.output += [b"bye", b""]
        stream.readable()
        await settle()
        return backend, sink

    backend, sink = run_async(scenario())
    assert sink.data == b"bye" and sink.closed and backend.failure is None


def test_input_goes_to_the_stream_in_order_and_backpressure_lifts() -> None:
    async def scenario() -> tuple[bytes, bool, int]:
        stream = FakeStream()
        backend = SerialBackend(stream, run_now)  # type: ignore[arg-type]
        sink = RecordingSink()
        backend.splice(sink)
        for i in range(100):
            backend.write(b"%04d" % i + b"k" * 1020)  # 100 KiB, past WRITE_LIMIT at once
        paused_at_first = backend.write_paused
        await backend.drain()
        await settle()
        return stream.sent, paused_at_first, sink.can_write

    sent, paused_at_first, can_write = run_async(scenario())
    assert paused_at_first
    assert sent == b"".join(b"%04d" % i + b"k" * 1020 for i in range(100))
    assert can_write >= 1


def test_output_that_arrives_around_pauses_is_all_delivered_in_order() -> None:
    """The browser fills (pause), drains (resume: the kept output is flushed, which may fill
    it again at once), and output keeps coming throughout: nothing is left behind in the
    backend once the browser has drained, and the order holds."""

    class FillingSink(RecordingSink):
        """Full again whenever more than `room` bytes arrive in one delivery (uvloop calls
        pause_writing from inside write())."""

        def __init__(self, backend: SerialBackend, room: int) -> None:
            super().__init__()
            self.backend, self.room = backend, room

        def backend_data(self, data: bytes) -> None:
            super().backend_data(data)
            if len(data) > self.room:
                self.backend.pause_reading()

    async def scenario() -> tuple[bytes, bytes, int]:
        stream = FakeStream()
        backend = SerialBackend(stream, run_now)  # type: ignore[arg-type]
        sink = FillingSink(backend, room=100)
        backend.splice(sink)
        sent = b""
        for step in range(50):
            piece = b"%03d:" % step + b"y" * (7 * step)
            sent += piece
            stream.output.append(piece)
            stream.readable()
            await settle()
            if step % 3 == 2:
                backend.resume_reading()  # the browser drained
        backend.resume_reading()
        return sink.data, sent, len(backend._buffer)

    delivered, sent, left = run_async(scenario())
    assert left == 0
    assert delivered == sent

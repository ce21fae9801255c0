"""A serial console's libvirt stream as a relay Backend.

The stream is opened non-blocking (VIR_STREAM_NONBLOCK) on the source's libvirt
connection. Its events come from libvirt's event thread (see start_libvirt_event_loop)
and are handed to the asyncio loop; everything else happens on the loop, except the
calls that wait for libvirtd (send, abort), which go through the source's worker under
its deadline like every other libvirt call.

Why not libvirtaio: its handle callbacks call loop.add_reader() from whatever thread
libvirt calls them in, and the broker's libvirt calls run on worker threads (so a hung
libvirtd never blocks the loop): libvirtaio would touch the loop from those threads.

Why reading never pauses: libvirt's client queues every stream packet it reads from
libvirtd's socket, without a bound (virNetClientStreamQueuePacket), whether or not we
call recv(). Pausing our reads would only move a flooding guest's output into libvirt's
memory. So the stream is always drained, and while the browser is slow at most
BUFFER_LIMIT bytes of the newest output are kept; older output is dropped and the
browser is told how much, like a serial line without flow control.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import libvirt

from ..errors import LIBVIRT_UNAVAILABLE, BrokerError
from ..relay.backend import Sink, wake

log = logging.getLogger("broker.serial")

READ_SIZE = 64 * 1024
# Output kept for a browser that reads slowly (or before the relay starts); past it, the oldest goes.
BUFFER_LIMIT = 256 * 1024
# Input from the browser waiting for libvirtd: past this, the relay stops reading the browser.
WRITE_LIMIT = 64 * 1024
SEND_SIZE = 16 * 1024
_EVENTS = libvirt.VIR_STREAM_EVENT_READABLE | libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP

RunBlocking = Callable[[Callable[[], Any]], Awaitable[Any]]


def dropped_notice(count: int) -> bytes:
    """What the terminal shows where output was dropped: on a line of its own, dim."""
    size = f"{count / 1024:.0f} KiB" if count >= 1024 else f"{count} B"
    text = f"[console broker: {size} of console output dropped; the browser read too slowly]"
    return f"\r\n\x1b[2m{text}\x1b[0m\r\n".encode()


class SerialBackend:
    """A Backend (relay/backend.py) over a non-blocking libvirt stream."""

    socket_transport = None  # no socket: the kernel path (zerocopy.py) never applies

    def __init__(
        self, stream: libvirt.virStream, run_blocking: RunBlocking, *, buffer_limit: int = BUFFER_LIMIT
    ) -> None:
        self._stream = stream
        self._run_blocking = run_blocking
        self._buffer_limit = buffer_limit
        self._loop = asyncio.get_running_loop()
        self._buffer = bytearray()  # output not yet delivered
        self._dropped = 0  # output dropped since the last delivery
        self._paused = False  # the browser is full: keep, do not deliver
        self._sink: Sink | None = None
        self._closed = False
        self._watching = False
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._outgoing = bytearray()
        self._sender: asyncio.Task[None] | None = None
        self._release: asyncio.Task[None] | None = None
        # Why the stream failed, when it did rather than end (e.g. another client took the console over).
        self.failure: str | None = None
        self._stream.eventAddCallback(_EVENTS, self._libvirt_event, None)
        self._watching = True

    # -- events, from libvirt's event thread to the loop ---------------------------------

    def _libvirt_event(self, _stream: libvirt.virStream, events: int, _opaque: Any) -> None:
        try:
            self._loop.call_soon_threadsafe(self._on_events, events)
        except RuntimeError:  # the loop has closed: nobody is left to deliver to
            pass

    def _on_events(self, events: int) -> None:
        if self._closed:
            return
        self._receive()
        if not self._closed and events & (libvirt.VIR_STREAM_EVENT_ERROR | libvirt.VIR_STREAM_EVENT_HANGUP):
            self._end("the console stream reported an error" if events & libvirt.VIR_STREAM_EVENT_ERROR else None)

    def _receive(self) -> None:
        """Drain what libvirt has queued: deliver it, or keep the newest BUFFER_LIMIT bytes."""
        while not self._closed:
            try:
                data = self._stream.recv(READ_SIZE)
            except libvirt.libvirtError as exc:
                # After a forced open elsewhere this repeats on every event until the
                # callback goes: end now, once.
                self._end(exc.get_error_message() or str(exc))
                return
            if isinstance(data, int):  # -2: nothing more just now
                return
            if not data:
                self._end(None)
                return
            self._deliver(data)

    def _deliver(self, data: bytes) -> None:
        sink = self._sink
        if sink is not None and not self._paused and not self._buffer and not self._dropped:
            sink.backend_data(data)
            return
        self._buffer += data
        excess = len(self._buffer) - self._buffer_limit
        if excess > 0:
            del self._buffer[:excess]
            self._dropped += excess
        self._wake_reader()

    def _take_buffered(self) -> bytes:
        """What is kept, with a notice in front if older output was dropped."""
        data = bytes(self._buffer)
        self._buffer.clear()
        dropped, self._dropped = self._dropped, 0
        if not dropped:
            return data
        line_end = data.find(b"\n", 0, 4096)  # resume on a fresh line where one is near
        if line_end >= 0:
            dropped += line_end + 1
            data = data[line_end + 1 :]
        return dropped_notice(dropped) + data

    # -- the Backend protocol ------------------------------------------------------------

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def write_paused(self) -> bool:
        return len(self._outgoing) > WRITE_LIMIT

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes, waiting for at least one; b"" once the stream has ended."""
        while not self._buffer and not self._dropped and not self._closed:
            self._data_waiter = self._loop.create_future()
            await self._data_waiter
        if self._dropped:
            data = self._take_buffered()
            self._buffer += data[limit:]
            return data[:limit]
        data = bytes(self._buffer[:limit])
        del self._buffer[:limit]
        return data

    async def drain(self) -> None:
        while self.write_paused and not self._closed:
            self._drain_waiter = self._loop.create_future()
            await self._drain_waiter
        if self._closed:
            raise ConnectionResetError("the serial console stream has ended")

    def write(self, data: bytes) -> None:
        if self._closed or not data:
            return
        self._outgoing += data
        if self._sender is None:
            self._sender = self._loop.create_task(self._send_all())

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        self._paused = False
        if self._sink is not None and (self._buffer or self._dropped) and not self._closed:
            self._sink.backend_data(self._take_buffered())

    def splice(self, sink: Sink) -> bytes:
        self._sink = sink
        return self._take_buffered() if (self._buffer or self._dropped) else b""

    def close(self) -> None:
        """Stop relaying and give the console back to libvirtd (abort, off the loop)."""
        if not self._closed:
            self._closed = True
            self._wake_reader()
            self._wake_writer()
        self._unwatch()
        if self._sender is not None:
            self._sender.cancel()
        if self._release is None:
            self._release = self._loop.create_task(self._abort())

    # -- the rest ------------------------------------------------------------------------

    def _end(self, failure: str | None) -> None:
        if self._closed:
            return
        self.failure = failure
        self._closed = True
        self._unwatch()
        self._wake_reader()
        self._wake_writer()
        if self._sink is not None:
            self._sink.backend_closed()

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            try:
                self._stream.eventRemoveCallback()
            except libvirt.libvirtError:
                pass

    async def _send_all(self) -> None:
        """Browser input to libvirtd, in order, one chunk at a time on the libvirt worker."""
        try:
            while self._outgoing and not self._closed:
                chunk = bytes(self._outgoing[:SEND_SIZE])
                del self._outgoing[:SEND_SIZE]
                try:
                    await self._run_blocking(functools.partial(_send_fully, self._stream, chunk))
                except BrokerError as exc:
                    self._end(f"sending to the console failed: {exc.message}")
                    return
                if not self.write_paused:
                    self._wake_writer()
                    if self._sink is not None:
                        self._sink.backend_can_write()
        finally:
            self._sender = None

    async def _abort(self) -> None:
        try:
            await self._run_blocking(self._stream.abort)
        except BrokerError as exc:  # already ended (EOF, a take-over), or libvirtd is gone
            log.debug("serial stream abort: %s", exc.message)

    def _wake_reader(self) -> None:
        wake(self._data_waiter)

    def _wake_writer(self) -> None:
        wake(self._drain_waiter)


def _send_fully(stream: libvirt.virStream, data: bytes, patience: float = 5.0) -> None:
    """On the worker thread: libvirt may take part of it, or nothing just now (-2)."""
    deadline = time.monotonic() + patience
    while data:
        sent = stream.send(data)
        if sent == -2:
            if time.monotonic() > deadline:
                raise BrokerError(LIBVIRT_UNAVAILABLE, f"the console took no input for {patience:g} s")
            time.sleep(0.01)
            continue
        data = data[sent:]

"""The console side of a session: what the relay needs from it (`Backend`), and the
socket one (`SocketBackend`) every VNC console uses.

SocketBackend is a plain asyncio Protocol instead of a StreamReader. Before the relay
starts, bytes are buffered for `read()` (the VNC-auth handshake, the generic relay).
Once spliced to a WebSocket, every chunk goes straight to the sink as it arrives: no
copy into a buffer and back out, no task switch, no pause and resume of reading per chunk.
That is where asyncio's streams spent most of the downstream time.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

# Stop reading from the VNC server while this much is buffered and nobody reads it.
BUFFER_LIMIT = 1024 * 1024


class Sink(Protocol):
    """Where a spliced backend delivers: the relay's other side."""

    def backend_data(self, data: bytes) -> None: ...
    def backend_closed(self) -> None: ...
    def backend_can_write(self) -> None: ...


class Backend(Protocol):
    """What both relays (pump.py, server/splice.py) need from a console's other end: a socket
    to a VNC server today, a libvirt stream for a serial console."""

    @property
    def closed(self) -> bool: ...
    @property
    def failure(self) -> str | None:
        """Why the console ended, when it failed rather than closed (a libvirt stream that lost
        its console to a forced open elsewhere); None otherwise."""
        ...

    @property
    def write_paused(self) -> bool:
        """The console cannot take more just now: stop reading the browser."""
        ...

    @property
    def socket_transport(self) -> asyncio.Transport | None:
        """The transport of a socket the kernel may move bytes from (zerocopy.py), or None."""
        ...

    async def read(self, limit: int) -> bytes: ...
    async def drain(self) -> None: ...
    def write(self, data: bytes) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def splice(self, sink: Sink) -> bytes: ...
    def close(self) -> None: ...


def wake(waiter: asyncio.Future[None] | None) -> None:
    """Let a backend's read() or drain() that waits on `waiter` go on (if one waits)."""
    if waiter is not None and not waiter.done():
        waiter.set_result(None)


class SocketBackend(asyncio.Protocol):
    """A console reached over a socket (TCP, UNIX, or one libvirt handed over): a Backend."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buffer = bytearray()
        self._closed = False
        self._data_waiter: asyncio.Future[None] | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._write_paused = False
        self._read_paused = False
        self._sink: Sink | None = None

    # -- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport subclasses

    def data_received(self, data: bytes) -> None:
        if self._sink is not None:
            self._sink.backend_data(data)
            return
        self._buffer += data
        self._wake_reader()
        if len(self._buffer) > BUFFER_LIMIT and not self._read_paused:
            self._read_paused = True
            self.transport.pause_reading()  # type: ignore[union-attr]

    def eof_received(self) -> bool:
        self._end()
        return False  # close our side too

    def connection_lost(self, exc: Exception | None) -> None:
        self._end()
        self._write_paused = False
        self._wake_writer()

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self._wake_writer()
        if self._sink is not None:
            self._sink.backend_can_write()

    # -- used before splicing ------------------------------------------------------------

    async def read(self, limit: int) -> bytes:
        """Up to `limit` bytes, waiting for at least one; b"" once the server has closed."""
        while not self._buffer and not self._closed:
            self._data_waiter = asyncio.get_running_loop().create_future()
            await self._data_waiter
        data = bytes(self._buffer[:limit])
        del self._buffer[:limit]
        if self._read_paused and len(self._buffer) <= BUFFER_LIMIT // 2:
            self._read_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return data

    async def drain(self) -> None:
        """Wait while the transport's write buffer is over its high-water mark."""
        while self._write_paused and not self._closed:
            self._drain_waiter = asyncio.get_running_loop().create_future()
            await self._drain_waiter
        if self._closed:
            raise ConnectionResetError("the VNC server closed the connection")

    # -- used by both ------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not self._closed:
            self.transport.write(data)  # type: ignore[union-attr]

    @property
    def write_paused(self) -> bool:
        return self._write_paused

    def pause_reading(self) -> None:
        if not self._closed:
            self.transport.pause_reading()  # type: ignore[union-attr]

    def resume_reading(self) -> None:
        if not self._closed:
            self.transport.resume_reading()  # type: ignore[union-attr]

    def splice(self, sink: Sink) -> bytes:
        """From now on deliver to `sink`; returns what was buffered and not yet read.

        If the server has closed already, the caller says so to the sink (see `closed`)
        once it has passed the leftover on: the sink hears of no close before that."""
        self._sink = sink
        leftover, self._buffer = bytes(self._buffer), bytearray()
        if self._read_paused:
            self._read_paused = False
            self.transport.resume_reading()  # type: ignore[union-attr]
        return leftover

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def socket_transport(self) -> asyncio.Transport | None:
        return self.transport

    @property
    def failure(self) -> str | None:
        return None  # a socket closes; how is not worth telling apart

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _end(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._wake_reader()
        if self._sink is not None:
            self._sink.backend_closed()

    def _wake_reader(self) -> None:
        wake(self._data_waiter)

    def _wake_writer(self) -> None:
        wake(self._drain_waiter)

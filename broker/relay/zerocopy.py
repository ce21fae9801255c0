"""Framebuffer updates moved to the browser by the kernel: splice(2) through a pipe.

Written by hand because no library does it and it is the downstream hot path. Relaying a
large update through user space costs two copies per byte (recv into a new `bytes`, send
out of it). Here the VNC socket's pages are spliced into a pipe and from the pipe into the
browser's socket, and only the frame header is written from Python: the bytes never leave
the kernel. That cuts the broker's CPU per GiB downstream by a third (docs/benchmarks.md).

Used only while a TCP backend streams (splice.py decides): for small messages, three system
calls (splice in, header, splice out) cost more than uvloop's read and write, and from a
UNIX socket the kernel's splice costs more than a copy.

Ordering with the browser's transport, which owns the socket and through which uvicorn
still writes pings, pongs and closes: a frame is written to the socket directly only when
the transport has nothing queued. If the socket fills up halfway through a frame, the rest
waits in the pipe until the socket is writable again, and whatever uvicorn writes in the
meantime is held back (`hold`/`release`, see splice.py) and goes out after the frame.
"""

from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import os
import socket
from collections.abc import Callable
from typing import Any

from .wsframes import server_frame_header

log = logging.getLogger("broker.zerocopy")

# The most one splice moves, so the largest frame and the most a stalled browser's session
# holds in its pipe (beside what the kernel's socket buffers hold, up to MiBs themselves).
# 1 MiB cost about a fifth less CPU per GiB than 256 KiB.
PIPE_SIZE = 1024 * 1024
_FLAGS = os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK if hasattr(os, "splice") else 0
# A pipe smaller than this (a user over its pipe quota gets 8 KiB) is not worth the calls.
MIN_PIPE_SIZE = 64 * 1024
# Errors that mean "splice(2) is not allowed or does not work here": copy instead, everywhere.
_UNSUPPORTED = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EPERM, errno.EACCES}
# Errors that mean the VNC connection itself is over.
_CONNECTION_OVER = {
    errno.ECONNRESET,
    errno.ECONNABORTED,
    errno.EPIPE,
    errno.ETIMEDOUT,
    errno.ENOTCONN,
    errno.ESHUTDOWN,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
}

supported = hasattr(os, "splice")  # Linux, Python 3.10+; False once the kernel says no


def socket_fd(
    transport: Any, families: tuple[int, ...] = (socket.AF_INET, socket.AF_INET6, socket.AF_UNIX)
) -> int | None:
    """The descriptor of a plain (non-TLS) socket transport of one of `families`, else None."""
    if transport.get_extra_info("sslcontext") is not None:
        return None
    sock = transport.get_extra_info("socket")
    if sock is None or sock.family not in families:
        return None
    return int(sock.fileno())


def worth_it(backend: Any, browser: Any) -> bool:
    """Whether this session's large updates should go through the kernel.

    Only from a TCP backend: from a UNIX socket (libvirt's `<listen type='socket'>`, an FD
    from libvirt) the kernel's splice cost more CPU than uvloop's copy when measured. The
    browser's side may be TCP or a UNIX socket (nginx in front).
    """
    return (
        supported
        and socket_fd(backend, (socket.AF_INET, socket.AF_INET6)) is not None
        and socket_fd(browser) is not None
    )


class KernelDownstream:
    """One large update (or a run of them) of one session: VNC socket → pipe → browser.

    Made when an update starts streaming and closed when it is over, so only streaming
    sessions hold its four descriptors (a pipe, and our own numbers for both sockets:
    uvloop watches no descriptor twice, and the transports keep theirs). `hold` and
    `release` are called around a frame the socket could not take at once; `on_chunk` with
    each chunk's size (the caller decides from it when to go back to copying); `on_end`
    once the VNC server has closed.
    """

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        src: int,
        browser: Any,
        *,
        hold: Callable[[], None],
        release: Callable[[], None],
        on_chunk: Callable[[int], None],
        on_end: Callable[[], None],
    ) -> None:
        dst = socket_fd(browser)
        if dst is None:
            raise ValueError("the browser's transport is not a plain socket")
        self.loop = loop
        self.browser = browser
        self.dst = dst
        self.hold, self.release, self.on_chunk, self.on_end = hold, release, on_chunk, on_end
        self.reading = False
        self.header = b""  # of the frame in flight: what of its header is not sent yet
        self.left = 0  # ... and how many of its payload bytes are still in the pipe
        self.sent = 0  # bytes framed for the browser (every one of them, copied or not)
        self.moved = 0  # ... of which went socket to socket without a copy
        self.fds: list[int] = []
        try:
            self.pipe_out, self.pipe_in = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
            self.fds += (self.pipe_out, self.pipe_in)
            try:
                fcntl.fcntl(self.pipe_in, fcntl.F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:  # over /proc/sys/fs/pipe-max-size for this user: the default will do
                pass
            self.chunk: int = fcntl.fcntl(self.pipe_in, fcntl.F_GETPIPE_SZ)
            if self.chunk < MIN_PIPE_SIZE:
                raise ValueError(f"a pipe of only {self.chunk} bytes (over this user's pipe quota?)")
            self.src = os.dup(src)
            self.fds.append(self.src)
            self.dst_watch = os.dup(dst)  # to wait for the browser's socket to take more
            self.fds.append(self.dst_watch)
        except (OSError, ValueError):
            self._close_fds()
            raise

    @property
    def in_flight(self) -> bool:
        return bool(self.left or self.header)

    def start(self) -> None:
        """Read from the VNC server (unless a frame is still going out)."""
        if not self.reading and not self.in_flight and self.fds:
            self.loop.add_reader(self.src, self._readable)
            self.reading = True

    def stop(self) -> None:
        if self.reading:
            self.loop.remove_reader(self.src)
            self.reading = False

    def close(self) -> None:
        """Stop; a frame still in flight is finished through the transport (a copy)."""
        self.stop()
        if self.in_flight:
            self.loop.remove_writer(self.dst_watch)
            self._rest_to_transport()
            self.release()
        self._close_fds()

    # -- the callbacks ---------------------------------------------------------------

    def _readable(self) -> None:
        try:
            count = os.splice(self.src, self.pipe_in, self.chunk, flags=_FLAGS)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno not in _CONNECTION_OVER:
                if exc.errno in _UNSUPPORTED:
                    self._unsupported(exc)
                else:  # ENOMEM, ENOBUFS, …: nothing moved, this session copies for now
                    log.debug("splice(2) from the VNC server failed (%s): copying", exc.strerror)
                    self.stop()
                self.on_chunk(0)  # the caller goes back to copying
                return
            count = 0  # the VNC connection is over
        if not count:
            self.stop()
            self.on_end()
            return
        browser = self.browser
        self.header, self.left = server_frame_header(count), count
        if browser.is_closing():
            self._drop()
            self.on_chunk(count)
            return
        self.sent += count
        if browser.get_write_buffer_size():  # uvicorn has queued something: ours goes behind it
            self._rest_to_transport()
        elif not self._send():  # the socket is full: the rest waits in the pipe, no copy
            self.stop()
            self.hold()
            self.loop.add_writer(self.dst_watch, self._writable)
        self.on_chunk(count)

    def _writable(self) -> None:
        if self._send():
            self.loop.remove_writer(self.dst_watch)
            self.release()

    def _send(self) -> bool:
        """Send what is left of the frame in flight; True once all of it is out."""
        try:
            if self.header:
                sent = os.write(self.dst, self.header)
                self.header = self.header[sent:]
                if self.header:
                    return False
            while self.left:
                moved = os.splice(self.pipe_out, self.dst, self.left, flags=_FLAGS)
                if not moved:
                    raise BrokenPipeError("the browser's socket took nothing")
                self.left -= moved
                self.moved += moved
        except BlockingIOError:
            return False
        except OSError as exc:  # broken, or splice refused: the transport takes the rest
            if exc.errno in _UNSUPPORTED:
                self._unsupported(exc)
            self._rest_to_transport()
        return True

    # -- the rare ways out --------------------------------------------------------------

    def _rest_to_transport(self) -> None:
        """Hand the rest of the frame in flight to the transport, copied out of the pipe.
        Where the socket is broken, the transport finds out and ends the connection."""
        rest = self._take(self.left)
        self.browser.writelines((self.header, rest))
        self.header, self.left = b"", 0

    def _drop(self) -> None:
        self._take(self.left)
        self.header, self.left = b"", 0

    def _take(self, count: int) -> bytes:
        parts = []
        while count:
            part = os.read(self.pipe_out, count)
            count -= len(part)
            parts.append(part)
        return b"".join(parts)

    def _unsupported(self, exc: OSError) -> None:
        """This kernel will not splice these sockets: copy from now on, in every session."""
        global supported
        if supported:
            log.warning("splice(2) refused (%s): relaying VNC data by copying from now on", exc.strerror)
        supported = False
        self.stop()

    def _close_fds(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []

"""Where is the console? The libvirt side of the broker.

Finds domains, reads their VNC graphics from the live XML and opens a stream to
one. The relay never sees anything from here but an open SocketBackend.

libvirt-python's calls block, so they run on one dedicated worker thread: the
asyncio loop never waits on libvirtd, and libvirt sees calls one at a time. Each
call has a deadline; a worker stuck past it is left behind and replaced.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import queue
import re
import socket
import threading
import uuid as uuidlib
from collections.abc import Callable
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, TypeVar

import libvirt

from ..errors import (
    CONSOLE_BUSY,
    CONSOLE_UNREACHABLE,
    DOMAIN_NOT_FOUND,
    DOMAIN_NOT_RUNNING,
    INVALID_INPUT,
    LIBVIRT_ERROR,
    LIBVIRT_UNAVAILABLE,
    TOKEN_REVOKED,
    BrokerError,
)
from ..images import MAX_SCREEN_BYTES
from ..model import ConsoleKind, ConsoleRef, DomainInfo, FdEndpoint, SerialEndpoint, Stream, TcpEndpoint, UnixEndpoint
from ..relay.backend import Backend, SocketBackend
from .graphics import Devices, GraphicsXMLError, parse_devices
from .serialstream import SerialBackend

T = TypeVar("T")

STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: "nostate",
    libvirt.VIR_DOMAIN_RUNNING: "running",
    libvirt.VIR_DOMAIN_BLOCKED: "blocked",
    libvirt.VIR_DOMAIN_PAUSED: "paused",
    libvirt.VIR_DOMAIN_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF: "shutoff",
    libvirt.VIR_DOMAIN_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_PMSUSPENDED: "pmsuspended",
}

# libvirt prints every error to stderr by default; we turn them into BrokerErrors instead.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)

log = logging.getLogger("broker.consoles")

# Lifecycle events that mean "this run of the domain is over".
_ENDED = {libvirt.VIR_DOMAIN_EVENT_STOPPED, libvirt.VIR_DOMAIN_EVENT_UNDEFINED, libvirt.VIR_DOMAIN_EVENT_CRASHED}
_CLOSE_REASONS = {
    libvirt.VIR_CONNECT_CLOSE_REASON_ERROR: "I/O error",
    libvirt.VIR_CONNECT_CLOSE_REASON_EOF: "libvirtd closed it",
    libvirt.VIR_CONNECT_CLOSE_REASON_KEEPALIVE: "keepalive timeout: libvirtd stopped answering",
    libvirt.VIR_CONNECT_CLOSE_REASON_CLIENT: "closed by us",
}
_event_loop_lock = threading.Lock()
_event_loop_started = False


def start_libvirt_event_loop() -> None:
    """libvirt delivers events only while someone runs its event loop: one daemon
    thread, process-wide, registered before the first connection is opened."""
    global _event_loop_started
    with _event_loop_lock:
        if _event_loop_started:
            return
        libvirt.virEventRegisterDefaultImpl()

        def run() -> None:
            while True:
                libvirt.virEventRunDefaultImpl()

        threading.Thread(target=run, name="libvirt-events", daemon=True).start()
        _event_loop_started = True


# A call into a hung libvirtd cannot be cancelled: its worker thread is left behind. At most
# this many such threads may be stuck at once; past that, calls fail at once (libvirt_unavailable)
# until one of them returns, instead of piling up a thread per request.
MAX_STUCK_WORKERS = 4
# libvirt's own keepalive closes a connection after this many unanswered pings, one every
# ceil(timeout) seconds: a call stuck on it then returns with an error and its thread exits.
KEEPALIVE_COUNT = 2


class LibvirtConsoles:
    """Console source backed by one libvirt connection, reopened when it drops.

    Every call has a deadline (`timeout`); one that misses it is answered with
    LIBVIRT_UNAVAILABLE and the worker thread and connection it is stuck on are given up,
    so a hung libvirtd delays no request by more than the deadline.
    """

    def __init__(
        self, uri: str, connect_timeout: float = 5.0, timeout: float = 5.0, history_limit: int = 64 * 1024
    ) -> None:
        self.uri = uri
        self.history_limit = history_limit  # bytes of a serial console's log replayed on attach
        self.connect_timeout = connect_timeout
        self.timeout = timeout
        self._worker: _Worker | None = None
        self._stuck: list[_Worker] = []
        self._workers_started = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_ended: list[Callable[[str, bool], None]] = []
        start_libvirt_event_loop()

    def on_domain_ended(self, callback: Callable[[str, bool], None]) -> None:
        """Call callback(uuid, undefined) on the asyncio loop when a domain stops, crashes
        (undefined False) or is undefined (True)."""
        self._on_ended.append(callback)

    def _lifecycle(self, _conn: Any, dom: libvirt.virDomain, event: int, _detail: int, _opaque: Any) -> None:
        # Runs on libvirt's event thread: hand over to the asyncio loop.
        if event in _ENDED and self._loop is not None:
            uuid = dom.UUIDString()
            undefined = event == libvirt.VIR_DOMAIN_EVENT_UNDEFINED
            for callback in self._on_ended:
                try:
                    self._loop.call_soon_threadsafe(callback, uuid, undefined)
                except RuntimeError:  # our loop has closed: nobody is left to tell
                    return

    def _closed(self, _conn: Any, reason: int, _opaque: Any) -> None:
        why = _CLOSE_REASONS.get(reason, f"reason {reason}")
        log.warning("lost the connection to libvirt at %s (%s); reconnecting on next use", self.uri, why)

    # -- running blocking libvirt calls -------------------------------------------------

    async def run(self, fn: Callable[..., T], *args: Any, discard: Callable[[T], Any] | None = None) -> T:
        """Run fn(conn, *args) on the worker thread, within the deadline.

        On a timeout the worker is given up (see _give_up). After a timeout or a
        cancellation `discard` receives the result if the call ever returns one, so that
        nothing it holds (a file descriptor) leaks.
        """
        self._loop = asyncio.get_running_loop()
        worker = self._current_worker()
        future = worker.submit(fn, *args)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(future), self.timeout)
        except (TimeoutError, asyncio.CancelledError) as exc:  # cancelled: our caller went away (shutdown)
            if discard is not None:
                future.add_done_callback(lambda done: _discard_result(done, discard))
            if isinstance(exc, asyncio.CancelledError):
                raise
            error = BrokerError(LIBVIRT_UNAVAILABLE, f"libvirt did not answer within {self.timeout:g} s.")
            self._give_up(worker, error)
            raise error from None

    def _current_worker(self) -> _Worker:
        """The live worker, or a fresh one (with a fresh connection) after one was given up."""
        if self._worker is not None:
            return self._worker
        self._stuck = [w for w in self._stuck if w.thread.is_alive()]
        if len(self._stuck) >= MAX_STUCK_WORKERS:
            raise BrokerError(
                LIBVIRT_UNAVAILABLE,
                f"libvirt has not answered {len(self._stuck)} calls; no new call is made until one of them returns.",
            )
        self._workers_started += 1
        self._worker = _Worker(self, self._workers_started)
        return self._worker

    def _give_up(self, worker: _Worker, error: BrokerError) -> None:
        """A call on `worker` missed its deadline: leave that thread and its connection behind.

        The stuck call returns when libvirtd answers again or when libvirt's keepalive
        closes the connection; the thread then closes the connection and exits.
        """
        if worker is not self._worker:
            return  # already given up by an earlier timeout
        self._worker = None
        self._stuck.append(worker)
        worker.abandon(error)  # the calls queued behind the stuck one fail with it
        log.warning(
            "libvirt at %s did not answer within %g s; giving up on that connection (%d call(s) stuck)",
            self.uri,
            self.timeout,
            len(self._stuck),
        )

    # -- queries -----------------------------------------------------------------------

    async def healthy(self) -> tuple[bool, str]:
        try:
            version = await self.run(lambda conn: conn.getLibVersion())
        except BrokerError as exc:
            return False, exc.message
        major, rest = divmod(version, 1_000_000)
        return True, f"libvirt {major}.{rest // 1000}.{rest % 1000} at {self.uri}"

    async def list_domains(self) -> list[DomainInfo]:
        return await self.run(_list_domains)

    async def find(self, ident: str) -> DomainInfo:
        """A domain by UUID or name (see Identifier.parse for which is which)."""
        return await self.run(_find, Identifier.parse(ident))

    async def open(self, ref: ConsoleRef, *, take_over: bool = False) -> tuple[DomainInfo, Stream]:
        """Resolve the console from libvirt *now* and connect to it.

        The token names a UUID, so a port freed by a stopped VM and taken by another
        can never be reached (CVE-2013-0335): we connect to what the live XML of that
        UUID says, then check the same run of the domain still holds it. `take_over`
        forces a serial console away from whoever holds it.
        """
        # The secure XML: it holds the VNC password, which only this path may read.
        info = await self.run(_find, Identifier(ref.uuid, by_uuid=True), True)
        if info.active and ref.run_id is not None and info.run_id != ref.run_id:
            raise BrokerError(TOKEN_REVOKED, "The VM was restarted after the link was made; ask for a new one.")
        if ref.kind is ConsoleKind.SERIAL:
            return info, await self._open_serial(info, ref, take_over)
        console = info.console(ref.index)
        endpoint = console.endpoint
        assert endpoint is not None
        if isinstance(endpoint, FdEndpoint):
            try:
                fd = await self.run(_open_graphics_fd, ref.uuid, endpoint, discard=os.close)
            except BrokerError as exc:
                if exc.failure is LIBVIRT_UNAVAILABLE:
                    raise
                raise BrokerError(
                    CONSOLE_UNREACHABLE,
                    f"Cannot connect to the VNC console of {info.name!r} ({endpoint}): {exc.message}",
                ) from None
            _transport, backend = await asyncio.get_running_loop().create_connection(
                SocketBackend, sock=socket.socket(fileno=fd)
            )
        else:
            backend = await connect_endpoint(info.name, endpoint, self.connect_timeout)
        await self._confirm_same_run(info, backend)
        return info, Stream(backend, endpoint, password=console.password)

    async def _open_serial(self, info: DomainInfo, ref: ConsoleRef, take_over: bool) -> Stream:
        """virDomainOpenConsole on a non-blocking stream, then the log's tail to replay."""
        console = info.serial(ref.index)
        flags = libvirt.VIR_DOMAIN_CONSOLE_FORCE if take_over else 0
        stream = await self.run(_open_console, ref.uuid, console.alias, flags, discard=_abort_quietly)
        backend = SerialBackend(stream, lambda call: self.run(lambda _conn: call()))
        history = None
        if console.log_path is not None and self.history_limit:
            try:
                history = await asyncio.to_thread(read_tail, console.log_path, self.history_limit)
            except BaseException:  # cancelled: the console goes back to libvirtd
                backend.close()
                raise
        await self._confirm_same_run(info, backend)
        return Stream(backend, SerialEndpoint(console.alias), ConsoleKind.SERIAL, history=history)

    async def _confirm_same_run(self, info: DomainInfo, backend: Backend) -> None:
        """After connecting: the run the console was resolved in still holds it, or the
        backend is closed and the reason raised (CVE-2013-0335)."""
        try:
            same_run = await self.still_running(info.uuid, info.run_id, unknown=False)
        except BaseException:
            backend.close()
            raise
        if not same_run:
            backend.close()
            raise BrokerError(DOMAIN_NOT_RUNNING, f"Domain {info.name!r} stopped while connecting.")

    async def still_running(self, uuid: str, run_id: int, *, unknown: bool = True) -> bool:
        """Is this same run of the domain still active? False also when it vanished. When
        libvirt cannot say (unavailable, an error), `unknown` is the answer, or, with
        unknown=False, the error is raised: the check after connecting must not pass a
        console it could not verify (CVE-2013-0335)."""
        try:
            info = await self.run(_find, Identifier(uuid, by_uuid=True, explicit=True))
        except BrokerError as exc:
            if exc.failure is DOMAIN_NOT_FOUND or exc.failure is DOMAIN_NOT_RUNNING:
                return False
            if unknown:
                return True
            raise
        return info.active and info.run_id == run_id

    async def screenshot(self, uuid: str) -> tuple[str, bytes]:
        """The domain's screen now: (MIME type, image bytes) from virDomainScreenshot (QEMU:
        PPM), read whole on the worker thread within the deadline, at most MAX_SCREEN_BYTES."""
        return await self.run(_screenshot, uuid, MAX_SCREEN_BYTES)

    def close(self) -> None:
        """Close the connection on the way out, waiting for a hung libvirtd no longer than the deadline."""
        worker, self._worker = self._worker, None
        if worker is not None:
            worker.stop()
            worker.thread.join(self.timeout)


class _Worker:
    """One thread owning one libvirt connection; runs calls on it one at a time, in order.

    A daemon thread, so that one stuck in a hung libvirtd never holds up the process's exit.
    """

    def __init__(self, owner: LibvirtConsoles, number: int) -> None:
        self.owner = owner
        self.conn: libvirt.virConnect | None = None
        self._callback_id = -1
        self._abandoned: BrokerError | None = None
        self._jobs: queue.SimpleQueue[tuple[Callable[..., Any], tuple[Any, ...], Future[Any]] | None] = (
            queue.SimpleQueue()
        )
        self.thread = threading.Thread(target=self._serve, name=f"libvirt-{number}", daemon=True)
        self.thread.start()

    def submit(self, fn: Callable[..., T], *args: Any) -> Future[T]:
        future: Future[T] = Future()
        self._jobs.put((fn, args, future))
        return future

    def stop(self) -> None:
        """Finish what is queued, close the connection, exit."""
        self._jobs.put(None)

    def abandon(self, error: BrokerError) -> None:
        """Fail every call still queued here with `error` (at once: their callers need not wait
        out their own deadlines) and exit once the stuck call returns."""
        self._abandoned = error
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                _fail(job[2], error)
        self._jobs.put(None)

    def _serve(self) -> None:
        try:
            while (job := self._jobs.get()) is not None:
                fn, args, future = job
                if self._abandoned is not None:  # raced abandon() for this job
                    _fail(future, self._abandoned)
                elif future.set_running_or_notify_cancel():
                    try:
                        future.set_result(self._guarded(fn, *args))
                    except BaseException as exc:
                        future.set_exception(exc)
        finally:
            self._drop()

    def _connection(self) -> libvirt.virConnect:
        conn = self.conn
        if conn is not None:
            if _alive(conn):
                return conn
            self._drop()
        owner = self.owner
        try:
            conn = libvirt.open(owner.uri)
            self._callback_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, owner._lifecycle, None
            )
            conn.registerCloseCallback(owner._closed, None)
        except libvirt.libvirtError as exc:
            raise BrokerError(LIBVIRT_UNAVAILABLE, f"Cannot connect to libvirt at {owner.uri}: {_text(exc)}") from None
        try:
            # Needs libvirt's event loop (running): closes the connection when libvirtd stops answering.
            conn.setKeepAlive(max(1, math.ceil(owner.timeout)), KEEPALIVE_COUNT)
        except libvirt.libvirtError:
            pass  # drivers without a daemon (test:///) have no keepalive
        self.conn = conn
        return conn

    def _drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            # Deregister first: a closed but still referenced connection keeps delivering events.
            for undo in (
                lambda: conn.domainEventDeregisterAny(self._callback_id),
                conn.unregisterCloseCallback,
                conn.close,
            ):
                try:
                    undo()
                except libvirt.libvirtError:
                    pass

    def _guarded(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn(conn, *args); a broken connection becomes LIBVIRT_UNAVAILABLE and is reopened next time."""
        conn = self._connection()
        try:
            return fn(conn, *args)
        except libvirt.libvirtError as exc:
            if not _alive(conn):
                self._drop()
                raise BrokerError(LIBVIRT_UNAVAILABLE, f"libvirt stopped answering: {_text(exc)}") from None
            raise BrokerError(LIBVIRT_ERROR, f"libvirt refused the request: {_text(exc)}") from None


def _fail(future: Future[Any], error: BrokerError) -> None:
    try:
        future.set_exception(error)
    except InvalidStateError:  # cancelled by its caller meanwhile
        pass


def _discard_result(done: Future[T], discard: Callable[[T], Any]) -> None:
    """Release what a call returned after its caller had given up on it."""
    if not done.cancelled() and done.exception() is None:
        discard(done.result())


async def connect_endpoint(name: str, endpoint: TcpEndpoint | UnixEndpoint, timeout: float) -> SocketBackend:
    """Connect to a TCP or UNIX-socket VNC endpoint, or say why not."""
    loop = asyncio.get_running_loop()
    try:
        if isinstance(endpoint, TcpEndpoint):
            connecting = loop.create_connection(SocketBackend, endpoint.host, endpoint.port)
        else:
            connecting = loop.create_unix_connection(SocketBackend, endpoint.path)
        _transport, backend = await asyncio.wait_for(connecting, timeout)
        return backend
    except (TimeoutError, OSError) as exc:
        raise BrokerError(
            CONSOLE_UNREACHABLE,
            f"Cannot connect to the VNC console of {name!r} ({endpoint}): {_text(exc)}",
        ) from None


# -- blocking helpers, run on the libvirt thread ---------------------------------------


def _describe(dom: libvirt.virDomain, secure: bool = False) -> DomainInfo:
    state, _reason = dom.state()
    active = bool(dom.isActive())
    try:
        devices = parse_devices(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE if secure else 0))
    except GraphicsXMLError:
        devices = Devices([], [], [])
    return DomainInfo(
        name=dom.name(),
        uuid=dom.UUIDString(),
        state=STATES.get(state, "unknown"),
        active=active,
        run_id=dom.ID() if active else -1,
        consoles=devices.vnc,
        serials=devices.serials,
        other_graphics=devices.other_graphics,
    )


def _list_domains(conn: libvirt.virConnect) -> list[DomainInfo]:
    found = []
    for dom in conn.listAllDomains(0):
        try:
            found.append(_describe(dom))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() != libvirt.VIR_ERR_NO_DOMAIN:  # undefined while we looked
                raise
    return sorted(found, key=lambda d: d.name)


def _find(conn: libvirt.virConnect, ident: Identifier, secure: bool = False) -> DomainInfo:
    try:
        if ident.by_uuid:
            dom = conn.lookupByUUIDString(ident.value)
        else:
            dom = conn.lookupByName(ident.value)
        return _describe(dom, secure)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise BrokerError(DOMAIN_NOT_FOUND, _not_found(conn, ident)) from None
        raise


def _not_found(conn: libvirt.virConnect, ident: Identifier) -> str:
    """Why nothing matched, and the way to reach a domain *named* like the UUID asked for."""
    if not ident.by_uuid:
        return f"No domain named {ident.value!r}."
    if ident.explicit:
        return f"No domain with UUID {ident.value}."
    try:
        conn.lookupByName(ident.value)
    except libvirt.libvirtError:
        return f"No domain with UUID {ident.value}."
    return (
        f"No domain with UUID {ident.value}. A domain is named {ident.value!r}: a UUID-shaped identifier "
        f"always means a UUID, so ask for 'name:{ident.value}'."
    )


def _open_console(conn: libvirt.virConnect, uuid: str, alias: str, flags: int) -> libvirt.virStream:
    dom = conn.lookupByUUIDString(uuid)
    stream = conn.newStream(libvirt.VIR_STREAM_NONBLOCK)
    try:
        dom.openConsole(alias, stream, flags)
    except libvirt.libvirtError as exc:
        _abort_quietly(stream)
        message = exc.get_error_message() or str(exc)
        if "Active console session exists" in message:  # libvirt has no error code of its own for it
            raise BrokerError(CONSOLE_BUSY, f"Another client is using serial console {alias!r} of this VM.") from None
        raise BrokerError(CONSOLE_UNREACHABLE, f"Cannot open serial console {alias!r}: {message}") from None
    return stream


def _screenshot(conn: libvirt.virConnect, uuid: str, limit: int) -> tuple[str, bytes]:
    try:
        dom = conn.lookupByUUIDString(uuid)
        if not dom.isActive():
            raise BrokerError(DOMAIN_NOT_RUNNING, f"Domain {dom.name()!r} is not running: it has no screen.")
        stream = conn.newStream(0)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise BrokerError(DOMAIN_NOT_FOUND, f"No domain with UUID {uuid}.") from None
        raise
    try:
        mime = dom.screenshot(stream, 0, 0) or "application/octet-stream"
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = stream.recv(256 * 1024)
            if not isinstance(chunk, bytes) or not chunk:  # b"": the end (a blocking stream never says -2)
                break
            size += len(chunk)
            if size > limit:
                raise BrokerError(LIBVIRT_ERROR, f"The screenshot is larger than {limit // (1024 * 1024)} MiB.")
            chunks.append(chunk)
        stream.finish()
    except libvirt.libvirtError as exc:
        _abort_quietly(stream)
        if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:  # it stopped meanwhile
            raise BrokerError(DOMAIN_NOT_RUNNING, f"Domain {dom.name()!r} is not running: it has no screen.") from None
        raise
    except BaseException:
        _abort_quietly(stream)
        raise
    return str(mime), b"".join(chunks)


def _abort_quietly(stream: libvirt.virStream) -> None:
    try:
        stream.abort()
    except libvirt.libvirtError:
        pass


def read_tail(path: str, limit: int) -> bytes | None:
    """The last `limit` bytes of a console log, from the start of a line; None if unreadable."""
    try:
        with open(path, "rb") as log_file:
            size = log_file.seek(0, os.SEEK_END)
            start = max(0, size - limit)
            log_file.seek(start)
            data = log_file.read(limit)
    except OSError:
        return None
    if start:
        line_end = data.find(b"\n")
        data = data[line_end + 1 :] if line_end >= 0 else b""
    return data


def _open_graphics_fd(conn: libvirt.virConnect, uuid: str, endpoint: FdEndpoint) -> int:
    dom = conn.lookupByUUIDString(uuid)
    fd: int = dom.openGraphicsFD(endpoint.index, 0)
    return fd


_UUID_SHAPE = re.compile(r"[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}")


def _is_uuid(text: str) -> bool:
    """8-4-4-4-12 hex digits, exactly (uuid.UUID also takes braces, 'urn:uuid:' and dashes anywhere)."""
    return _UUID_SHAPE.fullmatch(text) is not None


# No libvirt domain name comes close; keeps absurd strings away from libvirt and the logs.
MAX_IDENTIFIER_LENGTH = 1024


@dataclass(frozen=True)
class Identifier:
    """A domain as a caller named it: by UUID or by name, never "either"."""

    value: str
    by_uuid: bool
    explicit: bool = False  # written as uuid:… or name:…

    @classmethod
    def parse(cls, text: str) -> Identifier:
        """`uuid:U`, `name:N`, or bare. A bare UUID-shaped identifier (8-4-4-4-12 hex digits)
        always means a UUID, even when some domain is *named* like it: a UUID stays
        unambiguous whatever names other domains get. Anything else bare is a name.
        Identifiers that no domain can have are INVALID_INPUT, before libvirt sees them."""
        _check_identifier(text)
        prefix, colon, rest = text.partition(":")
        if colon and prefix == "uuid":
            if not _is_uuid(rest):
                raise BrokerError(
                    INVALID_INPUT,
                    f"{_shown(rest)} after 'uuid:' is not a UUID like 6f1c0e8e-3b7a-4c39-9d35-1f0b0c5d2a11.",
                )
            return cls(str(uuidlib.UUID(rest)), by_uuid=True, explicit=True)
        if colon and prefix == "name":
            _check_identifier(rest)
            return cls(rest, by_uuid=False, explicit=True)
        if _is_uuid(text):
            return cls(str(uuidlib.UUID(text)), by_uuid=True)
        return cls(text, by_uuid=False)


def _check_identifier(text: str) -> None:
    """Refuse what cannot be a domain's name or UUID: empty, too long, a NUL (libvirt's C
    strings end there), text that is not valid Unicode. Other control characters stay:
    libvirt accepts TAB and C1 in names, and such a domain must stay reachable by name."""
    if not text:
        raise BrokerError(INVALID_INPUT, "The domain identifier is empty.")
    if len(text) > MAX_IDENTIFIER_LENGTH:
        raise BrokerError(INVALID_INPUT, f"The domain identifier is longer than {MAX_IDENTIFIER_LENGTH} characters.")
    if "\0" in text:
        raise BrokerError(INVALID_INPUT, f"The domain identifier {_shown(text)} contains a NUL character.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BrokerError(INVALID_INPUT, "The domain identifier is not valid UTF-8.") from None


def _shown(text: str) -> str:
    """An identifier quoted for a message: escaped, and cut short."""
    quoted = ascii(text)
    return quoted if len(quoted) <= 80 else quoted[:77] + "..."


def _alive(conn: libvirt.virConnect) -> bool:
    try:
        return bool(conn.isAlive())
    except libvirt.libvirtError:
        return False


def _text(exc: BaseException) -> str:
    if isinstance(exc, libvirt.libvirtError):
        return exc.get_error_message() or str(exc)
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)

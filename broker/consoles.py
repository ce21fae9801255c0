"""Where is the console? The libvirt side of the broker.

Finds domains, reads their VNC graphics from the live XML and opens a stream to
one. The relay never sees anything from here but an open BackendConnection.

libvirt-python's calls block, so they run on one dedicated worker thread: the
asyncio loop never waits on libvirtd, and libvirt sees calls one at a time.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
import uuid as uuidlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable, TypeVar

import libvirt

from .backend import BackendConnection
from .errors import (
    CONSOLE_UNREACHABLE,
    DOMAIN_NOT_FOUND,
    DOMAIN_NOT_RUNNING,
    LIBVIRT_ERROR,
    LIBVIRT_UNAVAILABLE,
    NO_CONSOLE,
    BrokerError,
)
from .graphics import Endpoint, FdEndpoint, GraphicsXMLError, TcpEndpoint, UnixEndpoint, VncConsole, parse_graphics
from .tokens import ConsoleRef

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


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    state: str
    active: bool
    # Identifies this run of the domain: a restarted domain gets a new ID.
    run_id: int = -1
    consoles: list[VncConsole] = field(default_factory=list)

    def console(self, index: int | None = None) -> VncConsole:
        """The console at `index` (default: the first VNC one), or the reason there is none."""
        if not self.active:
            raise BrokerError(DOMAIN_NOT_RUNNING, f"Domain {self.name!r} is not running (state: {self.state}).")
        if not self.consoles:
            raise BrokerError(NO_CONSOLE, f"Domain {self.name!r} has no VNC graphics device.")
        if index is None:
            chosen = self.consoles[0]
        else:
            matches = [c for c in self.consoles if c.index == index]
            if not matches:
                raise BrokerError(NO_CONSOLE, f"Domain {self.name!r} has no VNC graphics device at index {index}.")
            chosen = matches[0]
        if chosen.endpoint is None:
            raise BrokerError(NO_CONSOLE, f"Domain {self.name!r} has no reachable VNC console: {chosen.unavailable}.")
        return chosen

    def to_json(self) -> dict[str, Any]:
        consoles = []
        for console in self.consoles:
            entry: dict[str, Any] = {"index": console.index}
            if self.active and console.endpoint is not None:
                entry["endpoint"] = str(console.endpoint)
            else:
                entry["unavailable"] = console.unavailable or f"domain is {self.state}"
            consoles.append(entry)
        body: dict[str, Any] = {"name": self.name, "uuid": self.uuid, "state": self.state, "consoles": consoles}
        try:
            self.console()
        except BrokerError as exc:
            body["console_unavailable"] = exc.message
        return body


@dataclass
class Stream:
    backend: BackendConnection
    endpoint: Endpoint
    # The VNC password, read from libvirt at connect time; never logged or shown.
    password: str | None = field(default=None, repr=False)


class LibvirtConsoles:
    """Console source backed by one libvirt connection, reopened when it drops."""

    def __init__(self, uri: str, connect_timeout: float = 5.0) -> None:
        self.uri = uri
        self.connect_timeout = connect_timeout
        self._conn: libvirt.virConnect | None = None
        self._callback_id = -1
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="libvirt")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._on_ended: list[Callable[[str], None]] = []
        start_libvirt_event_loop()

    def on_domain_ended(self, callback: Callable[[str], None]) -> None:
        """Call callback(uuid) on the asyncio loop when a domain stops, crashes or is undefined."""
        self._on_ended.append(callback)

    def _lifecycle(self, _conn: Any, dom: libvirt.virDomain, event: int, _detail: int, _opaque: Any) -> None:
        # Runs on libvirt's event thread: hand over to the asyncio loop.
        if event in _ENDED and self._loop is not None:
            uuid = dom.UUIDString()
            for callback in self._on_ended:
                try:
                    self._loop.call_soon_threadsafe(callback, uuid)
                except RuntimeError:  # our loop has closed: nobody is left to tell
                    return

    def _closed(self, _conn: Any, reason: int, _opaque: Any) -> None:
        log.warning("lost the connection to libvirt at %s (reason %d); reconnecting on next use", self.uri, reason)

    # -- running blocking libvirt calls -------------------------------------------------

    async def _call(self, fn: Callable[..., T], *args: Any) -> T:
        self._loop = asyncio.get_running_loop()
        return await self._loop.run_in_executor(self._executor, fn, *args)

    def _connection(self) -> libvirt.virConnect:
        conn = self._conn
        if conn is not None:
            try:
                if conn.isAlive():
                    return conn
            except libvirt.libvirtError:
                pass
            self._drop()
        try:
            conn = libvirt.open(self.uri)
            self._callback_id = conn.domainEventRegisterAny(
                None, libvirt.VIR_DOMAIN_EVENT_ID_LIFECYCLE, self._lifecycle, None
            )
            conn.registerCloseCallback(self._closed, None)
        except libvirt.libvirtError as exc:
            raise BrokerError(LIBVIRT_UNAVAILABLE, f"Cannot connect to libvirt at {self.uri}: {_text(exc)}") from None
        self._conn = conn
        return conn

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            # Deregister first: a closed but still referenced connection keeps delivering events.
            for undo in (lambda: conn.domainEventDeregisterAny(self._callback_id), conn.unregisterCloseCallback, conn.close):
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

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        return await self._call(self._guarded, fn, *args)

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
        """A domain by UUID or name."""
        return await self.run(_find, ident)

    async def open(self, ref: ConsoleRef) -> tuple[DomainInfo, Stream]:
        """Resolve the console from libvirt *now* and connect to it.

        The token names a UUID, so a port freed by a stopped VM and taken by another
        can never be reached (CVE-2013-0335): we connect to what the live XML of that
        UUID says, then check the same run of the domain still holds it.
        """
        # The secure XML: it holds the VNC password, which only this path may read.
        info = await self.run(_find, ref.uuid, True)
        console = info.console(ref.index)
        endpoint = console.endpoint
        assert endpoint is not None
        if isinstance(endpoint, FdEndpoint):
            try:
                fd = await self.run(_open_graphics_fd, ref.uuid, endpoint)
            except BrokerError as exc:
                raise BrokerError(
                    CONSOLE_UNREACHABLE, f"Cannot connect to the VNC console of {info.name!r} ({endpoint}): {exc.message}"
                ) from None
            _transport, backend = await asyncio.get_running_loop().create_connection(
                BackendConnection, sock=socket.socket(fileno=fd)
            )
        else:
            backend = await connect_endpoint(info.name, endpoint, self.connect_timeout)
        if not await self.still_running(ref.uuid, info.run_id):
            backend.close()
            raise BrokerError(DOMAIN_NOT_RUNNING, f"Domain {info.name!r} stopped while connecting.")
        return info, Stream(backend, endpoint, console.password)

    async def still_running(self, uuid: str, run_id: int) -> bool:
        """Is this same run of the domain still active? False also when it vanished."""
        try:
            info = await self.find(uuid)
        except BrokerError as exc:
            return exc.failure is not DOMAIN_NOT_FOUND and exc.failure is not DOMAIN_NOT_RUNNING
        return info.active and info.run_id == run_id

    def close(self) -> None:
        self._executor.submit(self._drop)
        self._executor.shutdown(wait=True)


async def connect_endpoint(name: str, endpoint: TcpEndpoint | UnixEndpoint, timeout: float) -> BackendConnection:
    """Connect to a TCP or UNIX-socket VNC endpoint, or say why not."""
    loop = asyncio.get_running_loop()
    try:
        if isinstance(endpoint, TcpEndpoint):
            connecting = loop.create_connection(BackendConnection, endpoint.host, endpoint.port)
        else:
            connecting = loop.create_unix_connection(BackendConnection, endpoint.path)
        _transport, backend = await asyncio.wait_for(connecting, timeout)
        return backend
    except (OSError, asyncio.TimeoutError) as exc:
        raise BrokerError(
            CONSOLE_UNREACHABLE, f"Cannot connect to the VNC console of {name!r} ({endpoint}): {_text(exc)}"
        ) from None


# -- blocking helpers, run on the libvirt thread ---------------------------------------


def _describe(dom: libvirt.virDomain, secure: bool = False) -> DomainInfo:
    state, _reason = dom.state()
    active = bool(dom.isActive())
    try:
        consoles = parse_graphics(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_SECURE if secure else 0))
    except GraphicsXMLError:
        consoles = []
    return DomainInfo(
        name=dom.name(),
        uuid=dom.UUIDString(),
        state=STATES.get(state, "unknown"),
        active=active,
        run_id=dom.ID() if active else -1,
        consoles=consoles,
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


def _find(conn: libvirt.virConnect, ident: str, secure: bool = False) -> DomainInfo:
    try:
        if _is_uuid(ident):
            dom = conn.lookupByUUIDString(ident)
        else:
            dom = conn.lookupByName(ident)
        return _describe(dom, secure)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            raise BrokerError(DOMAIN_NOT_FOUND, f"No domain named or with UUID {ident!r}.") from None
        raise


def _open_graphics_fd(conn: libvirt.virConnect, uuid: str, endpoint: FdEndpoint) -> int:
    dom = conn.lookupByUUIDString(uuid)
    return dom.openGraphicsFD(endpoint.index, 0)


def _is_uuid(text: str) -> bool:
    try:
        uuidlib.UUID(text)
    except ValueError:
        return False
    return len(text) == 36


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

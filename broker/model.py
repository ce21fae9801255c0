"""What the broker talks about: console kinds, the consoles a domain has, and references to them.

Plain data, shared by every package: the libvirt source fills it in, tokens carry
references to it, the app and the CLI show it. No I/O here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from .errors import DOMAIN_NOT_RUNNING, NO_CONSOLE, BrokerError
from .relay.backend import Backend


class ConsoleKind(enum.Enum):
    """What is at the other end of a console session, and so which rules apply to it."""

    VNC = "vnc"
    SERIAL = "serial"


class LinkMode(enum.Enum):
    """What a link lets its user do, enforced by the broker (not by the page)."""

    INTERACTIVE = "interactive"
    VIEW_ONLY = "view-only"  # pictures (or output) only: every input is dropped
    EXCLUSIVE = "exclusive"  # ends the console's other sessions, and no interactive one may join


@dataclass(frozen=True)
class ConsoleRef:
    """What a token opens: a console of one kind by the domain's UUID (never its name) and
    device index, in the run of the domain it was minted for (libvirt's domain ID; None:
    any run). The run is checked at connect time too, so a lost lifecycle event cannot let
    a link or a page session open the next run of the same UUID."""

    uuid: str
    index: int = 0  # VNC: the <graphics> index; serial: the position in DomainInfo.serials
    run_id: int | None = None
    kind: ConsoleKind = ConsoleKind.VNC


# -- where a VNC console listens --------------------------------------------------------


@dataclass(frozen=True)
class TcpEndpoint:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"vnc://{host}:{self.port}"


@dataclass(frozen=True)
class UnixEndpoint:
    path: str

    def __str__(self) -> str:
        return f"vnc+unix://{self.path}"


@dataclass(frozen=True)
class FdEndpoint:
    """No listener: libvirt hands us a connected socket (virDomainOpenGraphicsFD)."""

    index: int

    def __str__(self) -> str:
        return f"vnc+fd://graphics/{self.index}"


Endpoint = TcpEndpoint | UnixEndpoint | FdEndpoint


@dataclass(frozen=True)
class SerialEndpoint:
    """A serial console, reached through libvirt (virDomainOpenConsole) by its alias."""

    alias: str

    def __str__(self) -> str:
        return f"libvirt console {self.alias}"


@dataclass(frozen=True)
class VncConsole:
    """One `<graphics type='vnc'>` device.

    `index` counts every `<graphics>` element of the domain (VNC or not), because
    that is the index virDomainOpenGraphicsFD takes. `endpoint` is None while the
    console cannot be reached, with `unavailable` saying why.
    """

    index: int
    endpoint: Endpoint | None
    unavailable: str | None = None
    password: str | None = field(default=None, repr=False)


@dataclass(frozen=True)
class SerialConsole:
    """A serial or console character device, opened with virDomainOpenConsole by its alias.

    `unavailable` says why it cannot be opened (libvirt opens only PTY-backed devices) and
    what to change; `log_path` is its virtlogd log (`<log file=…/>`), replayed on attach.
    """

    index: int
    alias: str
    device: str  # "serial" or "console" (the XML element)
    target: str  # what the guest sees: "isa-serial", "virtio", …
    log_path: str | None = None
    unavailable: str | None = None

    def to_json(self, active: bool, state: str) -> dict[str, Any]:
        entry: dict[str, Any] = {"index": self.index, "alias": self.alias, "target": self.target}
        entry["history"] = self.log_path is not None
        if self.unavailable or not active:
            entry["unavailable"] = self.unavailable or f"domain is {state}"
        return entry


def serial_xml_hint(domain: str, alias: str = "serial0") -> str:
    """The domain-XML element that gives a domain a serial console with history."""
    return f"<serial type='pty'><log file='/var/log/libvirt/qemu/{domain}-{alias}.log'/></serial>"


# -- domains ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DomainInfo:
    name: str
    uuid: str
    state: str
    active: bool
    # Identifies this run of the domain: a restarted domain gets a new ID.
    run_id: int = -1
    consoles: list[VncConsole] = field(default_factory=list)
    serials: list[SerialConsole] = field(default_factory=list)
    # Graphics the broker cannot open ("spice", "rdp", …), named so the listing can say what to do.
    other_graphics: list[str] = field(default_factory=list)

    def console(self, index: int | None = None) -> VncConsole:
        """The console at `index` (default: the first VNC one), or the reason there is none."""
        if not self.active:
            raise BrokerError(DOMAIN_NOT_RUNNING, f"Domain {self.name!r} is not running (state: {self.state}).")
        if not self.consoles:
            raise BrokerError(NO_CONSOLE, self._no_vnc_reason())
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

    def _no_vnc_reason(self) -> str:
        if self.other_graphics:
            kinds = " and ".join(sorted({kind.upper() for kind in self.other_graphics}))
            return (
                f"Domain {self.name!r} has only {kinds} graphics, which the broker cannot open; "
                f"add VNC with: virt-xml {self.name} --convert-to-vnc"
            )
        return f"Domain {self.name!r} has no VNC graphics device."

    def serial(self, which: str | int | None = None) -> SerialConsole:
        """The serial console by alias or index (default: the first), or the reason there is none."""
        if not self.active:
            raise BrokerError(DOMAIN_NOT_RUNNING, f"Domain {self.name!r} is not running (state: {self.state}).")
        if not self.serials:
            raise BrokerError(
                NO_CONSOLE,
                f"Domain {self.name!r} has no serial console; add to its <devices> (virsh edit): "
                + serial_xml_hint(self.name),
            )
        if which is None:
            chosen = self.serials[0]
        else:
            matches = [c for c in self.serials if which in (c.alias, c.index)]
            if not matches:
                known = ", ".join(c.alias for c in self.serials)
                raise BrokerError(
                    NO_CONSOLE, f"Domain {self.name!r} has no serial console {which!r} (it has: {known})."
                )
            chosen = matches[0]
        if chosen.unavailable:
            raise BrokerError(NO_CONSOLE, f"Serial console {chosen.alias!r} of {self.name!r}: {chosen.unavailable}")
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
        body["serial_consoles"] = [serial.to_json(self.active, self.state) for serial in self.serials]
        return body


@dataclass
class Stream:
    """An opened console, ready for the relay: its backend, where it leads (for the log)
    and, for a VNC console with a password, the login the broker does on the user's behalf."""

    backend: Backend
    endpoint: Endpoint | SerialEndpoint
    kind: ConsoleKind = ConsoleKind.VNC
    # The VNC password, read from libvirt at connect time; never logged or shown.
    password: str | None = field(default=None, repr=False)
    # Serial: the end of the console's log, replayed before live output (None: it has no log).
    history: bytes | None = None
    # VNC: the broker follows the browser's RFB stream to force ClientInit's shared flag on (and,
    # for view-only links, to filter input). Off for static consoles of an interactive link:
    # their security types are not known to be the ones libvirt's QEMU speaks.
    follow_rfb: bool = True

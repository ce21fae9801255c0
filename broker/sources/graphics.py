"""Where a domain's consoles are, parsed from its live libvirt XML (VNC here, serial in serials.py).

Pure: takes XML text, returns typed endpoints. Knows nothing of sockets or libvirt
connections, so every variant is unit-tested from literal XML.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import dataclass

from ..model import FdEndpoint, SerialConsole, TcpEndpoint, UnixEndpoint, VncConsole
from .serials import parse_serials

# An address QEMU listens on for every interface; we always connect over loopback.
_WILDCARDS = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}


class GraphicsXMLError(ValueError):
    """The domain XML could not be read as libvirt domain XML."""


@dataclass(frozen=True)
class Devices:
    """The consoles of one domain XML, of every kind, and the graphics the broker cannot open."""

    vnc: list[VncConsole]
    serials: list[SerialConsole]
    other_graphics: list[str]


def parse_devices(xml: str) -> Devices:
    try:
        root = ET.fromstring(xml)
    except (ET.ParseError, UnicodeError) as exc:
        raise GraphicsXMLError(f"domain XML is not well-formed: {exc}") from None
    if root.tag != "domain":
        raise GraphicsXMLError(f"expected <domain>, got <{root.tag}>")
    devices = root.find("devices")
    if devices is None:
        return Devices([], [], [])
    consoles = []
    others = []
    for index, graphics in enumerate(devices.findall("graphics")):
        if graphics.get("type") == "vnc":
            consoles.append(_parse_vnc(index, graphics))
        else:
            others.append(graphics.get("type") or "unknown")
    return Devices(consoles, parse_serials(root), others)


def parse_graphics(xml: str) -> list[VncConsole]:
    """Return the VNC consoles of a domain, in device order (possibly empty)."""
    return parse_devices(xml).vnc


def _parse_vnc(index: int, graphics: ET.Element) -> VncConsole:
    password = graphics.get("passwd")
    listen = graphics.find("listen")
    listen_type = listen.get("type") if listen is not None else None

    socket_path = graphics.get("socket") or (
        listen.get("socket") if listen is not None and listen_type == "socket" else None
    )
    if socket_path:
        return VncConsole(index, UnixEndpoint(socket_path), password=password)
    if listen_type == "socket":
        # libvirt picks the path itself when the domain starts.
        return VncConsole(index, None, "the VNC socket path is assigned when the domain starts", password)
    if listen_type == "none":
        return VncConsole(index, FdEndpoint(index), password=password)

    port = _parse_port(graphics.get("port"))
    if port is None:
        return VncConsole(index, None, "the VNC port is assigned when the domain starts", password)
    address = graphics.get("listen")
    if address is None and listen is not None:
        address = listen.get("address")
    address = _WILDCARDS.get(address or "", address or "127.0.0.1")
    return VncConsole(index, TcpEndpoint(address, port), password=password)


def parse_target(text: str) -> TcpEndpoint | UnixEndpoint:
    """A static console target from the config: `tcp:HOST:PORT` or `unix:/path/to.sock`."""
    kind, _, rest = text.partition(":")
    if kind == "unix" and rest.startswith("/"):
        return UnixEndpoint(rest)
    if kind == "tcp":
        host, _, port = rest.rpartition(":")
        if host and port.isdigit() and 0 < int(port) < 65536:
            return TcpEndpoint(host.strip("[]"), int(port))
    raise ValueError(f"a static console target must be tcp:HOST:PORT or unix:/PATH, got {text!r}")


def _parse_port(text: str | None) -> int | None:
    try:
        port = int(text or "-1")
    except ValueError:
        return None
    return port if 0 < port < 65536 else None

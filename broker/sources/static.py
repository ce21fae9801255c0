"""Consoles declared in the config instead of found in libvirt.

For VNC servers that are not libvirt domains (a TigerVNC desktop per user, a
benchmark backend). They get tokens, the relay, limits and logs like domains;
a static console is always "running", so only its endpoint can fail.
"""

from __future__ import annotations

import uuid as uuidlib
from collections.abc import Callable, Mapping

from ..errors import NO_CONSOLE, BrokerError
from ..model import ConsoleKind, ConsoleRef, DomainInfo, Stream, TcpEndpoint, UnixEndpoint, VncConsole
from .consoles import Identifier, LibvirtConsoles, connect_endpoint

# Static consoles get stable UUIDs derived from their names, so tokens bind to them alike.
_NAMESPACE = uuidlib.UUID("6f1c0e8e-3b7a-4c39-9d35-1f0b0c5d2a11")


def static_uuid(name: str) -> str:
    return str(uuidlib.uuid5(_NAMESPACE, name))


class StaticConsoles:
    def __init__(self, targets: Mapping[str, TcpEndpoint | UnixEndpoint], connect_timeout: float = 5.0) -> None:
        self.connect_timeout = connect_timeout
        self.by_uuid = {
            static_uuid(name): DomainInfo(
                name=name,
                uuid=static_uuid(name),
                state="static",
                active=True,
                run_id=0,
                consoles=[VncConsole(0, endpoint)],
            )
            for name, endpoint in targets.items()
        }
        self.by_name = {info.name: info for info in self.by_uuid.values()}

    def get(self, ident: Identifier) -> DomainInfo | None:
        """By UUID or by name as the identifier says: a console named like another's UUID
        is reached only as name:…, never instead of that UUID (as for domains)."""
        return self.by_uuid.get(ident.value) if ident.by_uuid else self.by_name.get(ident.value)


class CombinedConsoles:
    """Static consoles first, then libvirt: the one console source the app sees."""

    def __init__(self, static: StaticConsoles, libvirt_consoles: LibvirtConsoles) -> None:
        self.static = static
        self.libvirt = libvirt_consoles

    def on_domain_ended(self, callback: Callable[[str, bool], None]) -> None:
        self.libvirt.on_domain_ended(callback)

    async def healthy(self) -> tuple[bool, str]:
        return await self.libvirt.healthy()

    async def list_domains(self) -> list[DomainInfo]:
        found = await self.libvirt.list_domains()
        return sorted([*self.static.by_uuid.values(), *found], key=lambda d: d.name)

    async def find(self, ident: str) -> DomainInfo:
        """A static console or a domain; a malformed identifier is INVALID_INPUT before either is asked."""
        return self.static.get(Identifier.parse(ident)) or await self.libvirt.find(ident)

    async def open(self, ref: ConsoleRef, *, take_over: bool = False) -> tuple[DomainInfo, Stream]:
        info = self.static.by_uuid.get(ref.uuid)
        if info is None:
            return await self.libvirt.open(ref, take_over=take_over)
        if ref.kind is not ConsoleKind.VNC:  # never minted: a static console has no serial devices
            info.serial(ref.index)
        endpoint = info.console(ref.index).endpoint
        assert isinstance(endpoint, (TcpEndpoint, UnixEndpoint))
        backend = await connect_endpoint(info.name, endpoint, self.static.connect_timeout)
        return info, Stream(backend, endpoint, follow_rfb=False)

    async def screenshot(self, uuid: str) -> tuple[str, bytes]:
        info = self.static.by_uuid.get(uuid)
        if info is not None:
            raise BrokerError(
                NO_CONSOLE,
                f"{info.name!r} is a static console (static_consoles), not a libvirt domain: it has no screenshot.",
            )
        return await self.libvirt.screenshot(uuid)

    async def still_running(self, uuid: str, run_id: int) -> bool:
        return uuid in self.static.by_uuid or await self.libvirt.still_running(uuid, run_id)

    def close(self) -> None:
        self.libvirt.close()

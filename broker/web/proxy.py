"""Honour X-Forwarded-* headers, but only from proxies we were told to trust.

A reverse proxy (nginx) tells us the scheme, host, client address and sub-path
the browser really used, so that links and the Origin check are right. From
anyone else those headers are lies and are ignored.

Written by hand because uvicorn's ProxyHeadersMiddleware knows neither
X-Forwarded-Host nor X-Forwarded-Prefix.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable

from starlette.types import ASGIApp, Receive, Scope, Send

# Peers of a UNIX socket have no address; "unix" in trusted_proxies names them.
UNIX_PEER = "unix"
# Path segments of unreserved characters only: the prefix goes into links, where `;`, `=`,
# `,` or a quote could start another parameter, attribute or value.
_SAFE_PREFIX = re.compile(r"(/[A-Za-z0-9._~-]+)*")
_SAFE_HOST = re.compile(r"[A-Za-z0-9.-]+(:[0-9]{1,5})?|\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?")


class TrustedProxies:
    def __init__(self, entries: Iterable[str]) -> None:
        self.unix = False
        self.networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in entries:
            if entry == UNIX_PEER:
                self.unix = True
            else:
                self.networks.append(ipaddress.ip_network(entry, strict=False))

    def __contains__(self, client: tuple[str, int] | None) -> bool:
        if client is None:
            return self.unix
        try:
            address = ipaddress.ip_address(client[0])
        except ValueError:
            return False
        return any(address in network for network in self.networks)


class ForwardedHeaders:
    def __init__(self, app: ASGIApp, trusted: TrustedProxies) -> None:
        self.app = app
        self.trusted = trusted

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] in ("http", "websocket") and scope.get("client") in self.trusted:
            scope = apply_forwarded(scope)
        await self.app(scope, receive, send)


def apply_forwarded(scope: Scope) -> Scope:
    """A copy of scope as the browser saw it, from a trusted proxy's X-Forwarded-* headers."""
    headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
    scope = dict(scope)

    proto = _last(headers.get("x-forwarded-proto")).lower()
    if proto in ("http", "https"):
        secure = proto == "https"
        if scope["type"] == "websocket":
            scope["scheme"] = "wss" if secure else "ws"
        else:
            scope["scheme"] = proto

    host = _last(headers.get("x-forwarded-host"))
    if host and _SAFE_HOST.fullmatch(host):
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"host"]
        scope["headers"].append((b"host", host.encode("latin-1")))

    client = _last(headers.get("x-forwarded-for"))
    if client:
        try:
            scope["client"] = (str(ipaddress.ip_address(client)), 0)
        except ValueError:
            pass

    prefix = _last(headers.get("x-forwarded-prefix")).rstrip("/")
    if prefix and _SAFE_PREFIX.fullmatch(prefix) and "//" not in prefix and "/.." not in prefix:
        # ASGI: `path` includes `root_path`; Starlette's mounts rely on it.
        scope["root_path"] = prefix + scope.get("root_path", "")
        scope["path"] = prefix + scope["path"]
        if "raw_path" in scope and scope["raw_path"] is not None:
            scope["raw_path"] = prefix.encode() + scope["raw_path"]
    return scope


def _last(value: str | None) -> str:
    """The value our proxy added: the last one in a comma-separated list."""
    return (value or "").split(",")[-1].strip()


# Set in the scope of requests that came in over the CLI socket.
CLI_SOCKET_SCOPE_KEY = "vm_console_broker.cli_socket"


class CliSocketRequests:
    """Requests that came in over the CLI socket in the state dir (see broker/state.py).

    Only root (or the broker's user) can connect there, and the CLI is no reverse proxy:
    any X-Forwarded-* header on it is dropped, so trusted_proxies = ["unix"] does not
    apply to it. Links minted through it must still work from a browser, so such a
    request is made to look as if it came to the broker's public address (`base_url`,
    e.g. http://127.0.0.1:6080; http://localhost when it listens on a UNIX socket only);
    public_url, when set, beats both (Broker.base_url).

    The CLI socket is told apart by its name: uvicorn puts the listening socket's
    getsockname() in scope["server"].
    """

    def __init__(self, app: ASGIApp, socket_name: str, base_url: str | None) -> None:
        self.app = app
        self.socket_name = socket_name
        scheme, _, rest = (base_url or "http://localhost").partition("://")
        self.scheme = scheme
        self.host = rest.split("/", 1)[0]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if scope["type"] in ("http", "websocket") and server and server[0] == self.socket_name:
            scope = self.as_public(scope)
        await self.app(scope, receive, send)

    def as_public(self, scope: Scope) -> Scope:
        scope = dict(scope)
        scope[CLI_SOCKET_SCOPE_KEY] = True
        scope["headers"] = [
            (k, v) for k, v in scope["headers"] if k.lower() != b"host" and not k.lower().startswith(b"x-forwarded-")
        ]
        scope["headers"].append((b"host", self.host.encode("latin-1")))
        if scope["type"] == "websocket":
            scope["scheme"] = "wss" if self.scheme == "https" else "ws"
        else:
            scope["scheme"] = self.scheme
        return scope

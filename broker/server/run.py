"""`broker serve`: wire settings, libvirt, tokens and the app into one uvicorn process."""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import logging.config
import os
import resource
import signal
import socket
from pathlib import Path
from typing import Any

import uvicorn

from ..access.keys import ApiKey
from ..access.pages import PASSES_FILE, PagePasses
from ..access.tokens import MemoryTokenStore, Tokens
from ..config import Settings
from ..logs import logging_config
from ..observe.audit import AuditError, AuditLog
from ..sources.consoles import LibvirtConsoles
from ..sources.graphics import parse_target
from ..sources.static import CombinedConsoles, StaticConsoles
from ..state import (
    StateError,
    bind_unix_socket,
    cli_socket_path,
    load_or_create_api_key,
    prepare_state_dir,
    remove_server_file,
    same_file,
    write_server_file,
)
from ..web.app import Broker, create_app
from ..web.ops import MetricsListener, metrics_app
from ..web.proxy import CliSocketRequests, ForwardedHeaders, TrustedProxies
from . import compat
from .httpguard import QuietLateResponses, guarded_http_protocol
from .tls import ReloadableContext, TlsError, TlsFiles, describe

log = logging.getLogger("broker.server")


def ensure_api_keys(settings: Settings) -> tuple[ApiKey, ...]:
    """Configured keys, else the host's own key file, created (0600) on first start.

    The state dir is prepared and checked first, also with configured keys (server.json
    and the CLI socket live there), and so is the key file (broker/state.py): one that
    others may write, or a key they may read, stops the broker rather than being used.
    """
    try:
        prepare_state_dir(settings.state_dir)
    except StateError as exc:
        raise SystemExit(f"broker: {exc}") from None
    if settings.api_keys:
        return settings.api_keys
    try:
        existed = settings.api_key_file.exists()
        key = load_or_create_api_key(settings.state_dir)
    except StateError as exc:
        raise SystemExit(f"broker: {exc}") from None
    if not existed:
        log.info("created an API key in %s (mode 0600)", settings.api_key_file)
    return (ApiKey.full("key1", key),)


# Descriptors one console session may hold: the browser's and the VNC server's sockets, and
# while a large update streams four more (zerocopy.py: a pipe and two dups).
FDS_PER_SESSION = 6
FDS_SPARE = 64  # libvirt, the listening socket, logs, API requests


def raise_open_files_limit(max_sessions: int) -> None:
    """Lift the soft RLIMIT_NOFILE towards the hard one: 1024, a common soft default, would
    not even hold the default max_sessions. Says so when the hard limit is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_sessions * FDS_PER_SESSION + FDS_SPARE
    ceiling = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
        log.debug("open files limit raised from %d to %d", soft, ceiling)
        soft = ceiling
    if soft != resource.RLIM_INFINITY and soft < wanted:
        log.warning(
            "open files limit is %d; max_sessions = %d may need up to %d (raise LimitNOFILE or ulimit -n)",
            soft,
            max_sessions,
            wanted,
        )


def bind_socket(settings: Settings) -> tuple[socket.socket, dict[str, str]]:
    """Bind the listening socket ourselves, so a UNIX socket has its mode and group before
    anyone can connect (and before it even appears at its path: state.bind_unix_socket)."""
    if settings.uds:
        try:
            sock = bind_unix_socket(Path(settings.uds), settings.uds_mode, settings.uds_group)
        except StateError as exc:
            raise SystemExit(f"broker: {exc}") from None
        where = {"uds": settings.uds}
    else:
        sock, url = bind_tcp(*settings.host_port)
        where = {"url": url}
    sock.listen(1024)
    sock.setblocking(False)
    return sock, where


def bind_tcp(host: str, port: int) -> tuple[socket.socket, str]:
    """A TCP socket bound to host:port, and its URL (with the port the kernel chose for 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if family == socket.AF_INET6 else host
    return sock, f"http://{shown}:{port}"


def bind_metrics_socket(settings: Settings) -> tuple[socket.socket, str] | None:
    """The `metrics_listen` listener, if configured: /metrics only, no API key (web/ops.py)."""
    address = settings.metrics_host_port
    if address is None:
        return None
    try:
        sock, url = bind_tcp(*address)
    except OSError as exc:
        raise SystemExit(f"broker: metrics_listen {settings.metrics_listen}: {exc.strerror or exc}") from None
    sock.listen(64)
    sock.setblocking(False)
    return sock, url


class BrokerServer(uvicorn.Server):
    """uvicorn would close WebSockets with 1012 and no reason; we say 1001 and why, first.

    With TLS, only the TCP listener speaks it (uvicorn would put one context on every
    socket, the CLI's too): uvicorn starts the plain ones, and we add the TLS one with the
    same protocol factory uvicorn uses (its internals: compat.py, "tls").
    """

    def __init__(
        self,
        config: uvicorn.Config,
        broker: Broker,
        tls: ReloadableContext | None = None,
        tls_socket: socket.socket | None = None,
        handshake_timeout: float = 10.0,
    ) -> None:
        super().__init__(config)
        self.broker = broker
        self.tls = tls
        self.tls_socket = tls_socket
        self.handshake_timeout = handshake_timeout

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, self.reload)
        if self.tls is None or self.tls_socket is None or sockets is None:
            await super().startup(sockets=sockets)
            return
        await super().startup(sockets=[s for s in sockets if s is not self.tls_socket])
        if not self.started:
            return
        config, loop = self.config, asyncio.get_running_loop()

        def create_protocol(_loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state, _loop=_loop
            )

        tls_server = await loop.create_server(
            create_protocol,
            sock=self.tls_socket,
            ssl=self.tls.context,
            backlog=config.backlog,
            ssl_handshake_timeout=self.handshake_timeout,  # a client that never finishes its hello
        )
        self.servers.append(tls_server)

    def reload(self) -> None:
        """SIGHUP: reopen the audit log (logrotate) and reload the TLS files; never fatal."""
        self.broker.observe.audit.reopen()
        if self.tls is not None:
            self.tls.reload()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        ended = self.broker.end_all_sessions()
        if ended:
            log.info("shutting down: closing %d console session(s)", ended)
            await asyncio.sleep(0.2)  # let the close frames go out before uvicorn closes the sockets
        await super().shutdown(sockets)
        # uvicorn re-raises SIGTERM/SIGINT after a graceful shutdown, which would kill us
        # before serve() removes server.json and the socket file; we exit with status 0.
        self._captured_signals.clear()


def load_tls(settings: Settings) -> ReloadableContext | None:
    """The TLS context from the settings' files, checked now: the broker does not start
    with a certificate it cannot serve, or a key others can read."""
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    unmet = compat.missing("tls")
    if unmet:
        raise SystemExit(
            f"broker: cannot serve TLS with {compat.versions()}: missing {', '.join(r.name for r in unmet)}"
        )
    files = TlsFiles(settings.tls_cert, settings.tls_key, settings.tls_client_ca)
    try:
        context = ReloadableContext(files)
        log.info("serving %s", describe(files))
    except TlsError as exc:
        raise SystemExit(f"broker: {exc}") from None
    return context


def serve(settings: Settings) -> None:
    logging.config.dictConfig(logging_config(settings.log_level))
    tls = load_tls(settings)
    keys = ensure_api_keys(settings)
    raise_open_files_limit(settings.limits.max_sessions)
    targets = {name: parse_target(target) for name, target in settings.static_consoles.items()}
    consoles = CombinedConsoles(
        StaticConsoles(targets),
        LibvirtConsoles(settings.connect, timeout=settings.libvirt_timeout, history_limit=settings.serial_history),
    )
    tokens = Tokens(MemoryTokenStore(), default_ttl=settings.token_ttl, max_ttl=settings.token_max_ttl)
    pages = PagePasses(window=settings.session_window, path=settings.state_dir / PASSES_FILE)
    try:
        audit = AuditLog(settings.audit_log)
    except AuditError as exc:
        raise SystemExit(f"broker: {exc}") from None
    metrics = bind_metrics_socket(settings)  # first: a taken port leaves no socket file behind
    sock, where = bind_socket(settings)
    if tls is not None:
        where["url"] = "https" + where["url"][len("http") :]
    uds_file = os.lstat(settings.uds) if settings.uds else None  # to remove only our own socket file
    broker = Broker(
        consoles,
        tokens,
        keys,
        settings.public_url,
        pages=pages,
        allowed_origins=settings.allowed_origins,
        allowed_hosts=settings.allowed_hosts,
        frame_ancestors=settings.frame_ancestors,
        limits=settings.limits,
        serial_take_over=settings.serial_take_over,
        audit=audit,
        metrics_domain_label=settings.metrics_domain_label,
    )
    warn_if_any_host_is_trusted(settings)
    cli_path = cli_socket_path(settings.state_dir)
    try:
        cli_sock = bind_unix_socket(cli_path, 0o600)
    except StateError as exc:
        sock.close()
        _remove_if_ours(settings.uds, uds_file)
        raise SystemExit(f"broker: {exc}") from None
    cli_sock.listen(64)
    cli_sock.setblocking(False)
    cli_file = os.lstat(cli_path)
    served: Any = CliSocketRequests(
        ForwardedHeaders(create_app(broker), TrustedProxies(settings.trusted_proxies)),
        cli_sock.getsockname(),
        where.get("url"),
    )
    sockets = [sock, cli_sock]
    if metrics is not None:
        sockets.append(metrics[0])
        served = MetricsListener(served, metrics[0].getsockname(), metrics_app(broker))
        log.info("metrics for scrapers without an API key on %s/metrics", metrics[1])
    app = QuietLateResponses(served)
    if audit.enabled:
        log.info("audit events to %s", settings.audit_log)
    http_protocol, ws_protocol = protocols(settings.header_timeout)
    config = uvicorn.Config(
        app,
        loop="uvloop",  # libuv's loop: markedly less CPU per relayed message (docs/benchmarks.md)
        http=http_protocol,
        ws=ws_protocol,
        ws_max_size=settings.max_message_size,
        ws_ping_interval=settings.ping_interval or None,
        ws_ping_timeout=settings.ping_timeout,
        ws_per_message_deflate=False,  # VNC encodings compress already; deflate only burns CPU
        log_config=logging_config(settings.log_level),
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=3,
    )
    server = BrokerServer(
        config, broker, tls=tls, tls_socket=sock if tls else None, handshake_timeout=settings.header_timeout
    )
    # The CLI on this host finds the broker through server.json, and talks to it only over
    # the CLI socket: a key from the state dir never goes to a TCP port someone else may hold.
    server_file = write_server_file(settings.state_dir, {**where, "cli": str(cli_path), "pid": os.getpid()})
    log.info("broker listening on %s, libvirt %s", where.get("url") or where.get("uds"), settings.connect)
    try:
        server.run(sockets=sockets)
    finally:
        consoles.close()
        audit.close()
        remove_server_file(server_file, os.getpid())
        _remove_if_ours(settings.uds, uds_file)
        _remove_if_ours(str(cli_path), cli_file)


def protocols(header_timeout: float) -> tuple[Any, Any]:
    """uvicorn's HTTP and WebSocket protocols for this installation: ours, when the library
    internals they rely on are all there (broker/server/compat.py), else uvicorn's own, said once."""
    http: Any = "h11"
    ws: Any = "websockets-sansio"
    if _internals_present(
        "httpguard",
        "serving HTTP with uvicorn's own protocol, without the header_timeout, pipelining and request-head guards",
    ):
        http = guarded_http_protocol(header_timeout)
    if _internals_present(
        "splice",
        "relaying every console through the generic ASGI relay, without the fast path and the "
        "bounds on clients that stop reading",
    ):
        from .splice import SplicingWebSocketProtocol  # leans on those internals: imported once they check out

        ws = SplicingWebSocketProtocol
    return http, ws


def _internals_present(used_by: str, otherwise: str) -> bool:
    """Whether every internal `used_by` relies on is there; if not, say what is missing once."""
    unmet = compat.missing(used_by)
    if unmet:
        log.warning("%s: missing %s; %s", compat.versions(), ", ".join(r.name for r in unmet), otherwise)
    return not unmet


def warn_if_any_host_is_trusted(settings: Settings) -> None:
    """Listening beyond loopback with neither public_url nor allowed_hosts, the broker takes
    its own origin (the Origin check) and its links' host from whatever Host a request
    names, so a DNS-rebinding page counts as the broker's own origin: say so at start."""
    if settings.uds or settings.public_url or settings.allowed_hosts:
        return
    host = settings.host_port[0]
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback:
        log.warning(
            "listening on %s with neither public_url nor allowed_hosts: any Host header is taken as the "
            "broker's own name (DNS rebinding); set public_url or allowed_hosts",
            settings.listen,
        )


def _remove_if_ours(path: str | None, ours: os.stat_result | None) -> None:
    """Remove a socket file at exit, unless another server has put its own there since."""
    if path and ours and same_file(Path(path), ours):
        Path(path).unlink(missing_ok=True)

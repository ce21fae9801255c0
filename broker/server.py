"""`broker serve`: wire settings, libvirt, tokens and the app into one uvicorn process."""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
import os
import resource
import secrets
import shutil
import socket
import stat
from pathlib import Path

import uvicorn

from .app import Broker, create_app
from .config import Settings
from .consoles import LibvirtConsoles
from .limits import QuietLateResponses, guarded_http_protocol
from .logs import logging_config
from .proxy import ForwardedHeaders, TrustedProxies
from .sessions import ConsoleSessions
from .splice import SplicingWebSocketProtocol
from .graphics import parse_target
from .static import CombinedConsoles, StaticConsoles
from .tokens import MemoryTokenStore, Tokens

log = logging.getLogger("broker.server")


def ensure_api_keys(settings: Settings) -> tuple[str, ...]:
    """Configured keys, else the host's own key file, created (0600) on first start."""
    if settings.api_keys:
        return settings.api_keys
    path = settings.api_key_file
    settings.state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        key = path.read_text().strip()
        if len(key) < 16:
            raise SystemExit(f"broker: {path} holds no usable API key; delete it to get a new one") from None
        return (key,)
    key = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    log.info("created an API key in %s (mode 0600)", path)
    return (key,)


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
            soft, max_sessions, wanted,
        )


def bind_socket(settings: Settings) -> tuple[socket.socket, dict[str, str]]:
    """Bind the listening socket ourselves, so a UNIX socket gets its mode before anyone can connect."""
    if settings.uds:
        path = Path(settings.uds)
        _remove_stale_socket(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old_umask = os.umask(0o177)
        try:
            sock.bind(str(path))
        finally:
            os.umask(old_umask)
        if settings.uds_group:
            try:
                shutil.chown(path, group=settings.uds_group)
            except (LookupError, PermissionError) as exc:
                raise SystemExit(f"broker: cannot give {path} to group {settings.uds_group!r}: {exc}") from None
        os.chmod(path, settings.uds_mode)
        where = {"uds": str(path)}
    else:
        host, port = settings.host_port
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        host, port = sock.getsockname()[:2]
        shown = f"[{host}]" if family == socket.AF_INET6 else host
        where = {"url": f"http://{shown}:{port}"}
    sock.listen(1024)
    sock.setblocking(False)
    return sock, where


def _remove_stale_socket(path: Path) -> None:
    if not path.exists():
        return
    if not stat.S_ISSOCK(path.stat().st_mode):
        raise SystemExit(f"broker: {path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # nobody listens: left over from an earlier run
    else:
        raise SystemExit(f"broker: another server already listens on {path}")
    finally:
        probe.close()


class BrokerServer(uvicorn.Server):
    """uvicorn would close WebSockets with 1012 and no reason; we say 1001 and why, first."""

    def __init__(self, config: uvicorn.Config, broker: Broker) -> None:
        super().__init__(config)
        self.broker = broker

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        ended = self.broker.end_all_sessions()
        if ended:
            log.info("shutting down: closing %d console session(s)", ended)
            await asyncio.sleep(0.2)  # let the close frames go out before uvicorn closes the sockets
        await super().shutdown(sockets)
        # uvicorn re-raises SIGTERM/SIGINT after a graceful shutdown, which would kill us
        # before serve() removes server.json and the socket file; we exit with status 0.
        self._captured_signals.clear()


def serve(settings: Settings) -> None:
    logging.config.dictConfig(logging_config(settings.log_level))
    keys = ensure_api_keys(settings)
    raise_open_files_limit(settings.limits.max_sessions)
    targets = {name: parse_target(target) for name, target in settings.static_consoles.items()}
    consoles = CombinedConsoles(StaticConsoles(targets), LibvirtConsoles(settings.connect, timeout=settings.libvirt_timeout))
    tokens = Tokens(MemoryTokenStore(), default_ttl=settings.token_ttl, max_ttl=settings.token_max_ttl)
    sessions = ConsoleSessions(MemoryTokenStore(), window=settings.session_window)
    broker = Broker(
        consoles,
        tokens,
        keys,
        settings.public_url,
        sessions=sessions,
        allowed_origins=settings.allowed_origins,
        limits=settings.limits,
    )
    app = QuietLateResponses(ForwardedHeaders(create_app(broker), TrustedProxies(settings.trusted_proxies)))
    sock, where = bind_socket(settings)
    config = uvicorn.Config(
        app,
        loop="uvloop",  # libuv's loop: markedly less CPU per relayed message (docs/benchmarks.md)
        http=guarded_http_protocol(settings.header_timeout),
        ws=SplicingWebSocketProtocol,
        ws_max_size=settings.max_message_size,
        ws_ping_interval=settings.ping_interval or None,
        ws_ping_timeout=settings.ping_timeout,
        ws_per_message_deflate=False,  # VNC encodings compress already; deflate only burns CPU
        log_config=logging_config(settings.log_level),
        server_header=False,
        proxy_headers=False,
        timeout_graceful_shutdown=3,
    )
    server = BrokerServer(config, broker)
    server_file = _write_server_file(settings, where)
    log.info("broker listening on %s, libvirt %s", where.get("url") or where.get("uds"), settings.connect)
    try:
        server.run(sockets=[sock])
    finally:
        consoles.close()
        _remove_server_file(server_file)
        if settings.uds:
            Path(settings.uds).unlink(missing_ok=True)


def _write_server_file(settings: Settings, where: dict[str, str]) -> Path:
    path = settings.server_file
    path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({**where, "pid": os.getpid()}) + "\n")
    tmp.replace(path)
    return path


def _remove_server_file(path: Path) -> None:
    try:
        if json.loads(path.read_text()).get("pid") == os.getpid():
            path.unlink()
    except (OSError, ValueError):
        pass

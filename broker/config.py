"""One settings object, from a TOML file, the environment and flags, validated once.

Precedence: command-line flag > environment (BROKER_<NAME>) > config file > default.
"""

from __future__ import annotations

import ipaddress
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .access.keys import ApiKey, parse_keys
from .access.limits import SessionLimits
from .access.tokens import MIN_TTL
from .sources.graphics import parse_target

DEFAULT_STATE_DIR = Path("/var/lib/vm-console-broker")


class ConfigError(ValueError):
    """A setting is missing or wrong; the message names it."""


@dataclass(frozen=True)
class Settings:
    listen: str = "127.0.0.1:6080"
    uds: str | None = None
    uds_mode: int = 0o660
    uds_group: str | None = None
    connect: str = "qemu:///system"
    # The deadline of every libvirt call made for a request (a hung libvirtd must not hang us).
    libvirt_timeout: float = 5.0
    state_dir: Path = DEFAULT_STATE_DIR
    public_url: str | None = None
    api_keys: tuple[ApiKey, ...] = ()
    token_ttl: float = 60.0
    token_max_ttl: float = 600.0
    session_window: float = 600.0
    trusted_proxies: tuple[str, ...] = ("unix",)
    allowed_origins: tuple[str, ...] = ()
    allowed_hosts: tuple[str, ...] = ()
    # Panel origins that may show the console page in an iframe (CSP frame-ancestors).
    frame_ancestors: tuple[str, ...] = ()
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    max_message_size: int = 1024 * 1024
    log_level: str = "info"
    # Defaults live in one place: SessionLimits.
    max_sessions: int = SessionLimits.max_sessions
    max_viewers: int = SessionLimits.max_viewers
    max_pending: int = SessionLimits.max_pending
    header_timeout: float = 10.0
    idle_timeout: float = SessionLimits.idle_timeout
    max_session_length: float = SessionLimits.max_session_length
    mint_rate: float = SessionLimits.mint_rate
    mint_burst: int = SessionLimits.mint_burst
    screenshot_cache: float = SessionLimits.screenshot_cache
    screenshot_rate: float = SessionLimits.screenshot_rate
    # Serial consoles: may links force a busy console over (each link says so too), and how
    # many bytes of a console's log are replayed on attach (0: none).
    serial_take_over: bool = True
    serial_history: int = 64 * 1024
    # TLS on the TCP listener (broker/server/tls.py checks the files at start): certificate
    # and key together; with a client CA, only clients holding a certificate from it connect.
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_client_ca: Path | None = None

    @property
    def limits(self) -> SessionLimits:
        return SessionLimits(**{f.name: getattr(self, f.name) for f in fields(SessionLimits)})

    static_consoles: Mapping[str, str] = field(default_factory=dict)
    # Operating it (README): the audit trail, and where Prometheus may scrape without a key.
    audit_log: str | None = None
    metrics_listen: str | None = None
    metrics_domain_label: bool = False

    @property
    def metrics_host_port(self) -> tuple[str, int] | None:
        if not self.metrics_listen:
            return None
        host, _, port = self.metrics_listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def api_key_file(self) -> Path:
        return self.state_dir / "api-key"

    @property
    def server_file(self) -> Path:
        """Where a running server says how to reach it, for the CLI on the same host."""
        return self.state_dir / "server.json"


_NAMES = {f.name for f in fields(Settings)}


def load_settings(
    config_file: str | os.PathLike[str] | None = None,
    environ: Mapping[str, str] | None = None,
    **flags: Any,
) -> Settings:
    environ = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    config_file = config_file or environ.get("BROKER_CONFIG")
    if config_file:
        raw.update(_read_file(Path(config_file)))
    for name in _NAMES:
        value = environ.get(f"BROKER_{name.upper()}")
        if value is not None and value != "":
            raw[name] = value
    given = {k: v for k, v in flags.items() if v is not None}
    if "listen" in given:
        raw.pop("uds", None)  # --listen on the command line beats a socket from env or file
    raw.update(given)
    return _validate(raw)


def _read_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - _NAMES
    if unknown:
        raise ConfigError(f"config file {path}: unknown setting(s) {', '.join(sorted(unknown))}")
    return data


def _validate(raw: dict[str, Any]) -> Settings:
    s = Settings()
    try:
        s = replace(
            s,
            listen=str(raw.get("listen", s.listen)),
            uds=str(raw["uds"]) if raw.get("uds") else None,
            uds_mode=_mode(raw.get("uds_mode", s.uds_mode)),
            uds_group=str(raw["uds_group"]) if raw.get("uds_group") else None,
            connect=str(raw.get("connect", s.connect)),
            libvirt_timeout=_positive("libvirt_timeout", raw.get("libvirt_timeout", s.libvirt_timeout)),
            state_dir=Path(str(raw.get("state_dir", s.state_dir))),
            public_url=str(raw["public_url"]).rstrip("/") if raw.get("public_url") else None,
            api_keys=parse_keys(raw.get("api_keys", ())),
            token_ttl=_positive("token_ttl", raw.get("token_ttl", s.token_ttl)),
            token_max_ttl=_positive("token_max_ttl", raw.get("token_max_ttl", s.token_max_ttl)),
            session_window=_positive("session_window", raw.get("session_window", s.session_window)),
            trusted_proxies=_proxies(raw.get("trusted_proxies", s.trusted_proxies)),
            allowed_origins=_origins(raw.get("allowed_origins", s.allowed_origins)),
            allowed_hosts=_hosts(raw.get("allowed_hosts", s.allowed_hosts)),
            frame_ancestors=_frame_ancestors(raw.get("frame_ancestors", s.frame_ancestors)),
            ping_interval=_non_negative("ping_interval", raw.get("ping_interval", s.ping_interval)),
            ping_timeout=_positive("ping_timeout", raw.get("ping_timeout", s.ping_timeout)),
            max_message_size=int(_positive("max_message_size", raw.get("max_message_size", s.max_message_size))),
            log_level=str(raw.get("log_level", s.log_level)).lower(),
            static_consoles=_static_consoles(raw.get("static_consoles", {})),
            max_sessions=_count("max_sessions", raw.get("max_sessions", s.max_sessions)),
            max_viewers=_count("max_viewers", raw.get("max_viewers", s.max_viewers)),
            max_pending=_count("max_pending", raw.get("max_pending", s.max_pending)),
            header_timeout=_positive("header_timeout", raw.get("header_timeout", s.header_timeout)),
            idle_timeout=_non_negative("idle_timeout", raw.get("idle_timeout", s.idle_timeout)),
            max_session_length=_non_negative("max_session_length", raw.get("max_session_length", s.max_session_length)),
            mint_rate=_positive("mint_rate", raw.get("mint_rate", s.mint_rate)),
            mint_burst=_count("mint_burst", raw.get("mint_burst", s.mint_burst)),
            screenshot_cache=_non_negative("screenshot_cache", raw.get("screenshot_cache", s.screenshot_cache)),
            screenshot_rate=_positive("screenshot_rate", raw.get("screenshot_rate", s.screenshot_rate)),
            serial_take_over=_bool("serial_take_over", raw.get("serial_take_over", s.serial_take_over)),
            serial_history=_bytes("serial_history", raw.get("serial_history", s.serial_history)),
            audit_log=str(raw["audit_log"]) if raw.get("audit_log") else None,
            metrics_listen=str(raw["metrics_listen"]) if raw.get("metrics_listen") else None,
            metrics_domain_label=_bool("metrics_domain_label", raw.get("metrics_domain_label", False)),
            tls_cert=_path(raw.get("tls_cert")),
            tls_key=_path(raw.get("tls_key")),
            tls_client_ca=_path(raw.get("tls_client_ca")),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(str(exc)) from None
    if not s.uds:
        try:
            host, port = s.host_port
        except ValueError:
            host, port = "", 0
        if not host or not 0 < port < 65536:
            raise ConfigError(f"listen must be HOST:PORT with a port from 1 to 65535, got {s.listen!r}")
    if s.metrics_listen:
        try:
            mhost, mport = s.metrics_host_port or ("", 0)
        except ValueError:
            mhost, mport = "", 0
        if not mhost or not 0 < mport < 65536:
            raise ConfigError(f"metrics_listen must be HOST:PORT with a port from 1 to 65535, got {s.metrics_listen!r}")
    if s.token_ttl < MIN_TTL:
        raise ConfigError(f"token_ttl must be at least {MIN_TTL:g} s, got {s.token_ttl:g}")
    if s.token_ttl > s.token_max_ttl:
        raise ConfigError(f"token_ttl ({s.token_ttl:g}) is larger than token_max_ttl ({s.token_max_ttl:g})")
    if s.public_url and not s.public_url.startswith(("http://", "https://")):
        raise ConfigError(f"public_url must start with http:// or https://, got {s.public_url!r}")
    _check_tls(s)
    if s.log_level not in {"critical", "error", "warning", "info", "debug"}:
        raise ConfigError(f"log_level must be one of critical, error, warning, info, debug; got {s.log_level!r}")
    return s


def _path(value: Any) -> Path | None:
    return Path(str(value)) if value not in (None, "") else None


def _check_tls(s: Settings) -> None:
    """The TLS settings fit together; their files are checked when the server starts."""
    if s.tls_cert and not s.tls_key:
        raise ConfigError("tls_cert is set but tls_key is not: give the certificate's private key too")
    if s.tls_key and not s.tls_cert:
        raise ConfigError("tls_key is set but tls_cert is not: give the certificate too")
    if s.tls_client_ca and not s.tls_cert:
        raise ConfigError("tls_client_ca needs tls_cert and tls_key: client certificates are asked for over TLS")
    if s.tls_cert and s.uds:
        raise ConfigError("tls_cert applies to the TCP listener (listen); the UNIX socket (uds) serves plain HTTP")


def _number(name: str, value: Any) -> float:
    """A finite number, from TOML or from an environment string; never a bool."""
    try:
        if isinstance(value, bool):
            raise ValueError
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    return number


def _positive(name: str, value: Any) -> float:
    number = _number(name, value)
    if not number > 0:
        raise ValueError(f"{name} must be greater than 0, got {value!r}")
    return number


def _non_negative(name: str, value: Any) -> float:
    number = _number(name, value)
    if number < 0:
        raise ValueError(f"{name} must be 0 (off) or more, got {value!r}")
    return number


def _count(name: str, value: Any) -> int:
    number = _positive(name, value)
    if number != int(number):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def _bytes(name: str, value: Any) -> int:
    number = _non_negative(name, value)
    if number != int(number):
        raise ValueError(f"{name} must be a whole number of bytes, got {value!r}")
    return int(number)


def _bool(name: str, value: Any) -> bool:
    """true/false from TOML, or from an environment string (true, false, 1, 0, yes, no)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in {"true", "1", "yes", "on"}:
        return True
    if text in {"false", "0", "no", "off"}:
        return False
    raise ValueError(f"{name} must be true or false, got {value!r}")


def _mode(value: Any) -> int:
    try:
        mode = value if isinstance(value, int) and not isinstance(value, bool) else int(str(value), 8)
    except ValueError:
        raise ValueError(f"uds_mode must be an octal file mode like 660, got {value!r}") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"uds_mode must be an octal file mode like 660, got {value!r}")
    return mode


def _list(value: Any) -> tuple[str, ...]:
    """A TOML list, or a comma-separated string from the environment."""
    if isinstance(value, str):
        value = value.split(",")
    return tuple(str(v).strip() for v in value if str(v).strip())


def _proxies(value: Any) -> tuple[str, ...]:
    entries = _list(value)
    for entry in entries:
        if entry != "unix":
            try:
                ipaddress.ip_network(entry, strict=False)
            except ValueError:
                raise ValueError(f"trusted_proxies: {entry!r} is neither an IP address, a network nor 'unix'") from None
    return entries


def _origins(value: Any) -> tuple[str, ...]:
    origins = _list(value)
    for origin in origins:
        if not origin.startswith(("http://", "https://")) or origin.count("/") > 2:
            raise ValueError(f"allowed_origins: {origin!r} is not an origin like https://panel.example.com")
    return origins


# scheme://host[:port]: no path, no wildcard, nothing a CSP source list would read as a
# second source or a keyword (space, semicolon, comma, quote).
_ORIGIN_PATTERN = re.compile(r"https?://([A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?")


def _frame_ancestors(value: Any) -> tuple[str, ...]:
    """Origins of panels that may embed the console page; each goes into the page's CSP."""
    origins = tuple(origin.rstrip("/") for origin in _list(value))
    for origin in origins:
        if not _ORIGIN_PATTERN.fullmatch(origin):
            raise ValueError(
                f"frame_ancestors: {origin!r} is not an origin like https://panel.example.com (scheme, host, port)"
            )
    return origins


_HOST_PATTERN = re.compile(r"(\*\.)?[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*|\[[0-9A-Fa-f:.]+\]")


def _hosts(value: Any) -> tuple[str, ...]:
    """Host names (no port) the broker answers to; `*.example.com` for every subdomain,
    IPv6 addresses in brackets as in a Host header."""
    hosts = _list(value)
    for host in hosts:
        if not _HOST_PATTERN.fullmatch(host):
            raise ValueError(f"allowed_hosts: {host!r} is not a host name like console.example.com or *.example.com")
    return hosts


def _static_consoles(value: Any) -> dict[str, str]:
    """A TOML table name = "tcp:HOST:PORT" | "unix:/PATH", or `name=target,…` from the environment."""
    if isinstance(value, str):
        pairs = [item.split("=", 1) for item in _list(value)]
        if any(len(pair) != 2 for pair in pairs):
            raise ValueError("static_consoles must be a list of NAME=tcp:HOST:PORT or NAME=unix:/PATH")
        value = {name.strip(): target.strip() for name, target in pairs}
    if not isinstance(value, dict):
        raise ValueError('static_consoles must be a table of NAME = "tcp:HOST:PORT" or "unix:/PATH"')
    for name, target in value.items():
        if not name or "/" in name:
            raise ValueError(f"static_consoles: {name!r} is not a usable console name")
        try:
            parse_target(str(target))
        except ValueError as exc:
            raise ValueError(f"static_consoles.{name}: {exc}") from None
    return {str(name): str(target) for name, target in value.items()}

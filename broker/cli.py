"""`broker`: run the server, or ask a running one for tokens and domains.

Thin by design: every command but `serve` is one REST call, printed as text or --json.
On the same host it finds the server (state_dir/server.json) and the API key
(state_dir/api-key) by itself.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote


from . import __version__
from .config import ConfigError, Settings, load_settings

DEFAULT_SERVER = "http://127.0.0.1:6080"


class CliError(Exception):
    """Printed to stderr as `broker: <message>`, exit status 1."""


def main(argv: list[str] | None = None) -> NoReturn:
    args = _parser().parse_args(argv)
    try:
        status = args.run(args)
    except (CliError, ConfigError) as exc:
        print(f"broker: {exc}", file=sys.stderr)
        status = 1
    except KeyboardInterrupt:
        status = 130
    sys.exit(status)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="broker", description="VM console broker for libvirt/QEMU hosts.")
    parser.add_argument("--version", action="version", version=f"broker {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the broker (REST API + WebSocket relay)")
    where = serve.add_mutually_exclusive_group()
    where.add_argument("--listen", metavar="HOST:PORT", help="TCP address (default 127.0.0.1:6080)")
    where.add_argument("--uds", metavar="PATH", help="listen on a UNIX socket instead of TCP")
    serve.add_argument("--connect", metavar="URI", help="libvirt URI (default qemu:///system)")
    serve.add_argument("--config", metavar="FILE", help="TOML config file (also BROKER_CONFIG)")
    serve.set_defaults(run=_serve)

    token = commands.add_parser("token", help="mint a console link for a domain")
    token.add_argument("domain", metavar="DOMAIN", help="domain name or UUID")
    token.add_argument("--ttl", type=_seconds, metavar="SECONDS", help="lifetime (default: the server's, 60 s)")
    token.add_argument("--graphics", type=int, metavar="INDEX", help="graphics device index (default: first VNC)")
    _client_options(token)
    token.set_defaults(run=_token)

    domains = commands.add_parser("domains", help="list domains and their consoles")
    _client_options(domains)
    domains.set_defaults(run=_domains)
    return parser


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number of seconds greater than 0, got {text!r}")
    return value


def _client_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON")
    parser.add_argument("--server", metavar="URL", help="broker URL, or unix:/path/to.sock (default: found locally)")
    parser.add_argument("--config", metavar="FILE", help="TOML config file (also BROKER_CONFIG)")


# -- commands ----------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from .server import serve  # imports libvirt and uvicorn: only for this command

    serve(load_settings(args.config, listen=args.listen, uds=args.uds, connect=args.connect))
    return 0


def _token(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.ttl is not None:
        body["ttl"] = args.ttl
    if args.graphics is not None:
        body["graphics"] = args.graphics
    result = _call(args, "POST", f"/api/v1/domains/{quote(args.domain, safe='')}/console", body)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(result["console_url"])
        print(f"(for {result['domain']['name']}, single use, valid until {result['expires_at']})", file=sys.stderr)
    return 0


def _domains(args: argparse.Namespace) -> int:
    result = _call(args, "GET", "/api/v1/domains")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rows = [("NAME", "STATE", "CONSOLE")]
    for domain in result["domains"]:
        console = domain.get("console_unavailable") or ", ".join(
            c["endpoint"] for c in domain["consoles"] if "endpoint" in c
        )
        rows.append((domain["name"], domain["state"], console))
    widths = [max(len(row[i]) for row in rows) for i in range(2)]
    for name, state, console in rows:
        print(f"{name:<{widths[0]}}  {state:<{widths[1]}}  {console}")
    return 0


# -- talking to the server ---------------------------------------------------------------


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    settings = load_settings(args.config)
    server = args.server or os.environ.get("BROKER_SERVER") or _local_server(settings)
    key = os.environ.get("BROKER_API_KEY") or _local_key(settings)
    import httpx  # here, not at the top: `broker serve` never needs it (~8 MiB of modules)

    if server.startswith("unix:"):
        transport = httpx.HTTPTransport(uds=server[len("unix:"):])
        base = "http://localhost"
    else:
        transport, base = None, server.rstrip("/")
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=base, transport=transport, headers=headers, timeout=15) as client:
            response = client.request(method, path, json=body)
    except httpx.TransportError as exc:
        raise CliError(f"cannot reach the broker at {server} ({exc}); is `broker serve` running?") from None
    except httpx.InvalidURL as exc:
        raise CliError(f"{server!r} is not a usable server URL ({exc})") from None
    try:
        payload = response.json()
    except ValueError:
        raise CliError(f"the broker at {server} answered {response.status_code} without JSON") from None
    if response.is_error:
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        raise CliError(f"{error.get('message', 'request failed')} [{error.get('code', response.status_code)}]")
    return payload


def _local_server(settings: Settings) -> str:
    try:
        where = json.loads(settings.server_file.read_text())
    except (OSError, ValueError):
        return DEFAULT_SERVER
    if not isinstance(where, dict):
        return DEFAULT_SERVER
    if where.get("uds"):
        return f"unix:{where['uds']}"
    return str(where.get("url") or DEFAULT_SERVER)


def _local_key(settings: Settings) -> str:
    if settings.api_keys:
        return settings.api_keys[0]
    path: Path = settings.api_key_file
    try:
        return path.read_text().strip()
    except PermissionError:
        raise CliError(f"cannot read the API key in {path}: run as root or set BROKER_API_KEY") from None
    except OSError:
        raise CliError(
            f"no API key: {path} does not exist (start `broker serve` once, or set BROKER_API_KEY)"
        ) from None

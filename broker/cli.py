"""`broker`: run the server, or ask a running one for tokens and domains.

Thin by design: every command but `serve` is one REST call, printed as text or --json.
On the same host it finds the broker by itself, through state_dir/server.json and the
broker's private socket state_dir/cli.sock, and uses the key in state_dir/api-key over
that socket only (broker/state.py says why). Elsewhere: --server URL and BROKER_API_KEY.

What a server says is printed through terminal_safe(): a domain may be named with
control or bidi characters, and those must not reach the terminal as such.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import sys
from collections.abc import Iterator
from typing import Any, NoReturn
from urllib.parse import quote

from . import __version__
from .config import ConfigError, Settings, load_settings
from .state import NotRunning, StateError, cli_socket_path, connect_cli_socket, read_api_key
from .terminal import terminal_safe


class CliError(Exception):
    """Printed to stderr as `broker: <message>`, exit status 1."""


def main(argv: list[str] | None = None) -> NoReturn:
    args = _parser().parse_args(argv)
    try:
        status = args.run(args)
    except (CliError, ConfigError, StateError) as exc:
        print(f"broker: {terminal_safe(str(exc))}", file=sys.stderr)
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
    kind = token.add_mutually_exclusive_group()
    kind.add_argument("--graphics", type=int, metavar="INDEX", help="graphics device index (default: first VNC)")
    kind.add_argument(
        "--serial",
        nargs="?",
        const="",
        metavar="ALIAS",
        help="a serial console instead, by alias (serial0, console1, …) or index (default: the first)",
    )
    token.add_argument("--no-take-over", action="store_true", help="serial: the link may not force a busy console over")
    _client_options(token)
    token.set_defaults(run=_token)

    domains = commands.add_parser("domains", help="list domains and their consoles")
    _client_options(domains)
    domains.set_defaults(run=_domains)

    sessions = commands.add_parser("sessions", help="list the live console sessions, newest first")
    sessions.add_argument("domain", metavar="DOMAIN", nargs="?", help="only this domain's (name or UUID)")
    _client_options(sessions)
    sessions.set_defaults(run=_sessions)

    kill = commands.add_parser("kill", help="end a live console session (its browser is told why)")
    kill.add_argument("session", metavar="SESSION_ID", help="an id from `broker sessions`")
    _client_options(kill)
    kill.set_defaults(run=_kill)
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
    parser.add_argument(
        "--server",
        metavar="URL",
        help="broker URL, or unix:/path/to.sock; needs BROKER_API_KEY (default: the local broker, via the state dir)",
    )
    parser.add_argument("--config", metavar="FILE", help="TOML config file (also BROKER_CONFIG)")


# -- commands ----------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from .server.run import serve  # imports libvirt and uvicorn: only for this command

    serve(load_settings(args.config, listen=args.listen, uds=args.uds, connect=args.connect))
    return 0


def _token(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {}
    if args.ttl is not None:
        body["ttl"] = args.ttl
    if args.graphics is not None:
        body["graphics"] = args.graphics
    if args.serial is not None:
        body["kind"] = "serial"
        if args.serial:
            body["console"] = int(args.serial) if args.serial.isdigit() else args.serial
        if args.no_take_over:
            body["take_over"] = False
    elif args.no_take_over:
        raise SystemExit("broker token: --no-take-over goes with --serial")
    result = _call(args, "POST", f"/api/v1/domains/{quote(args.domain, safe='')}/console", body)
    if args.json:
        print(json.dumps(result, indent=2))  # ensure_ascii: every control or bidi character is a \u escape
        return 0
    with _answer_shape():
        fields = (result["console_url"], result["domain"]["name"], result["expires_at"])
        url, name, expires = (terminal_safe(str(value)) for value in fields)
    print(url)
    print(f"(for {name}, single use, valid until {expires})", file=sys.stderr)
    return 0


def _domains(args: argparse.Namespace) -> int:
    result = _call(args, "GET", "/api/v1/domains")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rows = [("NAME", "STATE", "CONSOLE", "SERIAL")]
    with _answer_shape():
        for domain in result["domains"]:
            console = domain.get("console_unavailable") or ", ".join(
                str(c["endpoint"]) for c in domain["consoles"] if "endpoint" in c
            )
            name, state = terminal_safe(str(domain["name"])), terminal_safe(str(domain["state"]))
            serial = _serial_column(domain.get("serial_consoles", []))
            rows.append((name, state, terminal_safe(str(console)), terminal_safe(serial)))
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    for name, state, console, serial in rows:
        print(f"{name:<{widths[0]}}  {state:<{widths[1]}}  {console:<{widths[2]}}  {serial}".rstrip())
    return 0


def _serial_column(consoles: list[dict[str, Any]]) -> str:
    """serial0 (history), console1, serial2: <why not>"""
    shown = []
    for console in consoles:
        text = str(console["alias"])
        if console.get("unavailable"):
            text += f": {console['unavailable']}"
        elif console.get("history"):
            text += " (history)"
        shown.append(text)
    return ", ".join(shown) or "-"


def _sessions(args: argparse.Namespace) -> int:
    path = "/api/v1/sessions"
    if args.domain is not None:
        path += f"?domain={quote(args.domain, safe='')}"
    result = _call(args, "GET", path)
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    rows: list[tuple[str, ...]] = [("ID", "DOMAIN", "KIND", "CLIENT", "KEY", "SINCE", "TO BROWSER", "FROM IT")]
    with _answer_shape():
        for session in result["sessions"]:
            fields = (
                session["id"],
                session["domain"]["name"],
                session["kind"],
                session["client"],
                session["key"],
                _since(str(session["started_at"])),
                _size(int(session["bytes_to_browser"])),
                _size(int(session["bytes_from_browser"])),
            )
            rows.append(tuple(terminal_safe(str(value)) for value in fields))
    if len(rows) == 1:
        print("no live console sessions" + (f" for {terminal_safe(args.domain)}" if args.domain else ""))
        return 0
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip())
    return 0


def _kill(args: argparse.Namespace) -> int:
    result = _call(args, "DELETE", f"/api/v1/sessions/{quote(args.session, safe='')}")
    if args.json:
        print(json.dumps(result, indent=2))
        return 0
    with _answer_shape():
        session = result["session"]
        fields = (session["id"], session["domain"]["name"], session["client"])
        session_id, name, client = (terminal_safe(str(value)) for value in fields)
    print(f"ended console session {session_id} on {name} from {client}")
    return 0


def _since(started_at: str) -> str:
    """`12:03:44 (5m ago)`, in the local time zone; the raw value if it is not a timestamp."""
    from datetime import datetime

    try:
        started = datetime.fromisoformat(started_at)
    except ValueError:
        return started_at
    seconds = max(0, int((datetime.now(started.tzinfo) - started).total_seconds()))
    if seconds < 60:
        ago = f"{seconds}s"
    elif seconds < 3600:
        ago = f"{seconds // 60}m"
    elif seconds < 86400:
        ago = f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    else:
        ago = f"{seconds // 86400}d{seconds % 86400 // 3600}h"
    return f"{started.astimezone().strftime('%H:%M:%S')} ({ago} ago)"


def _size(count: int) -> str:
    if count < 1024:
        return f"{count} B"
    value, unit = count / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"


@contextlib.contextmanager
def _answer_shape() -> Iterator[None]:
    """An answer that is JSON but not what a broker sends is one line, not a traceback."""
    try:
        yield
    except (KeyError, TypeError, AttributeError, ValueError):
        raise CliError("the broker's answer was not understood (is that a broker?)") from None


# -- talking to the server ---------------------------------------------------------------

TIMEOUT = 15.0
NOT_RUNNING_HINT = "start `broker serve`, or point at a broker elsewhere with --server URL and BROKER_API_KEY"


def _call(args: argparse.Namespace, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
    """One REST call. Without --server/BROKER_SERVER: only over the local broker's CLI socket
    (checked by state.connect_cli_socket before any key is sent), never a guessed URL. With
    one: only with a key from BROKER_API_KEY or the config, never the state dir's key file."""
    settings = load_settings(args.config)
    server = args.server or os.environ.get("BROKER_SERVER")
    if server:
        key = os.environ.get("BROKER_API_KEY") or _config_key(settings)
        if not key:
            raise CliError(
                f"--server (or BROKER_SERVER) needs BROKER_API_KEY: the key in {settings.api_key_file} "
                "is only ever sent to the local broker, over its socket in the state dir"
            )
        where = server
        status, data = _remote_request(server, key, method, path, body)
    else:
        where = f"unix:{cli_socket_path(settings.state_dir)}"
        status, data = _local_request(settings, method, path, body)
    try:
        payload = json.loads(data)
    except ValueError:
        raise CliError(f"the broker at {where} answered {status} without JSON") from None
    if status >= 400:
        error = payload.get("error", {}) if isinstance(payload, dict) else {}
        error = error if isinstance(error, dict) else {}
        raise CliError(f"{error.get('message', 'request failed')} [{error.get('code', status)}]")
    return payload


def _config_key(settings: Settings) -> str | None:
    """The first API key the config gives in the clear (a digest cannot be sent)."""
    return next((key.secret for key in settings.api_keys if key.secret), None)


def _local_request(settings: Settings, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
    import http.client  # light, unlike httpx; it takes the socket we verified

    try:
        sock, owner = connect_cli_socket(settings.state_dir, TIMEOUT)
    except NotRunning as exc:
        raise CliError(f"the broker is not running: {exc}; {NOT_RUNNING_HINT}") from None
    except StateError as exc:
        raise CliError(f"{exc} (to use a broker elsewhere: --server URL with BROKER_API_KEY)") from None
    try:
        key = os.environ.get("BROKER_API_KEY") or _config_key(settings)
        if not key:
            if settings.api_keys:
                raise CliError("the config gives its API keys as sha256 digests only: set BROKER_API_KEY")
            key = read_api_key(settings.api_key_file, owner)
    except StateError as exc:
        sock.close()
        raise CliError(f"{exc}: run as root (or as the broker's user), or set BROKER_API_KEY") from None
    except BaseException:
        sock.close()
        raise
    connection = http.client.HTTPConnection("localhost", timeout=TIMEOUT)
    connection.sock = sock  # so the key goes exactly where SO_PEERCRED was checked
    headers = {"Authorization": f"Bearer {key}", "Accept": "application/json"}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        return response.status, response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise CliError(f"the local broker broke off the request ({exc})") from None
    finally:
        connection.close()


def _remote_request(server: str, key: str, method: str, path: str, body: dict[str, Any] | None) -> tuple[int, bytes]:
    import httpx  # here, not at the top: `broker serve` never needs it (~8 MiB of modules)

    if server.startswith("unix:"):
        transport = httpx.HTTPTransport(uds=server[len("unix:") :])
        base = "http://localhost"
    else:
        transport, base = None, server.rstrip("/")
    headers = {"Authorization": f"Bearer {key}"}
    try:
        with httpx.Client(base_url=base, transport=transport, headers=headers, timeout=TIMEOUT) as client:
            response = client.request(method, path, json=body)
    except httpx.TransportError as exc:
        raise CliError(f"cannot reach the broker at {server} ({exc}); is `broker serve` running?") from None
    except httpx.InvalidURL as exc:
        raise CliError(f"{server!r} is not a usable server URL ({exc})") from None
    return response.status_code, response.content

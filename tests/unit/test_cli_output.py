"""What a server says reaches the terminal escaped (security review, issue 10 item 2).

Domain names, states, endpoints, error messages and URLs come from the server (and a
domain's name from whoever defined it): control characters (C0, DEL, C1), bidi and other
format characters must not reach the terminal as such. --json is safe as it is:
json.dumps escapes everything outside printable ASCII.
"""

from __future__ import annotations

import json
import threading
import unicodedata
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from broker.cli import main
from broker.terminal import terminal_safe
from support.processes import BrokerProcess, start_broker
from unit_support import API_KEY

ESC_RED = "\x1b[31m"
NASTY = [
    "\x1b]0;pwned\x07",  # OSC: sets the window title
    "\x1b[2J\x1b[H",  # CSI: clears the screen
    "\r",
    "\t",
    "\x7f",
    "\x9b31m",  # C1 CSI: one byte in 8-bit terminals
    "\u202e",  # RIGHT-TO-LEFT OVERRIDE
    "\u2066",  # LEFT-TO-RIGHT ISOLATE
    "\u2069",  # POP DIRECTIONAL ISOLATE
    "\u200e",  # LEFT-TO-RIGHT MARK
    "\u200f",  # RIGHT-TO-LEFT MARK
    "\u061c",  # ARABIC LETTER MARK
    "\u2028",  # LINE SEPARATOR
    "\ud800",  # a lone surrogate: JSON may carry one, print() cannot encode it
]


def is_terminal_safe(text: str) -> bool:
    return all(c == "\n" or unicodedata.category(c) not in {"Cc", "Cf", "Zl", "Zp", "Cs"} for c in text)


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        ("vm1", "vm1"),
        ("née-日本-vm", "née-日本-vm"),
        ("a b", "a b"),
        (f"{ESC_RED}red", "\\x1b[31mred"),
        ("a\rb\tc\nd", "a\\x0db\\x09c\\x0ad"),
        ("del\x7f", "del\\x7f"),
        ("c1\x9b31m", "c1\\x9b31m"),
        ("invoice\u202egpj.exe", "invoice\\u202egpj.exe"),
        ("\u2066iso\u2069", "\\u2066iso\\u2069"),
        ("\u200e\u200f\u061c", "\\u200e\\u200f\\u061c"),
        ("tag\U000e0041", "tag\\U000e0041"),
        ("lone\ud800", "lone\\ud800"),
    ],
)
def test_terminal_safe(raw: str, shown: str) -> None:
    assert terminal_safe(raw) == shown
    assert is_terminal_safe(terminal_safe(raw))


@pytest.mark.parametrize("nasty", NASTY)
def test_json_output_needs_no_sanitising(nasty: str) -> None:
    shown = json.dumps({"name": f"vm{nasty}"}, indent=2)
    assert shown.isascii() and is_terminal_safe(shown)
    assert json.loads(shown)["name"] == f"vm{nasty}"


# -- against a server that says anything --------------------------------------------------


class Script:
    status = 200
    body: object = {}


@pytest.fixture
def fake_server(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[type[Script]]:
    """A server that answers every request with Script.status and Script.body."""

    class Handler(BaseHTTPRequestHandler):
        def answer(self) -> None:
            self.rfile.read(int(self.headers.get("content-length") or 0))
            payload = json.dumps(Script.body).encode()
            self.send_response(Script.status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        do_GET = do_POST = do_DELETE = answer

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("BROKER_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("BROKER_API_KEY", API_KEY)
    monkeypatch.setenv("BROKER_SERVER", f"http://127.0.0.1:{server.server_address[1]}")
    Script.status, Script.body = 200, {}
    yield Script
    server.shutdown()
    server.server_close()


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def test_domains_text_escapes_every_field(capsys, fake_server) -> None:
    fake_server.body = {
        "domains": [
            {
                "name": f"vm{nasty}x",
                "state": f"running{nasty}",
                "consoles": [{"index": 0, "endpoint": f"vnc://{nasty}"}],
            }
            for nasty in NASTY
        ]
        + [{"name": "off", "state": "shutoff", "consoles": [], "console_unavailable": f"{ESC_RED}not running"}]
    }
    status, out, err = run(capsys, "domains")
    assert (status, err) == (0, "")
    assert is_terminal_safe(out)
    lines = out.splitlines()
    assert len(lines) == 1 + len(NASTY) + 1  # a CR or LINE SEPARATOR in a name makes no extra line
    assert lines[1].startswith("vm\\x1b]0;pwned\\x07x ")
    assert "vm\\u202ex " in out and "running\\x9b31m " in out and "vnc://\\x1b[2J\\x1b[H" in out
    assert "\\x1b[31mnot running " in lines[-1] and lines[-1].endswith(" -")  # escaped; no serial console
    # The columns still line up, on the escaped text.
    assert len({line.index(line.split()[1]) for line in lines}) == 1


def test_domains_json_escapes_every_field(capsys, fake_server) -> None:
    fake_server.body = {"domains": [{"name": f"vm{nasty}", "state": "running", "consoles": []} for nasty in NASTY]}
    status, out, _ = run(capsys, "domains", "--json")
    assert status == 0
    assert out.isascii() and is_terminal_safe(out)
    assert [d["name"] for d in json.loads(out)["domains"]] == [f"vm{nasty}" for nasty in NASTY]


def test_token_text_escapes_the_link_the_name_and_the_expiry(capsys, fake_server) -> None:
    fake_server.status = 201
    fake_server.body = {
        "token": "t",
        "console_url": f"http://h/console?token=t{ESC_RED}\u202e",
        "websocket_url": "ws://h/websockify?token=t",
        "expires_at": "2026\x1b[8m",
        "domain": {"name": "vm\x1b]0;x\x07\u2066", "uuid": "u"},
    }
    status, out, err = run(capsys, "token", "vm")
    assert status == 0
    assert is_terminal_safe(out) and is_terminal_safe(err)
    assert out == "http://h/console?token=t\\x1b[31m\\u202e\n"
    assert err == "(for vm\\x1b]0;x\\x07\\u2066, single use, valid until 2026\\x1b[8m)\n"


def test_error_messages_and_codes_are_escaped(capsys, fake_server) -> None:
    fake_server.status = 404
    fake_server.body = {"error": {"code": f"nope{ESC_RED}", "message": "No domain \x1b[2J\rnamed \u202evm."}}
    status, out, err = run(capsys, "token", "vm")
    assert (status, out) == (1, "")
    assert is_terminal_safe(err)
    assert err == "broker: No domain \\x1b[2J\\x0dnamed \\u202evm. [nope\\x1b[31m]\n"


@pytest.mark.parametrize("body", [[], {"domains": [{"state": "x"}]}, {"domains": "x"}, {"domains": [{"name": 1}]}])
def test_answers_of_the_wrong_shape_are_one_line_errors(capsys, fake_server, body: object) -> None:
    fake_server.body = body
    status, _, err = run(capsys, "domains")
    assert status == 1
    assert err == "broker: the broker's answer was not understood (is that a broker?)\n"


# -- a real broker, and names libvirt or the config accept -----------------------------------

# Static console names come from the config: any text without "/" (or "," and "=" when
# they come from BROKER_STATIC_CONSOLES, as here). libvirt itself accepts TAB, C1 and
# bidi characters in domain names (test_cli_live.py); the XML it parses has no ESC or CR.
STATIC_NAMES = ["red\x1b[31mvm", "cr\rvm", "tab\tvm", "csi\x9b2Jvm", "txt.exe\u202evm", "iso\u2066vm"]


@pytest.fixture(scope="module")
def named_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    consoles = ",".join(f"{name}=tcp:127.0.0.1:1" for name in STATIC_NAMES)
    process = start_broker(
        tmp_path_factory.mktemp("named-state"),
        extra_env={"BROKER_CONNECT": "test:///default", "BROKER_STATIC_CONSOLES": consoles},
    )
    yield process
    assert process.stop() == 0


def test_real_broker_domains_text_is_escaped(named_broker: BrokerProcess) -> None:
    result = named_broker.cli("domains")
    assert result.returncode == 0, result.stderr
    assert is_terminal_safe(result.stdout)
    rows = {line.split()[0] for line in result.stdout.splitlines()[1:]}
    assert {terminal_safe(name) for name in STATIC_NAMES} <= rows
    assert "red\\x1b[31mvm" in rows and "txt.exe\\u202evm" in rows and "csi\\x9b2Jvm" in rows


def test_real_broker_domains_json_round_trips_the_names(named_broker: BrokerProcess) -> None:
    result = named_broker.cli("domains", "--json")
    assert result.returncode == 0, result.stderr
    assert result.stdout.isascii() and is_terminal_safe(result.stdout)
    assert set(STATIC_NAMES) <= {d["name"] for d in json.loads(result.stdout)["domains"]}


def test_real_broker_token_text_is_escaped(named_broker: BrokerProcess) -> None:
    result = named_broker.cli("token", "red\x1b[31mvm")
    assert result.returncode == 0, result.stderr
    assert is_terminal_safe(result.stdout) and is_terminal_safe(result.stderr)
    assert result.stderr.startswith("(for red\\x1b[31mvm, single use")

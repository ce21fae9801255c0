"""`broker token` and `broker domains` against a real uvicorn server on test:///default."""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import unicodedata
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn

from broker.access.tokens import MemoryTokenStore, Tokens
from broker.cli import CliError, _call, main
from broker.sources.consoles import LibvirtConsoles
from broker.state import bind_unix_socket, cli_socket_path, write_server_file
from broker.web.app import Broker, create_app
from unit_support import API_KEY, BUILTIN_DOMAIN, TEST_URI, mute, vnc_graphics


def serve_in_thread(app, sock: socket.socket) -> tuple[uvicorn.Server, threading.Thread]:
    # log_config=None: leave the test process's logging alone. Off the main thread
    # uvicorn installs no signal handlers; should_exit stops it.
    config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    return server, thread


@pytest.fixture(scope="module")
def live_app() -> Iterator:
    consoles = LibvirtConsoles(TEST_URI)
    app = create_app(Broker(consoles, Tokens(MemoryTokenStore()), (API_KEY,)))
    app.state.consoles = consoles
    yield app
    consoles.close()


@pytest.fixture(scope="module")
def server_url(live_app) -> Iterator[str]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server, thread = serve_in_thread(live_app, sock)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    mute(live_app.state.consoles)
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture(scope="module")
def server_uds(live_app, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = tmp_path_factory.mktemp("uds") / "broker.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(path))
    server, thread = serve_in_thread(live_app, sock)
    yield str(path)
    mute(live_app.state.consoles)
    server.should_exit = True
    thread.join(10)
    sock.close()


@pytest.fixture
def keyed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BROKER_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("BROKER_API_KEY", API_KEY)


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


# -- token ----------------------------------------------------------------------------


def test_token_json(capsys, keyed, server_url, define_domain) -> None:
    domain = define_domain(vnc_graphics(5905))
    status, out, err = run(capsys, "token", domain.name(), "--json", "--server", server_url)
    assert (status, err) == (0, "")
    body = json.loads(out)
    assert set(body) == {"token", "console_url", "websocket_url", "expires_at", "domain", "kind", "console", "mode"}
    assert (body["kind"], body["console"]) == ("vnc", "graphics 0")
    assert body["domain"] == {"name": domain.name(), "uuid": domain.UUIDString()}
    assert body["console_url"] == f"{server_url}/console?token={body['token']}"
    assert body["websocket_url"] == f"ws{server_url[4:]}/websockify?token={body['token']}"


def test_token_text_prints_the_link_and_a_note(capsys, keyed, server_url, define_domain) -> None:
    domain = define_domain(vnc_graphics(5905))
    status, out, err = run(capsys, "token", domain.name(), "--ttl", "30", "--graphics", "0", "--server", server_url)
    assert status == 0
    assert out.startswith(f"{server_url}/console?token=")
    assert out.count("\n") == 1
    assert domain.name() in err and "single use" in err


def test_token_by_uuid(capsys, keyed, server_url, define_domain) -> None:
    domain = define_domain(vnc_graphics(5905))
    status, out, _ = run(capsys, "token", domain.UUIDString(), "--json", "--server", server_url)
    assert status == 0
    assert json.loads(out)["domain"]["name"] == domain.name()


def test_token_for_unknown_domain_exits_1_with_the_code(capsys, keyed, server_url) -> None:
    status, out, err = run(capsys, "token", "no-such-domain", "--server", server_url)
    assert status == 1
    assert out == ""
    assert err.startswith("broker: No domain named ")
    assert "'no-such-domain'" in err
    assert err.rstrip().endswith("[domain_not_found]")


def test_token_for_domain_without_vnc_exits_1(capsys, keyed, server_url) -> None:
    status, _, err = run(capsys, "token", BUILTIN_DOMAIN, "--server", server_url)
    assert status == 1
    assert err.rstrip().endswith("[no_console]")


def test_token_with_a_too_long_ttl_exits_1(capsys, keyed, server_url, define_domain) -> None:
    domain = define_domain(vnc_graphics(5905))
    status, _, err = run(capsys, "token", domain.name(), "--ttl", "9999", "--server", server_url)
    assert status == 1
    assert err.rstrip().endswith("[invalid_input]")


def test_token_with_a_wrong_key_exits_1(capsys, keyed, server_url, monkeypatch) -> None:
    monkeypatch.setenv("BROKER_API_KEY", "w" * 32)
    status, _, err = run(capsys, "domains", "--server", server_url)
    assert status == 1
    assert err.rstrip().endswith("[unauthorized]")


@pytest.mark.parametrize("name", ["odd?x=1#y", "100% sure", "a b"])
def test_token_name_is_quoted_into_the_path(capsys, keyed, server_url, name: str) -> None:
    status, _, err = run(capsys, "token", name, "--server", server_url)
    assert status == 1
    assert repr(name) in err
    assert err.rstrip().endswith("[domain_not_found]")


# -- domains --------------------------------------------------------------------------


def test_domains_text(capsys, keyed, server_url, define_domain) -> None:
    domain = define_domain(vnc_graphics(5905))
    status, out, err = run(capsys, "domains", "--server", server_url)
    assert (status, err) == (0, "")
    lines = out.splitlines()
    assert lines[0].split() == ["NAME", "STATE", "CONSOLE", "SERIAL"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows[domain.name()].split() == [domain.name(), "running", "vnc://127.0.0.1:5905", "-"]
    assert rows[BUILTIN_DOMAIN].split()[:2] == [BUILTIN_DOMAIN, "running"]
    assert "no VNC graphics device" in rows[BUILTIN_DOMAIN]
    # The columns line up.
    assert len({line.index(line.split()[1]) for line in lines}) == 1


def test_domains_json(capsys, keyed, server_url, define_domain) -> None:
    domain = define_domain(vnc_graphics(5905), start=False)
    status, out, _ = run(capsys, "domains", "--json", "--server", server_url)
    assert status == 0
    domains = {d["name"]: d for d in json.loads(out)["domains"]}
    assert domains[domain.name()]["state"] == "shutoff"
    assert domains[BUILTIN_DOMAIN]["consoles"] == []


# -- finding the server and key locally -----------------------------------------------


def test_domains_over_a_unix_socket(capsys, keyed, server_uds) -> None:
    status, out, _ = run(capsys, "domains", "--json", "--server", f"unix:{server_uds}")
    assert status == 0
    assert BUILTIN_DOMAIN in {d["name"] for d in json.loads(out)["domains"]}


@pytest.fixture
def local_broker(live_app, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The app behind a CLI socket in a state dir, with server.json and the key file, as
    `broker serve` leaves them; BROKER_STATE_DIR points there. Yields the state dir."""
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    (state / "api-key").write_text(API_KEY + "\n")
    (state / "api-key").chmod(0o600)
    sock = bind_unix_socket(cli_socket_path(state), 0o600)
    server, thread = serve_in_thread(live_app, sock)
    write_server_file(state, {"url": "http://127.0.0.1:1", "cli": str(cli_socket_path(state)), "pid": os.getpid()})
    monkeypatch.setenv("BROKER_STATE_DIR", str(state))
    yield state
    server.should_exit = True
    thread.join(10)
    sock.close()


def test_domains_finds_the_local_broker_and_its_key_with_no_flags(capsys, local_broker) -> None:
    status, out, _ = run(capsys, "domains", "--json")
    assert status == 0
    assert BUILTIN_DOMAIN in {d["name"] for d in json.loads(out)["domains"]}


def test_broker_api_key_is_used_over_the_cli_socket_too(capsys, local_broker, monkeypatch) -> None:
    monkeypatch.setenv("BROKER_API_KEY", "w" * 32)
    status, _, err = run(capsys, "domains")
    assert status == 1
    assert err.rstrip().endswith("[unauthorized]")


def test_local_broker_without_a_readable_key_file_exits_1(capsys, local_broker) -> None:
    (local_broker / "api-key").unlink()
    status, _, err = run(capsys, "domains")
    assert status == 1
    assert err.startswith(f"broker: no API key: {local_broker / 'api-key'} does not exist")
    assert "BROKER_API_KEY" in err


def test_domains_text_escapes_names_libvirt_accepts(capsys, local_broker, conn) -> None:
    """libvirt takes TAB, C1 controls (U+009B is CSI in 8-bit terminals) and bidi
    overrides in a domain name; `broker domains` shows them escaped."""
    names = ["unit-tab\tx", "unit-csi\x9b2Jx", "unit-rlo\u202egpj.exe", "unit-lri\u2066x"]
    domains = [
        conn.defineXML(
            f"<domain type='test'><name>{name}</name><memory unit='KiB'>1024</memory><os><type>hvm</type></os></domain>"
        )
        for name in names
    ]
    try:
        status, out, err = run(capsys, "domains")
        assert (status, err) == (0, "")
        assert all(c == "\n" or unicodedata.category(c) not in {"Cc", "Cf"} for c in out)
        shown = {line.split()[0] for line in out.splitlines()[1:]}
        assert {"unit-tab\\x09x", "unit-csi\\x9b2Jx", "unit-rlo\\u202egpj.exe", "unit-lri\\u2066x"} <= shown
    finally:
        for domain in domains:
            domain.undefine()


def test_a_non_json_answer_is_reported(capsys, keyed, server_url) -> None:
    # /console without a token answers with an HTML error page, never JSON.
    class Args:
        config = None
        server = server_url

    with pytest.raises(CliError, match="without JSON"):
        _call(Args(), "GET", "/console")  # type: ignore[arg-type]

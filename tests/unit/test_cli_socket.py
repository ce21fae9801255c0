"""The CLI sends a key from the state dir only to the broker that owns that state dir
(security review, issue 10 item 2).

With no --server it talks only over STATE_DIR/cli.sock, after checking that socket and
the process behind it; it never falls back to a TCP port, where any local user could be
listening. With --server the key must come from BROKER_API_KEY (or configured api_keys).
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.cli import main
from broker.state import connect_cli_socket
from support.processes import BrokerProcess, start_broker
from support.wait import wait_until
from unit_support import API_KEY, free_port

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="gives files to another user")
STATIC = {"BROKER_CONNECT": "test:///default", "BROKER_STATIC_CONSOLES": "desk=tcp:127.0.0.1:1"}


class Impostor:
    """An unprivileged listener that took a port (or a socket path): it records every byte
    it is sent and answers like a broker would, so a CLI that talks to it is content."""

    def __init__(self, sock: socket.socket) -> None:
        self.listener = sock
        self.listener.listen(8)
        self.received = bytearray()
        self.connections = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @classmethod
    def on_port(cls, port: int) -> Impostor:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return cls(sock)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                conn.settimeout(5)
                try:
                    while b"\r\n\r\n" not in self.received:
                        data = conn.recv(65536)
                        if not data:
                            break
                        self.received += data
                    body = b'{"domains": [], "console_url": "http://x/", "expires_at": "", "domain": {"name": "x"}}'
                    conn.sendall(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
                        b"Connection: close\r\n\r\n%s" % (len(body), body)
                    )
                except OSError:
                    pass

    def close(self) -> None:
        self.listener.close()

    def assert_got_no_key(self, key: str) -> None:
        assert b"authorization" not in bytes(self.received).lower(), bytes(self.received)
        assert key.encode() not in self.received


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def key_file(state: Path, key: str = API_KEY) -> None:
    state.mkdir(mode=0o750, exist_ok=True)
    (state / "api-key").write_text(key + "\n")
    (state / "api-key").chmod(0o600)


@pytest.fixture
def state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "state"
    key_file(path)
    monkeypatch.setenv("BROKER_STATE_DIR", str(path))
    return path


# -- no broker running: an error, never a guess --------------------------------------------


def test_stale_server_json_after_sigkill_sends_no_key_to_whoever_took_the_port(tmp_path: Path) -> None:
    broker = start_broker(tmp_path / "state", extra_env=STATIC)
    key, port = broker.api_key, int(broker.url.rsplit(":", 1)[1])
    broker.process.send_signal(signal.SIGKILL)  # or the OOM killer: no clean-up runs
    broker.process.wait(10)
    assert (broker.state_dir / "server.json").exists()
    impostor = Impostor.on_port(port)
    try:
        for command in (["domains"], ["token", "desk"]):
            result = broker.cli(*command)
            assert result.returncode == 1, result
            assert result.stdout == ""
            assert result.stderr.startswith("broker: the broker is not running: ")
            assert "server.json is left over from pid" in result.stderr
            assert "--server URL" in result.stderr and "BROKER_API_KEY" in result.stderr
            assert result.stderr.count("\n") == 1
        impostor.assert_got_no_key(key)
        assert impostor.connections == 0
    finally:
        impostor.close()


def test_a_broker_starts_over_what_a_killed_one_left(tmp_path: Path) -> None:
    first = start_broker(tmp_path / "state", extra_env=STATIC)
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(10)
    assert stat.S_ISSOCK(os.lstat(first.state_dir / "cli.sock").st_mode)  # dead, left behind
    second = start_broker(first.state_dir, extra_env=STATIC)
    try:
        result = second.cli("domains")
        assert result.returncode == 0, result.stderr
        assert json.loads((second.state_dir / "server.json").read_text())["pid"] == second.process.pid
    finally:
        assert second.stop() == 0


def test_missing_server_json_sends_no_key_to_the_default_port(capsys, state: Path, monkeypatch) -> None:
    """The CLI used to fall back to http://127.0.0.1:6080 with the local key. The impostor
    stands in for whoever holds that port (the old default is pointed at it, if any)."""
    impostor = Impostor.on_port(free_port())
    monkeypatch.setattr(
        "broker.cli.DEFAULT_SERVER", f"http://127.0.0.1:{impostor.listener.getsockname()[1]}", raising=False
    )
    try:
        status, out, err = run(capsys, "domains")
        assert (status, out) == (1, "")
        assert err.startswith(f"broker: the broker is not running: there is no {state / 'server.json'}")
        assert "--server URL" in err and "BROKER_API_KEY" in err
        impostor.assert_got_no_key(API_KEY)
        assert impostor.connections == 0
    finally:
        impostor.close()


def test_missing_state_dir_is_a_clear_error(capsys, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("BROKER_STATE_DIR", str(tmp_path / "absent"))
    status, _, err = run(capsys, "domains")
    assert status == 1
    assert err.startswith(f"broker: the broker is not running: the state dir {tmp_path / 'absent'} does not exist")


def test_a_server_json_without_a_cli_socket_is_refused(capsys, state: Path) -> None:
    """What an older broker wrote: a URL only. Nothing is sent to it."""
    impostor = Impostor.on_port(free_port())
    port = impostor.listener.getsockname()[1]
    (state / "server.json").write_text(json.dumps({"url": f"http://127.0.0.1:{port}", "pid": 1}))
    try:
        status, _, err = run(capsys, "domains")
        assert status == 1
        assert "names no CLI socket" in err
        assert impostor.connections == 0
    finally:
        impostor.close()


def test_a_cli_socket_outside_the_state_dir_is_not_used(capsys, state: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.sock"
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(elsewhere))
    impostor = Impostor(listener)
    (state / "server.json").write_text(json.dumps({"uds": str(elsewhere), "cli": str(elsewhere), "pid": 1}))
    try:
        status, _, err = run(capsys, "domains")
        assert status == 1
        assert err.startswith("broker: the broker is not running: ")
        assert impostor.connections == 0
    finally:
        impostor.close()


@needs_root
def test_a_cli_socket_served_by_another_user_gets_no_key(capsys, state: Path) -> None:
    """A process of another user listens behind a socket file that looks right (root's, 0600,
    in the state dir): SO_PEERCRED shows who really answers, and the CLI sends nothing."""
    python = shutil.which("python3", path="/usr/bin:/bin")  # one that another user may run
    if python is None:
        pytest.skip("no system python3 for a process of another user")
    scratch = Path(tempfile.mkdtemp())
    try:
        os.chown(scratch, NOBODY, -1)
        log = scratch / "received"
        code = (
            "import os, socket, sys\n"
            "s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen(4)\n"
            "print('ready', flush=True)\n"
            "data = b''\n"
            "while True:\n"
            "    c, _ = s.accept(); c.settimeout(2)\n"
            "    try:\n"
            "        data += c.recv(65536)\n"
            "    except OSError: pass\n"
            # Written whole, then renamed: the file appears only with all the listener received.
            "    open(sys.argv[2] + '.part', 'wb').write(data); os.rename(sys.argv[2] + '.part', sys.argv[2])\n"
            "    c.close()\n"
        )

        def as_nobody() -> None:
            os.setgid(NOBODY)
            os.setuid(NOBODY)

        listener = subprocess.Popen(
            [python, "-c", code, str(scratch / "s"), str(log)],
            stdout=subprocess.PIPE,
            preexec_fn=as_nobody,
            cwd="/",
        )
        try:
            assert listener.stdout and listener.stdout.readline() == b"ready\n"
            os.chown(scratch / "s", 0, 0)
            os.chmod(scratch / "s", 0o600)
            os.rename(scratch / "s", state / "cli.sock")
            cli = str(state / "cli.sock")  # "uds" too: where the CLI before this fix would have sent the key
            (state / "server.json").write_text(json.dumps({"uds": cli, "cli": cli, "pid": listener.pid}))
            status, _, err = run(capsys, "domains")
            assert status == 1
            assert f"runs as uid {NOBODY}, not uid {os.geteuid()}" in err
            # The CLI had to connect to ask who answers: wait for the listener to have seen that
            # connection end, rather than a fixed time, then check it got nothing.
            wait_until(log.exists, 5, "the listener to see the CLI's connection")
            assert log.read_bytes() == b""
        finally:
            listener.kill()
            listener.wait()
    finally:
        (state / "cli.sock").unlink(missing_ok=True)
        for leftover in scratch.iterdir():
            leftover.unlink()
        scratch.rmdir()


@pytest.mark.parametrize("mode", [0o660, 0o666], ids=oct)
def test_a_cli_socket_others_may_use_is_refused(capsys, state: Path, mode: int) -> None:
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(state / "cli.sock"))
    os.chmod(state / "cli.sock", mode)
    impostor = Impostor(listener)
    (state / "server.json").write_text(
        json.dumps({"url": "http://127.0.0.1:1", "cli": str(state / "cli.sock"), "pid": 1})
    )
    try:
        status, _, err = run(capsys, "domains")
        assert status == 1
        assert f"is not a socket of uid {os.geteuid()} that only it may use" in err
        assert impostor.connections == 0
    finally:
        impostor.close()


def test_the_cli_refuses_a_state_dir_others_can_write(capsys, state: Path) -> None:
    state.chmod(0o777)
    status, _, err = run(capsys, "domains")
    assert status == 1
    assert "writable by group or others" in err


# -- --server: the key file never goes there ------------------------------------------------


def test_explicit_server_never_gets_the_key_file(capsys, state: Path) -> None:
    impostor = Impostor.on_port(free_port())
    server = f"http://127.0.0.1:{impostor.listener.getsockname()[1]}"
    try:
        for argv in (["domains", "--server", server], ["token", "vm", "--server", f"unix:{state / 'x.sock'}"]):
            status, out, err = run(capsys, *argv)
            assert (status, out) == (1, "")
            assert err.startswith("broker: --server (or BROKER_SERVER) needs BROKER_API_KEY")
            assert str(state / "api-key") in err
        impostor.assert_got_no_key(API_KEY)
        assert impostor.connections == 0
    finally:
        impostor.close()


def test_broker_server_environment_never_gets_the_key_file(capsys, state: Path, monkeypatch) -> None:
    impostor = Impostor.on_port(free_port())
    monkeypatch.setenv("BROKER_SERVER", f"http://127.0.0.1:{impostor.listener.getsockname()[1]}")
    try:
        status, _, err = run(capsys, "domains")
        assert status == 1
        assert "needs BROKER_API_KEY" in err
        assert impostor.connections == 0
    finally:
        impostor.close()


def test_explicit_server_gets_the_key_from_broker_api_key(capsys, state: Path, monkeypatch) -> None:
    impostor = Impostor.on_port(free_port())
    monkeypatch.setenv("BROKER_API_KEY", "e" * 32)
    try:
        status, _, _ = run(capsys, "domains", "--server", f"http://127.0.0.1:{impostor.listener.getsockname()[1]}")
        assert status == 0
        assert b"authorization: bearer " + b"e" * 32 in bytes(impostor.received).lower()
        assert API_KEY.encode() not in impostor.received
    finally:
        impostor.close()


# -- a real broker: zero flags work, over the CLI socket ---------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    process = start_broker(tmp_path_factory.mktemp("cli-socket-state"), extra_env=STATIC)
    yield process
    assert process.stop() == 0


def test_the_cli_socket_is_private(broker: BrokerProcess) -> None:
    path = broker.state_dir / "cli.sock"
    st = os.lstat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert (stat.S_IMODE(st.st_mode), st.st_uid) == (0o600, os.geteuid())
    where = json.loads((broker.state_dir / "server.json").read_text())
    assert where["cli"] == str(path)
    assert where["url"] == broker.url
    assert sorted(p.name for p in broker.state_dir.iterdir()) == ["api-key", "broker.log", "cli.sock", "server.json"]


def test_zero_flag_cli_works_against_a_real_broker(broker: BrokerProcess) -> None:
    listing = broker.cli("domains")
    assert listing.returncode == 0, listing.stderr
    assert any(line.split()[:2] == ["desk", "static"] for line in listing.stdout.splitlines())
    minted = broker.cli("token", "desk", "--json")
    assert minted.returncode == 0, minted.stderr
    body = json.loads(minted.stdout)
    # Minted over the CLI socket, the link still names the broker's public address.
    assert body["console_url"] == f"{broker.url}/console?token={body['token']}"
    assert body["websocket_url"] == f"{broker.ws_url}/websockify?token={body['token']}"
    text = broker.cli("token", "desk")
    assert text.returncode == 0, text.stderr
    assert text.stdout.startswith(f"{broker.url}/console?token=")


def test_the_cli_socket_trusts_no_forwarded_headers(broker: BrokerProcess) -> None:
    sock, _ = connect_cli_socket(broker.state_dir, timeout=10)
    conn = http.client.HTTPConnection("localhost", timeout=10)
    conn.sock = sock
    conn.request(
        "POST",
        "/api/v1/domains/desk/console",
        body=b"{}",
        headers={
            "Authorization": f"Bearer {broker.api_key}",
            "Content-Type": "application/json",
            "Host": "evil.example",
            "X-Forwarded-Host": "evil.example",
            "X-Forwarded-Proto": "https",
            "X-Forwarded-Prefix": "/phish",
        },
    )
    response = conn.getresponse()
    body = json.loads(response.read())
    conn.close()
    assert response.status == 201, body
    assert body["console_url"].startswith(f"{broker.url}/console?token=")


def test_the_cli_socket_still_needs_the_key(broker: BrokerProcess) -> None:
    sock, _ = connect_cli_socket(broker.state_dir, timeout=10)
    conn = http.client.HTTPConnection("localhost", timeout=10)
    conn.sock = sock
    conn.request("GET", "/api/v1/domains")
    assert conn.getresponse().status == 401
    conn.close()


def test_links_minted_over_the_cli_socket_start_with_public_url(tmp_path: Path) -> None:
    broker = start_broker(
        tmp_path / "state", extra_env={**STATIC, "BROKER_PUBLIC_URL": "https://hv1.example.com/novnc"}
    )
    try:
        minted = broker.cli("token", "desk", "--json")
        assert minted.returncode == 0, minted.stderr
        assert json.loads(minted.stdout)["console_url"].startswith("https://hv1.example.com/novnc/console?token=")
    finally:
        assert broker.stop() == 0


def test_zero_flag_cli_works_against_a_broker_on_a_unix_socket(tmp_path: Path) -> None:
    """Served on --uds without public_url the broker has no public address of its own:
    links say http://localhost, as they did over the UNIX socket before (set public_url)."""
    uds = tmp_path / "broker.sock"
    broker = start_broker(tmp_path / "state", "--uds", str(uds), extra_env=STATIC)
    try:
        minted = broker.cli("token", "desk", "--json")
        assert minted.returncode == 0, minted.stderr
        assert json.loads(minted.stdout)["console_url"].startswith("http://localhost/console?token=")
        assert stat.S_IMODE(os.lstat(uds).st_mode) == 0o660
    finally:
        assert broker.stop() == 0
    assert not uds.exists() and not (broker.state_dir / "cli.sock").exists()
    assert not (broker.state_dir / "server.json").exists()


def test_a_second_broker_on_the_same_state_dir_is_refused(broker: BrokerProcess) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "broker", "serve", "--listen", f"127.0.0.1:{free_port()}"],
        env=broker.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    assert f"another server already listens on {broker.state_dir / 'cli.sock'}" in done.stderr
    assert broker.cli("domains").returncode == 0  # the first one is untouched


@needs_root
def test_a_state_dir_of_another_user_gets_no_key(capsys, state: Path) -> None:
    """Whoever owns the state dir would receive the key (BROKER_API_KEY or api_keys too):
    only root or the CLI's own user may own it."""
    os.chown(state, NOBODY, -1)
    status, _, err = run(capsys, "domains")
    assert status == 1
    assert "neither root nor you" in err

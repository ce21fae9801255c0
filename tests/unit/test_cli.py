"""`broker` CLI failures that need no server: exit statuses and one-line messages."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from broker import __version__
from broker.cli import main
from unit_support import API_KEY, free_port


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exited:
        main(list(argv))
    out, err = capsys.readouterr()
    return exited.value.code, out, err


@pytest.fixture
def state_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("BROKER_STATE_DIR", str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("command", [["token", "vm"], ["domains"]])
def test_unreachable_server_exits_1(capsys, state_dir, monkeypatch, command: list[str]) -> None:
    monkeypatch.setenv("BROKER_API_KEY", API_KEY)
    server = f"http://127.0.0.1:{free_port()}"
    status, out, err = run(capsys, *command, "--server", server)
    assert status == 1
    assert out == ""
    assert err.startswith(f"broker: cannot reach the broker at {server}")
    assert "broker serve" in err
    assert err.count("\n") == 1


def test_unreachable_unix_socket_exits_1(capsys, state_dir, monkeypatch) -> None:
    monkeypatch.setenv("BROKER_API_KEY", API_KEY)
    status, _, err = run(capsys, "domains", "--server", f"unix:{state_dir / 'absent.sock'}")
    assert status == 1
    assert err.startswith("broker: cannot reach the broker at unix:")


def test_server_from_broker_server_environment(capsys, state_dir, monkeypatch) -> None:
    server = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("BROKER_API_KEY", API_KEY)
    monkeypatch.setenv("BROKER_SERVER", server)
    status, _, err = run(capsys, "domains")
    assert status == 1
    assert err.startswith(f"broker: cannot reach the broker at {server}")


def test_server_flag_without_broker_api_key_exits_1(capsys, state_dir) -> None:
    """The state dir's key file is never sent to a --server (test_cli_socket.py)."""
    (state_dir / "api-key").write_text("k" * 32 + "\n")
    status, out, err = run(capsys, "token", "vm", "--server", f"http://127.0.0.1:{free_port()}")
    assert status == 1
    assert out == ""
    assert err.startswith("broker: --server (or BROKER_SERVER) needs BROKER_API_KEY")
    assert str(state_dir / "api-key") in err
    assert err.count("\n") == 1


def test_no_local_broker_exits_1(capsys, state_dir) -> None:
    status, out, err = run(capsys, "domains")
    assert (status, out) == (1, "")
    assert err.startswith("broker: the broker is not running: ")
    assert "start `broker serve`" in err and "--server URL and BROKER_API_KEY" in err
    assert err.count("\n") == 1


def test_config_error_exits_1(capsys, state_dir, monkeypatch) -> None:
    monkeypatch.setenv("BROKER_LOG_LEVEL", "chatty")
    status, _, err = run(capsys, "domains")
    assert status == 1
    assert err.startswith("broker: log_level")


def test_missing_config_file_exits_1(capsys, state_dir) -> None:
    status, _, err = run(capsys, "domains", "--config", str(state_dir / "absent.toml"))
    assert status == 1
    assert "absent.toml" in err and err.startswith("broker: config file")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["token"],
        ["token", "vm", "--ttl", "soon"],
        ["token", "vm", "--graphics", "first"],
        ["token", "vm", "--nope"],
        ["domains", "extra"],
        ["serve", "--listen", "127.0.0.1:1", "--uds", "/x.sock"],
    ],
)
def test_usage_errors_exit_2(capsys, argv: list[str]) -> None:
    status, out, err = run(capsys, *argv)
    assert status == 2
    assert out == ""
    assert "usage: broker" in err


def test_version(capsys) -> None:
    status, out, _ = run(capsys, "--version")
    assert status == 0
    assert out.strip() == f"broker {__version__}"
    # From a checkout: the version its pyproject.toml says (the wheel test checks the installed one).
    pyproject = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert __version__ == pyproject["project"]["version"]


def test_help_lists_the_commands(capsys) -> None:
    status, out, _ = run(capsys, "--help")
    assert status == 0
    for command in ("serve", "token", "domains"):
        assert command in out


@pytest.mark.parametrize("ttl", ["nan", "inf"])
def test_non_finite_ttl_is_refused_with_a_message(capsys, state_dir, monkeypatch, ttl: str) -> None:
    monkeypatch.setenv("BROKER_API_KEY", API_KEY)
    status, _, err = run(capsys, "token", "vm", "--ttl", ttl, "--server", f"http://127.0.0.1:{free_port()}")
    assert status in (1, 2)
    assert err.startswith(("broker: ", "usage: broker"))


def test_malformed_server_url_is_refused_with_a_message(capsys, state_dir, monkeypatch) -> None:
    monkeypatch.setenv("BROKER_API_KEY", API_KEY)
    status, _, err = run(capsys, "domains", "--server", "http://[::1")
    assert status == 1
    assert err.startswith("broker: ")


def test_the_cli_imports_nothing_heavy() -> None:
    """`broker token` and `broker domains` start fast: neither uvicorn, h11, websockets,
    libvirt, starlette nor httpx (only needed for --server) is imported with the CLI."""
    import subprocess
    import sys

    code = (
        "import sys, broker.cli, broker.state;"
        "heavy = {'uvicorn', 'h11', 'websockets', 'libvirt', 'starlette', 'httpx'};"
        "print(' '.join(sorted({m.split('.')[0] for m in sys.modules} & heavy)))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout.strip() == ""

"""The host-local files: the API key file the server creates, server.json the CLI reads."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from broker.cli import DEFAULT_SERVER, CliError, _local_key, _local_server
from broker.config import Settings
from broker.server import ensure_api_keys


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state")


# -- ensure_api_keys ------------------------------------------------------------------


def test_creates_a_key_file_with_mode_0600(settings: Settings) -> None:
    (key,) = ensure_api_keys(settings)
    path = settings.api_key_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == key + "\n"
    assert len(key) >= 43


def test_creates_the_state_dir(settings: Settings) -> None:
    ensure_api_keys(settings)
    assert settings.state_dir.is_dir()


def test_reuses_the_existing_key_file(settings: Settings) -> None:
    first = ensure_api_keys(settings)
    assert ensure_api_keys(settings) == first


def test_reuses_a_key_file_written_by_hand(settings: Settings) -> None:
    settings.state_dir.mkdir()
    settings.api_key_file.write_text("  my-own-key-0123456789  \n")
    settings.api_key_file.chmod(0o600)  # a key others may read is refused (test_state.py)
    assert ensure_api_keys(settings) == ("my-own-key-0123456789",)


def test_refuses_a_key_file_without_a_usable_key(settings: Settings) -> None:
    settings.state_dir.mkdir()
    settings.api_key_file.write_text("short\n")
    settings.api_key_file.chmod(0o600)
    with pytest.raises(SystemExit, match="no usable API key"):
        ensure_api_keys(settings)


def test_configured_keys_need_no_file(settings: Settings) -> None:
    configured = Settings(state_dir=settings.state_dir, api_keys=("c" * 20, "d" * 20))
    assert ensure_api_keys(configured) == ("c" * 20, "d" * 20)
    assert not configured.api_key_file.exists()


def test_two_hosts_get_different_keys(tmp_path: Path) -> None:
    assert ensure_api_keys(Settings(state_dir=tmp_path / "a")) != ensure_api_keys(Settings(state_dir=tmp_path / "b"))


# -- _local_key -----------------------------------------------------------------------


def test_local_key_prefers_configured_keys(settings: Settings) -> None:
    assert _local_key(Settings(state_dir=settings.state_dir, api_keys=("e" * 20,))) == "e" * 20


def test_local_key_reads_the_key_file(settings: Settings) -> None:
    (key,) = ensure_api_keys(settings)
    assert _local_key(settings) == key


def test_local_key_without_a_file_is_a_cli_error_naming_it(settings: Settings) -> None:
    with pytest.raises(CliError, match="api-key") as caught:
        _local_key(settings)
    assert str(settings.api_key_file) in str(caught.value)


# -- _local_server --------------------------------------------------------------------


def write_server_file(settings: Settings, content: str) -> None:
    settings.state_dir.mkdir(exist_ok=True)
    settings.server_file.write_text(content)


def test_local_server_from_a_url(settings: Settings) -> None:
    write_server_file(settings, json.dumps({"url": "http://127.0.0.1:7001", "pid": 42}))
    assert _local_server(settings) == "http://127.0.0.1:7001"


def test_local_server_from_a_unix_socket(settings: Settings) -> None:
    write_server_file(settings, json.dumps({"uds": "/run/broker/broker.sock", "pid": 42}))
    assert _local_server(settings) == "unix:/run/broker/broker.sock"


def test_local_server_default_without_a_file(settings: Settings) -> None:
    assert _local_server(settings) == DEFAULT_SERVER == "http://127.0.0.1:6080"


@pytest.mark.parametrize("content", ["", "{", "not json", "{}", '{"pid": 1}', '{"url": ""}'])
def test_local_server_default_for_unusable_files(settings: Settings, content: str) -> None:
    write_server_file(settings, content)
    assert _local_server(settings) == DEFAULT_SERVER



@pytest.mark.parametrize("content", ["[]", "null", '"http://x"', "6080"])
def test_local_server_default_for_json_that_is_not_an_object(settings: Settings, content: str) -> None:
    write_server_file(settings, content)
    assert _local_server(settings) == DEFAULT_SERVER


def _limit_after_start(soft: int, hard: int, max_sessions: int) -> tuple[int, str]:
    """Run raise_open_files_limit in a child whose limits are (soft, hard)."""
    import resource
    import subprocess
    import sys

    code = (
        "import logging, resource; logging.basicConfig(level=logging.WARNING);"
        "from broker.server import raise_open_files_limit;"
        f"raise_open_files_limit({max_sessions});"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard)),
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout), done.stderr


def test_serve_raises_the_open_files_limit_for_max_sessions() -> None:
    soft, warnings = _limit_after_start(1024, 20000, max_sessions=1024)
    assert soft == 1024 * 6 + 64 and warnings == ""


def test_serve_warns_when_the_hard_open_files_limit_is_too_low() -> None:
    soft, warnings = _limit_after_start(256, 2048, max_sessions=1024)
    assert soft == 2048
    assert "open files limit is 2048" in warnings and "LimitNOFILE" in warnings

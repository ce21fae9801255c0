"""The host-local files: the API key file the server creates, server.json the CLI reads."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from broker.access.keys import ApiKey
from broker.config import Settings
from broker.server.run import ensure_api_keys
from broker.state import NotRunning, ServerInfo, StateError, read_api_key, read_server_file


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state")


# -- ensure_api_keys ------------------------------------------------------------------


def test_creates_a_key_file_with_mode_0600(settings: Settings) -> None:
    (key,) = ensure_api_keys(settings)
    path = settings.api_key_file
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == f"{key.secret}\n" and key.label == "key1" and key.unscoped
    assert len(key.secret or "") >= 43


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
    assert [key.secret for key in ensure_api_keys(settings)] == ["my-own-key-0123456789"]


def test_refuses_a_key_file_without_a_usable_key(settings: Settings) -> None:
    settings.state_dir.mkdir()
    settings.api_key_file.write_text("short\n")
    settings.api_key_file.chmod(0o600)
    with pytest.raises(SystemExit, match="no usable API key"):
        ensure_api_keys(settings)


def test_configured_keys_need_no_file(settings: Settings) -> None:
    keys = (ApiKey.full("key1", "c" * 20), ApiKey.full("key2", "d" * 20))
    configured = Settings(state_dir=settings.state_dir, api_keys=keys)
    assert ensure_api_keys(configured) == keys
    assert not configured.api_key_file.exists()


def test_two_hosts_get_different_keys(tmp_path: Path) -> None:
    assert ensure_api_keys(Settings(state_dir=tmp_path / "a")) != ensure_api_keys(Settings(state_dir=tmp_path / "b"))


# -- read_api_key (the CLI's side) ------------------------------------------------------


def test_read_api_key_reads_the_key_file(settings: Settings) -> None:
    (key,) = ensure_api_keys(settings)
    assert read_api_key(settings.api_key_file, os.geteuid()) == key.secret


def test_read_api_key_without_a_file_names_it(settings: Settings) -> None:
    with pytest.raises(StateError, match="no API key") as caught:
        read_api_key(settings.api_key_file, os.geteuid())
    assert str(settings.api_key_file) in str(caught.value)


def test_read_api_key_wants_the_state_dirs_owner(settings: Settings) -> None:
    ensure_api_keys(settings)
    with pytest.raises(StateError, match="belongs to uid"):
        read_api_key(settings.api_key_file, os.geteuid() + 1)


# -- read_server_file -----------------------------------------------------------------


def write_server_file(settings: Settings, content: str) -> None:
    settings.state_dir.mkdir(exist_ok=True)
    settings.server_file.write_text(content)


def read(settings: Settings) -> ServerInfo:
    return read_server_file(settings.state_dir, os.geteuid())


def test_server_file_with_a_url(settings: Settings) -> None:
    write_server_file(settings, json.dumps({"url": "http://127.0.0.1:7001", "cli": "/s/cli.sock", "pid": 42}))
    assert read(settings) == ServerInfo(pid=42, url="http://127.0.0.1:7001", cli="/s/cli.sock")


def test_server_file_with_a_unix_socket(settings: Settings) -> None:
    write_server_file(settings, json.dumps({"uds": "/run/broker/broker.sock", "pid": 42}))
    assert read(settings) == ServerInfo(pid=42, uds="/run/broker/broker.sock")


def test_no_server_file_means_not_running(settings: Settings) -> None:
    settings.state_dir.mkdir()
    with pytest.raises(NotRunning, match="there is no"):
        read(settings)


@pytest.mark.parametrize("content", ["", "{", "not json", "[]", "null", '"http://x"', "6080"])
def test_unusable_server_files_mean_not_running(settings: Settings, content: str) -> None:
    write_server_file(settings, content)
    with pytest.raises(NotRunning):
        read(settings)


@pytest.mark.parametrize("content", ["{}", '{"pid": "1", "url": 7, "cli": ""}', '{"pid": true}'])
def test_fields_of_the_wrong_type_are_left_out(settings: Settings, content: str) -> None:
    write_server_file(settings, content)
    assert read(settings) == ServerInfo(pid=None)


def test_a_server_file_others_can_write_is_refused(settings: Settings) -> None:
    write_server_file(settings, json.dumps({"cli": "/x", "pid": 1}))
    settings.server_file.chmod(0o666)
    with pytest.raises(StateError, match="refusing it"):
        read(settings)


def _limit_after_start(soft: int, hard: int, max_sessions: int) -> tuple[int, str]:
    """Run raise_open_files_limit in a child whose limits are (soft, hard)."""
    import resource
    import subprocess
    import sys

    code = (
        "import logging, resource; logging.basicConfig(level=logging.WARNING);"
        "from broker.server.run import raise_open_files_limit;"
        f"raise_open_files_limit({max_sessions});"
        "print(resource.getrlimit(resource.RLIMIT_NOFILE)[0])"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
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

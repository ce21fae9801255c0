"""The state dir is not trusted blindly (security review, issue 10 item 7).

The server refuses a state dir or API-key file that others may write (or, for the key,
read), or that is not its user's; it never follows a symbolic link planted where it
writes; and its UNIX sockets get their mode and group before they appear at their path.
"""

from __future__ import annotations

import grp
import json
import os
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from broker.config import Settings
from broker.server.run import bind_socket, ensure_api_keys
from support.processes import BROKER, start_broker
from unit_support import free_port

NOBODY = 65534
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="gives files to another user")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(state_dir=tmp_path / "state")


def other_group() -> grp.struct_group:
    """A group that is not ours, to see a socket's group change."""
    for group in grp.getgrall():
        if group.gr_gid != os.getegid():
            return group
    pytest.skip("this machine has no second group")


# -- the state dir ----------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757], ids=oct)
def test_refuses_a_state_dir_others_can_write(settings: Settings, mode: int) -> None:
    settings.state_dir.mkdir()
    settings.state_dir.chmod(mode)
    with pytest.raises(SystemExit, match="writable by group or others") as refused:
        ensure_api_keys(settings)
    assert str(settings.state_dir) in str(refused.value)
    assert not settings.api_key_file.exists()


@needs_root
def test_refuses_a_state_dir_of_another_user(settings: Settings) -> None:
    settings.state_dir.mkdir(mode=0o750)
    os.chown(settings.state_dir, NOBODY, -1)
    with pytest.raises(SystemExit, match=f"belongs to uid {NOBODY}"):
        ensure_api_keys(settings)


def test_accepts_a_state_dir_others_may_only_read(settings: Settings) -> None:
    settings.state_dir.mkdir()
    settings.state_dir.chmod(0o755)
    assert ensure_api_keys(settings)


def test_serve_refuses_to_start_in_a_world_writable_state_dir(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    env = {**os.environ, "BROKER_STATE_DIR": str(state), "BROKER_CONNECT": "test:///default"}
    try:
        done = subprocess.run(
            [*BROKER, "serve", "--listen", f"127.0.0.1:{free_port()}"],
            env=env,
            capture_output=True,
            text=True,
            timeout=15,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("broker serve started in a world-writable state dir")
    assert done.returncode == 1
    assert done.stderr.startswith("broker: the state dir ")
    assert "writable by group or others (mode 0777)" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (state / "api-key").exists() and not (state / "server.json").exists()


# -- the key file -----------------------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606], ids=oct)
def test_refuses_a_key_file_others_can_read_or_write(settings: Settings, mode: int) -> None:
    settings.state_dir.mkdir(mode=0o750)
    settings.api_key_file.write_text("a-key-someone-may-have-read-0123\n")
    settings.api_key_file.chmod(mode)
    with pytest.raises(SystemExit, match=f"open to group or others \\(mode 0{mode:o}\\)"):
        ensure_api_keys(settings)


@needs_root
def test_refuses_a_key_file_of_another_user(settings: Settings) -> None:
    settings.state_dir.mkdir(mode=0o750)
    settings.api_key_file.write_text("a-key-of-somebody-else-0123456\n")
    settings.api_key_file.chmod(0o600)
    os.chown(settings.api_key_file, NOBODY, -1)
    with pytest.raises(SystemExit, match=f"belongs to uid {NOBODY}"):
        ensure_api_keys(settings)


def test_refuses_a_key_file_that_is_a_symbolic_link(settings: Settings, tmp_path: Path) -> None:
    elsewhere = tmp_path / "chosen-key"
    elsewhere.write_text("a-key-chosen-by-whoever-made-the-link\n")
    elsewhere.chmod(0o600)
    settings.state_dir.mkdir(mode=0o750)
    settings.api_key_file.symlink_to(elsewhere)
    with pytest.raises(SystemExit, match="symbolic link"):
        ensure_api_keys(settings)


def test_refuses_a_key_file_that_is_not_a_regular_file(settings: Settings) -> None:
    settings.state_dir.mkdir(mode=0o750)
    os.mkfifo(settings.api_key_file, 0o600)  # would block a plain open() for ever
    with pytest.raises(SystemExit, match="not a regular file"):
        ensure_api_keys(settings)


def test_a_new_key_file_is_0600_whatever_the_umask(settings: Settings) -> None:
    old = os.umask(0)
    try:
        ensure_api_keys(settings)
    finally:
        os.umask(old)
    assert stat.S_IMODE(settings.api_key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.state_dir.stat().st_mode) == 0o750


# -- server.json ------------------------------------------------------------------------


def test_serve_follows_no_symbolic_link_planted_at_server_json_temp_paths(tmp_path: Path) -> None:
    """A link at the temporary file's path (the one used before, server.tmp, and the one
    used now, server.json.tmp) must not make the broker write through it."""
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    state = tmp_path / "state"
    state.mkdir(mode=0o750)
    for name in ("server.tmp", "server.json.tmp"):
        (state / name).symlink_to(victim)
    broker = start_broker(state, extra_env={"BROKER_CONNECT": "test:///default"})
    try:
        assert victim.read_text() == "precious\n"
        server_file = state / "server.json"
        assert stat.S_ISREG(server_file.lstat().st_mode)
        assert json.loads(server_file.read_text())["url"] == broker.url
    finally:
        assert broker.stop() == 0


def test_server_json_replaces_a_link_instead_of_writing_through_it(settings: Settings, tmp_path: Path) -> None:
    from broker.state import write_server_file

    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    settings.state_dir.mkdir(mode=0o750)
    settings.server_file.symlink_to(victim)
    write_server_file(settings.state_dir, {"url": "http://127.0.0.1:1", "pid": 1})
    assert victim.read_text() == "precious\n"
    assert stat.S_ISREG(settings.server_file.lstat().st_mode)
    assert stat.S_IMODE(settings.server_file.stat().st_mode) == 0o644
    assert not (settings.state_dir / "server.json.tmp").exists()


# -- the UNIX socket ----------------------------------------------------------------------


@pytest.fixture
def watched_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[tuple[Path, list]]:
    """A socket path, and what it looked like each time the code changed a mode, an owner or a name."""
    path = tmp_path / "run" / "broker.sock"
    path.parent.mkdir()
    seen: list[tuple[int, int] | None] = []

    def look() -> None:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            seen.append(None)
        else:
            seen.append((stat.S_IMODE(st.st_mode), st.st_gid))

    def spy(real):
        def call(*args, **kwargs):
            look()
            result = real(*args, **kwargs)
            look()
            return result

        return call

    for module, name in ((os, "chmod"), (os, "chown"), (shutil, "chown"), (os, "rename"), (os, "replace")):
        monkeypatch.setattr(module, name, spy(getattr(module, name)))
    yield path, seen


def test_uds_never_appears_with_other_modes_or_group(watched_path) -> None:
    path, seen = watched_path
    group = other_group()
    sock, where = bind_socket(Settings(uds=str(path), uds_mode=0o640, uds_group=group.gr_name))
    try:
        final = os.lstat(path)
        assert stat.S_ISSOCK(final.st_mode)
        assert (stat.S_IMODE(final.st_mode), final.st_gid) == (0o640, group.gr_gid)
        assert where == {"uds": str(path)}
        assert seen, "bind_socket changed no mode"
        assert set(seen) <= {None, (0o640, group.gr_gid)}, f"the socket showed other modes at its path: {seen}"
        assert os.listdir(path.parent) == ["broker.sock"]  # the private directory is gone
    finally:
        sock.close()


def test_uds_chmod_and_chown_cannot_be_redirected_by_a_link(monkeypatch, tmp_path: Path) -> None:
    """Someone who can write the socket's directory swaps a link in at its path the moment
    the broker sets the mode: neither the mode nor the group may land on the link's target."""
    path = tmp_path / "run" / "broker.sock"
    path.parent.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    victim.chmod(0o600)
    group = other_group()
    real_chmod = os.chmod

    def swap_then_chmod(target, mode, *args, **kwargs):
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(victim, path)
        return real_chmod(target, mode, *args, **kwargs)

    monkeypatch.setattr(os, "chmod", swap_then_chmod)
    sock, _ = bind_socket(Settings(uds=str(path), uds_mode=0o666, uds_group=group.gr_name))
    try:
        st = victim.stat()
        assert (stat.S_IMODE(st.st_mode), st.st_gid) == (0o600, os.getegid())
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        sock.close()


def test_uds_refuses_to_replace_what_is_not_a_socket(tmp_path: Path) -> None:
    path = tmp_path / "broker.sock"
    path.write_text("not a socket\n")
    with pytest.raises(SystemExit, match="not a socket"):
        bind_socket(Settings(uds=str(path)))
    assert path.read_text() == "not a socket\n"

"""The host-local state: the API-key file and server.json, written by the server and read
by the CLI, and the private UNIX socket the CLI talks to the server through.

Everything here is about not trusting the file system blindly. The key in STATE_DIR opens
every VM's keyboard and screen, so:

- the server refuses a state dir or key file that others may write (or read, for the key),
  or that belongs to another user, rather than use it silently;
- files are created with O_EXCL|O_NOFOLLOW, so a planted symbolic link is never followed;
- a UNIX socket gets its mode and group while it is still in a private directory, and
  only then is renamed into place: there is no moment at which the path is a socket with
  other modes, nor one at which chmod/chown could be pointed at another file;
- the CLI sends the key only over STATE_DIR/cli.sock, after checking that it is a socket
  owned by the state dir's owner and that the process behind it runs as that owner
  (SO_PEERCRED). It never falls back to a TCP port: whoever binds a port first is not
  necessarily the broker.

Imported by the CLI: standard library only, nothing heavy.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import stat
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KEY_FILE = "api-key"
SERVER_FILE = "server.json"
CLI_SOCKET = "cli.sock"

# Linux's sockaddr_un.sun_path holds 108 bytes, the terminating NUL included.
_MAX_SOCKET_PATH = 107
_MAX_SERVER_FILE = 64 * 1024


class StateError(Exception):
    """The state dir or one of its files is unusable or unsafe; the message says what to do."""


class NotRunning(StateError):
    """No broker answers for this state dir (never started, stopped, or killed)."""


def _mode(st: os.stat_result) -> str:
    return f"{stat.S_IMODE(st.st_mode):04o}"


# -- the state dir --------------------------------------------------------------------


def prepare_state_dir(state_dir: Path) -> os.stat_result:
    """Server side: create the state dir (0750) if missing, then check it as check_state_dir does."""
    state_dir.mkdir(mode=0o750, parents=True, exist_ok=True)
    return check_state_dir(state_dir, owner=os.geteuid())


def check_state_dir(state_dir: Path, owner: int | None = None) -> os.stat_result:
    """The state dir's stat, after refusing one that others could write to (they could
    swap server.json, the key or the socket) or, when `owner` is given, that is not theirs.

    A symbolic link to the directory is followed: the directory itself is what is checked.
    """
    try:
        st = os.stat(state_dir)
    except FileNotFoundError:
        raise NotRunning(f"the state dir {state_dir} does not exist") from None
    except PermissionError:
        raise StateError(f"cannot look into the state dir {state_dir} (permission denied)") from None
    if not stat.S_ISDIR(st.st_mode):
        raise StateError(f"the state dir {state_dir} is not a directory")
    if owner is not None and st.st_uid != owner:
        raise StateError(
            f"the state dir {state_dir} belongs to uid {st.st_uid}, not to uid {owner} who runs the broker; "
            f"chown it, or use another state_dir"
        )
    if st.st_mode & 0o022:
        raise StateError(
            f"the state dir {state_dir} is writable by group or others (mode {_mode(st)}); "
            f"refusing to use it: chmod go-w {state_dir}"
        )
    return st


# -- the API key file -----------------------------------------------------------------


def load_or_create_api_key(state_dir: Path) -> str:
    """Server side: the key in STATE_DIR/api-key, created (0600, 256 random bits) at first start."""
    import secrets

    path = state_dir / KEY_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return read_api_key(path, owner=os.geteuid())
    key = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        os.fchmod(fh.fileno(), 0o600)  # whatever the umask
        fh.write(key + "\n")
    return key


def read_api_key(path: Path, owner: int) -> str:
    """The key in `path`, if it is a regular file of `owner` that nobody else may read or write.

    A key others can read is no secret, and one they can write lets them choose it: both
    are refused rather than used.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise StateError(f"no API key: {path} does not exist") from None
    except PermissionError:
        raise StateError(f"cannot read the API key in {path} (permission denied)") from None
    except OSError as exc:  # ELOOP: a symbolic link
        if os.path.islink(path):
            raise StateError(f"{path} is a symbolic link; refusing to read the API key through it") from None
        raise StateError(f"cannot read the API key in {path} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode):
            raise StateError(f"{path} is not a regular file; refusing to read an API key from it")
        if st.st_uid != owner:
            raise StateError(f"{path} belongs to uid {st.st_uid}, not uid {owner}; refusing its API key")
        if st.st_mode & 0o077:
            raise StateError(
                f"{path} is open to group or others (mode {_mode(st)}); the API key in it is no secret "
                f"any more: delete the file to get a new key (or chmod 600 {path} if nobody else read it)"
            )
        key = fh.read(4096).decode("utf-8", "replace").strip()
    if len(key) < 16:
        raise StateError(f"{path} holds no usable API key; delete it to get a new one")
    return key


# -- server.json ----------------------------------------------------------------------


@dataclass(frozen=True)
class ServerInfo:
    """What server.json says: where the broker listens for everyone, and its CLI socket."""

    pid: int | None
    url: str | None = None
    uds: str | None = None
    cli: str | None = None


def write_server_file(state_dir: Path, info: dict[str, Any]) -> Path:
    """Write STATE_DIR/server.json atomically (no secret in it: mode 0644)."""
    path = state_dir / SERVER_FILE
    write_private_file(path, json.dumps(info) + "\n", mode=0o644)
    return path


def write_private_file(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace `path` atomically with `text`, through a temporary file created with
    O_EXCL|O_NOFOLLOW: a symbolic link planted at the temporary path is removed, never
    followed (a plain write_text() would let it point root's write at any file)."""
    tmp = path.with_name(path.name + ".tmp")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(tmp, flags, mode)
    except FileExistsError:
        os.unlink(tmp)  # left by a crash (or planted): unlinking a link never touches its target
        fd = os.open(tmp, flags, mode)
    try:
        with os.fdopen(fd, "w") as fh:
            os.fchmod(fh.fileno(), mode)  # whatever the umask
            fh.write(text)
        os.replace(tmp, path)  # replaces a link at `path` itself, never its target
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def read_private_file(path: Path, limit: int = 4 * 1024 * 1024) -> str:
    """A file the server wrote with write_private_file: a regular file of ours that nobody
    else may read or write, never through a symbolic link; else OSError (PermissionError)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise PermissionError(f"not a regular file of uid {os.geteuid()} with mode 0600 (mode {_mode(st)})")
        data = fh.read(limit + 1)
        if len(data) > limit:
            raise OSError(errno.EFBIG, f"larger than {limit} bytes")
        return data.decode("utf-8", "replace")


def read_server_file(state_dir: Path, owner: int) -> ServerInfo:
    """Client side: STATE_DIR/server.json, if it is a regular file of `owner` that others cannot write."""
    path = state_dir / SERVER_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotRunning(f"there is no {path}") from None
    except PermissionError:
        raise StateError(f"cannot read {path} (permission denied)") from None
    except OSError as exc:
        raise StateError(f"cannot read {path} ({exc.strerror})") from None
    with os.fdopen(fd, "rb") as fh:
        st = os.fstat(fh.fileno())
        if not stat.S_ISREG(st.st_mode) or st.st_uid != owner or st.st_mode & 0o022:
            raise StateError(f"{path} is not a regular file of uid {owner} that only it may write; refusing it")
        raw = fh.read(_MAX_SERVER_FILE)
    try:
        data = json.loads(raw)
    except ValueError:
        raise NotRunning(f"{path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise NotRunning(f"{path} does not describe a server")
    pid = data.get("pid")

    def text(name: str) -> str | None:
        value = data.get(name)
        return value if isinstance(value, str) and value else None

    return ServerInfo(
        pid=pid if isinstance(pid, int) and not isinstance(pid, bool) else None,
        url=text("url"),
        uds=text("uds"),
        cli=text("cli"),
    )


def remove_server_file(path: Path, pid: int) -> None:
    """Remove server.json on the way out, unless another broker has written its own since."""
    try:
        if json.loads(path.read_text()).get("pid") == pid:
            path.unlink()
    except (OSError, ValueError, AttributeError):
        pass


# -- UNIX sockets ---------------------------------------------------------------------


def cli_socket_path(state_dir: Path) -> Path:
    """The private socket (0600, in the state dir) through which the CLI on this host talks
    to the broker: the only way a key read from the state dir ever leaves it."""
    return state_dir / CLI_SOCKET


def bind_unix_socket(path: Path, mode: int, group: str | None = None) -> socket.socket:
    """A UNIX socket bound at `path` with `mode` (and `group`), not yet listening.

    It is bound in a fresh private (0700) directory next to `path`, given its mode and group
    there, and then renamed into place. So the path never shows a socket with other modes
    (no one can connect in between), and chmod/chown act on a name only we can reach: a
    symbolic link swapped in at `path` cannot redirect them to another file.

    The socket's getsockname() stays the private name it was bound at; the server uses
    that to tell which listener a connection came in on.
    """
    _refuse_live_or_foreign(path)
    private = tempfile.mkdtemp(prefix=".", dir=path.parent)  # mode 0700, a new random name
    temp = os.path.join(private, "s")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        if len(os.fsencode(temp)) > _MAX_SOCKET_PATH or len(os.fsencode(str(path))) > _MAX_SOCKET_PATH:
            raise StateError(f"{path} is too long for a UNIX socket path (at most about 95 characters)")
        old_umask = os.umask(0o177)
        try:
            sock.bind(temp)
        finally:
            os.umask(old_umask)
        if group:
            try:
                shutil.chown(temp, group=group)
            except (LookupError, PermissionError) as exc:
                raise StateError(f"cannot give {path} to group {group!r}: {exc}") from None
        os.chmod(temp, mode)
        os.rename(temp, path)  # atomic; replaces a dead broker's socket left at `path`
    except BaseException:
        sock.close()
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(private)
    return sock


def _refuse_live_or_foreign(path: Path) -> None:
    """Refuse to replace anything but a dead socket at `path`."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise StateError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        return  # nobody listens: left over from an earlier run, renamed over
    finally:
        probe.close()
    raise StateError(f"another server already listens on {path}")


def same_file(path: Path, st: os.stat_result) -> bool:
    """Is `path` still the file `st` was taken of? (So we remove only our own socket.)"""
    try:
        now = os.lstat(path)
    except OSError:
        return False
    return (now.st_dev, now.st_ino) == (st.st_dev, st.st_ino)


# -- the CLI's side -------------------------------------------------------------------


def connect_cli_socket(state_dir: Path, timeout: float) -> tuple[socket.socket, int]:
    """A connection to the broker that owns `state_dir`, verified before any key is sent,
    and that owner's uid (whose key file the CLI may then read).

    Checks: the state dir is not writable by others; server.json is its owner's and says
    the broker has a CLI socket; STATE_DIR/cli.sock is a socket of the same owner that only the owner may
    use; and the process that answers on it runs as that owner (SO_PEERCRED). Raises
    NotRunning when there is no broker, StateError when something is not as it must be.
    """
    owner = check_state_dir(state_dir).st_uid
    if owner not in (0, os.geteuid()):
        # Whoever owns the state dir gets the key: only root or ourselves may.
        raise StateError(f"{state_dir} belongs to uid {owner}, neither root nor you; not sending it an API key")
    info = read_server_file(state_dir, owner)
    path = cli_socket_path(state_dir)
    if not info.cli:
        raise StateError(f"{state_dir / SERVER_FILE} names no CLI socket (a broker older than this CLI?)")
    # Whatever path server.json names, only the socket in the checked state dir is used.
    gone = f"{state_dir / SERVER_FILE} is left over from pid {info.pid} and nothing answers on {path}"
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        raise NotRunning(gone) from None
    if not stat.S_ISSOCK(st.st_mode) or st.st_uid != owner or st.st_mode & 0o077:
        raise StateError(f"{path} is not a socket of uid {owner} that only it may use (mode {_mode(st)}); refusing it")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(str(path))
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        pid, uid, _gid = struct.unpack("3i", creds)  # of the process that listens, from the kernel
    except (ConnectionRefusedError, FileNotFoundError):
        sock.close()
        raise NotRunning(gone) from None
    except OSError as exc:
        sock.close()
        raise StateError(f"cannot connect to {path} ({exc})") from None
    if uid != owner:
        sock.close()
        raise StateError(f"the process behind {path} (pid {pid}) runs as uid {uid}, not uid {owner}; refusing it")
    return sock, owner

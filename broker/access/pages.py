"""Page passes: what a spent link turns into, so the console page can reconnect.

The console page spends its single-use link from script, as the first frame of its
WebSocket (web/app.py), and the broker answers with a pass (users read "console
session"): multi-use, but only within a short window and only for the console the link
named. The page keeps it in memory and in the tab's sessionStorage and presents it as
the first frame of every later socket: no cookie, so it works in a panel's iframe with
third-party cookies blocked. It is not a live session (broker/live.py): one pass may open
several, one after another.

A pass names the domain's UUID and device, not the run the link was minted in: a page
waits through a reboot or a stop and start and reconnects by itself within its window.
It ends when the domain is undefined (end_for), when an administrator kills a session it
opened (end), and when its window is over. Links (tokens) stay bound to their run.

Only SHA-256 digests are kept, like tokens; with a `path` they are written there (mode
0600, replaced atomically) on every change and read back at start, so a broker restart
within the window does not strand open pages.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from ..errors import SESSION_ENDED, SESSION_KILLED, BrokerError
from ..model import ConsoleKind, ConsoleRef, LinkMode
from ..state import read_private_file, write_private_file
from .tokens import TOKEN_BYTES, Grant, digest_of, is_token_shaped

log = logging.getLogger("broker.pages")

# In the state dir: the digests of live passes, for a restart.
PASSES_FILE = "page-passes.json"
# ~400 bytes a pass: room for ~150,000 passes live at once; a larger file is refused whole.
PASSES_FILE_LIMIT = 64 * 1024 * 1024
_FORMAT = 1

NO_PASS = "This page holds no console session (it is kept per browser tab); ask for a new console link."
UNDEFINED = "The virtual machine was removed since this console was opened; ask for a new console link."


class PagePasses:
    def __init__(
        self, window: float = 600.0, clock: Callable[[], float] = time.time, *, path: Path | None = None
    ) -> None:
        self.window = window
        self.clock = clock
        self.path = path
        self._passes: dict[str, Grant] = {}
        # Passes an administrator ended (a killed session's), until they would expire.
        self._ended: dict[str, float] = {}
        # Passes whose pages are waiting for their VM to run (not saved: only quiets the logs).
        self._waiting: set[str] = set()
        if path is not None:
            self._load()

    def __len__(self) -> int:
        return len(self._passes)

    def open(self, grant: Grant) -> tuple[str, Grant]:
        """A pass for the console a redeemed link named; returns (pass, its grant). The
        grant names any run of the domain (run_id None), see the module's docstring."""
        pass_id = secrets.token_urlsafe(TOKEN_BYTES)
        now = self.clock()
        self._purge(now)
        session = replace(grant, console=replace(grant.console, run_id=None), expires_at=now + self.window, used=False)
        self._passes[digest_of(pass_id)] = session
        self._save()
        return pass_id, session

    def end_for(self, uuid: str) -> int:
        """The domain was undefined: its passes end, so a pass never opens another domain
        given the same UUID later. Stopping, crashing or rebooting ends none."""
        hits = [d for d, g in self._passes.items() if g.console.uuid == uuid and not g.revoked]
        for digest in hits:
            self._passes[digest] = replace(self._passes[digest], revoked=True)
        if hits:
            self._save()
        return len(hits)

    def end_for_digest(self, digest: str) -> None:
        """The link this pass came from turned out to be for an earlier run of the domain
        (checked when its first console opened): the pass ends with it."""
        grant = self._passes.get(digest)
        if grant is not None and not grant.revoked:
            self._passes[digest] = replace(grant, revoked=True)
            self._save()

    def still_waiting(self, digest: str | None) -> bool:
        """A console this pass opens is refused because its VM is not running: False the
        first time (worth a log line and an audit event), True for the page's retries."""
        if not digest:
            return False
        if digest in self._waiting:
            return True
        self._waiting.add(digest)
        return False

    def stop_waiting(self, digest: str | None) -> None:
        """A console this pass opened did open: a later wait is news again."""
        if digest:
            self._waiting.discard(digest)

    def end(self, digest: str) -> None:
        """An administrator killed a live session this pass opened: the page may not
        reconnect with it (SESSION_KILLED), whatever is left of its window."""
        grant = self._passes.get(digest)
        if grant is not None:
            self._ended[digest] = grant.expires_at
            self._save()

    def check(self, pass_id: str | None, uuid: str) -> Grant:
        """The pass's grant for this console, or SESSION_ENDED (SESSION_KILLED once an
        administrator ended a session it opened)."""
        if not pass_id or not is_token_shaped(pass_id):
            raise BrokerError(SESSION_ENDED, NO_PASS)
        digest = digest_of(pass_id)
        if digest in self._ended:
            raise BrokerError(SESSION_KILLED)
        grant = self._passes.get(digest)
        if grant is None or grant.console.uuid != uuid:
            raise BrokerError(SESSION_ENDED)
        if grant.revoked:
            raise BrokerError(SESSION_ENDED, UNDEFINED)
        if self.clock() >= grant.expires_at:
            raise BrokerError(SESSION_ENDED, "This console session has expired; ask for a new console link.")
        return grant

    # -- persistence --------------------------------------------------------------------

    def _purge(self, now: float) -> None:
        self._passes = {d: g for d, g in self._passes.items() if g.expires_at > now}
        self._waiting &= self._passes.keys()
        self._ended = {d: until for d, until in self._ended.items() if until > now}

    def _save(self) -> None:
        if self.path is None:
            return
        data = {
            "format": _FORMAT,
            "passes": {d: _to_json(g) for d, g in self._passes.items()},
            "ended": self._ended,
        }
        try:
            write_private_file(self.path, json.dumps(data) + "\n")
        except OSError as exc:  # a full disk must not stop a console from opening
            log.warning("cannot save the console pages' sessions to %s (%s); a restart ends them", self.path, exc)

    def _load(self) -> None:
        assert self.path is not None
        try:
            raw = read_private_file(self.path, limit=PASSES_FILE_LIMIT)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("cannot read the console pages' sessions from %s (%s); starting without them", self.path, exc)
            return
        try:
            data = json.loads(raw)
            if data.get("format") != _FORMAT:
                raise ValueError(f"format {data.get('format')!r}")
            passes = {str(d): _from_json(g) for d, g in data["passes"].items()}
            ended = {str(d): float(t) for d, t in data.get("ended", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring %s: not a file of console page sessions (%s)", self.path, exc)
            return
        self._passes, self._ended = passes, ended
        self._purge(self.clock())
        if self._passes:
            log.info("kept %d console page session(s) from before the restart", len(self._passes))


def _to_json(grant: Grant) -> dict[str, Any]:
    data = asdict(grant)
    data["console"]["kind"] = grant.console.kind.value
    data["mode"] = grant.mode.value
    return data


def _from_json(data: dict[str, Any]) -> Grant:
    console = dict(data["console"])
    ref = ConsoleRef(
        uuid=str(console["uuid"]),
        index=int(console["index"]),
        run_id=None,
        kind=ConsoleKind(console["kind"]),
    )
    return Grant(
        console=ref,
        name=str(data["name"]),
        expires_at=float(data["expires_at"]),
        used=False,
        revoked=bool(data.get("revoked", False)),
        may_take_over=bool(data.get("may_take_over", False)),
        device=str(data.get("device", "")),
        mode=LinkMode(data.get("mode", "interactive")),
        user=str(data.get("user", "")),
        max_session_length=float(data.get("max_session_length", 0.0)),
        minted_by=str(data.get("minted_by", "")),
    )

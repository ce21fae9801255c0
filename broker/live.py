"""The live console sessions: which consoles are being relayed now, and the caps on them.

A live session is a relay in progress (not the console page's pass, access/pages.py):
something outside the relay may need to end it with a reason (the VM stopped, the
broker shuts down, its time is up, an operator killed it), and new ones are counted
against the broker-wide and per-console limits before any libvirt call is made.

Each has an id (random, not a secret: it opens nothing, so it may be shown and logged)
and says who is on it (client, user agent, the API key that minted its link), since
when, and what it has moved so far: the sessions API, metrics and audit trail read it.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .access.limits import SessionLimits
from .errors import BUSY, CONSOLE_EXCLUSIVE, TOO_MANY_SESSIONS, TOO_MANY_VIEWERS, BrokerError
from .model import ConsoleRef, LinkMode
from .relay.pump import Traffic

# 64 random bits as 16 hex digits: unique among live sessions (checked), and never
# shaped like a token (43 characters), so one can never be mistaken for the other.
SESSION_ID_BYTES = 8
MAX_USER_AGENT = 256


@dataclass(frozen=True)
class Viewer:
    """Who opened a session: the client's address (through trusted proxies only), its
    User-Agent (cut to MAX_USER_AGENT characters), the label of the API key whose link
    it spent ("cli" for links minted over the CLI socket) and how it came in
    ("link": a token on /websockify; "page": the console page, by its link or pass)."""

    client: str = "unknown"
    user_agent: str = ""
    minted_by: str = ""
    via: str = "link"
    # The digest of the console page's pass that opened it, so that a kill ends
    # the pass too; never shown.
    page: str = field(default="", repr=False)


class LiveSession:
    """A relayed console that something outside the relay may need to end, with a reason."""

    def __init__(
        self,
        console: ConsoleRef,
        name: str,
        viewer: Viewer | None = None,
        session_id: str = "",
        mode: LinkMode = LinkMode.INTERACTIVE,
        user: str = "",
    ) -> None:
        self.console = console
        self.name = name
        self.viewer = viewer or Viewer()
        self.id = session_id or secrets.token_hex(SESSION_ID_BYTES)
        self.mode = mode
        self.user = user  # the panel's label for the person the link is for
        self.max_session_length = 0.0  # this link's own cap (0: only the broker's)
        loop = asyncio.get_running_loop()
        # A Future, not an Event: one is held per open session, and an Event costs ~8x more.
        self.stop: asyncio.Future[None] = loop.create_future()
        self.reason: BrokerError | None = None
        self.started_at = time.time()
        self._started = loop.time()
        # Counted by the relay as bytes move (relay/pump.py, server/splice.py): read live.
        self.traffic = Traffic()
        self.opened = False  # the relay started (after the VNC login, if any)

    @property
    def uuid(self) -> str:
        return self.console.uuid

    @property
    def kind(self) -> str:
        return self.console.kind.value

    def duration(self) -> float:
        return max(0.0, asyncio.get_running_loop().time() - self._started)

    def last_input_at(self) -> float | None:
        """Wall-clock time of the browser's last message to the console, None before any."""
        last = self.traffic.last_input
        if not last:
            return None
        return time.time() - max(0.0, asyncio.get_running_loop().time() - last)

    def to_json(self) -> dict[str, Any]:
        """What the sessions API shows: nothing secret (no token, page pass or key)."""
        last_input = self.last_input_at()
        return {
            "id": self.id,
            "kind": self.kind,
            "domain": {"name": self.name, "uuid": self.uuid},
            "console": self.console.index,
            "client": self.viewer.client,
            "user_agent": self.viewer.user_agent,
            "key": self.viewer.minted_by,
            "via": self.viewer.via,
            "mode": self.mode.value,
            "user": self.user,
            "state": "relaying" if self.opened else "opening",
            "started_at": _iso(self.started_at),
            "duration": round(self.duration(), 3),
            "bytes_to_browser": self.traffic.down_now(),
            "bytes_from_browser": self.traffic.up,
            "last_input_at": _iso(last_input) if last_input is not None else None,
        }

    def end(self, reason: BrokerError) -> None:
        """Stop the relay; the first reason given is the one the browser is told."""
        if self.reason is None:
            self.reason = reason
        if not self.stop.done():
            self.stop.set_result(None)


class LiveSessions:
    """Every live session by domain UUID, and the sessions being opened (`pending`)."""

    def __init__(self, limits: SessionLimits) -> None:
        self.limits = limits
        self._by_domain: dict[str, set[LiveSession]] = {}
        self._by_id: dict[str, LiveSession] = {}
        self.count = 0
        self.pending = 0
        # Bytes moved by sessions that have ended (the metrics add the live ones to it):
        # counted as a session leaves, so a scrape never sees a total go down.
        self.moved_down = 0
        self.moved_up = 0

    @contextlib.contextmanager
    def opening(self) -> Iterator[None]:
        """Around everything between a WebSocket's accept and its relay: refused with
        TOO_MANY_SESSIONS or BUSY before any work when the broker is full."""
        if self.count + self.pending >= self.limits.max_sessions:
            raise BrokerError(TOO_MANY_SESSIONS)
        if self.pending >= self.limits.max_pending:
            raise BrokerError(BUSY)
        self.pending += 1
        try:
            yield
        finally:
            self.pending -= 1

    def add(
        self,
        console: ConsoleRef,
        name: str,
        viewer: Viewer | None = None,
        mode: LinkMode = LinkMode.INTERACTIVE,
        user: str = "",
    ) -> LiveSession:
        """Count a session from here, before any await: opens that overlap must see each other."""
        self.check_viewers(console.uuid)
        session_id = secrets.token_hex(SESSION_ID_BYTES)
        while session_id in self._by_id:  # 64 bits: never in practice, but an id names one session
            session_id = secrets.token_hex(SESSION_ID_BYTES)
        session = LiveSession(console, name, viewer, session_id, mode, user)
        self._by_domain.setdefault(session.uuid, set()).add(session)
        self._by_id[session.id] = session
        self.count += 1
        return session

    def remove(self, session: LiveSession) -> None:
        live = self._by_domain.get(session.uuid)
        if live is None or session not in live:
            return
        self.count -= 1
        live.discard(session)
        self._by_id.pop(session.id, None)
        self.moved_down += session.traffic.down_now()
        self.moved_up += session.traffic.up
        if not live:
            del self._by_domain[session.uuid]

    def get(self, session_id: str) -> LiveSession | None:
        return self._by_id.get(session_id)

    def check_viewers(self, uuid: str) -> None:
        if len(self._by_domain.get(uuid, ())) >= self.limits.max_viewers:
            raise BrokerError(
                TOO_MANY_VIEWERS, f"This console already has {self.limits.max_viewers} viewers, the most allowed."
            )

    def of_console(self, console: ConsoleRef) -> list[LiveSession]:
        """The sessions on this one console (same domain, kind and device; any run)."""
        return [
            s
            for s in self._by_domain.get(console.uuid, ())
            if (s.console.kind, s.console.index) == (console.kind, console.index)
        ]

    def check_exclusive(self, console: ConsoleRef, mode: LinkMode) -> None:
        """While a session has exclusive control of a console, no interactive link may join it."""
        if mode is LinkMode.INTERACTIVE and any(s.mode is LinkMode.EXCLUSIVE for s in self.of_console(console)):
            raise BrokerError(CONSOLE_EXCLUSIVE)

    def of_domain(self, uuid: str) -> list[LiveSession]:
        return list(self._by_domain.get(uuid, ()))

    def all(self) -> list[LiveSession]:
        return [session for group in self._by_domain.values() for session in group]

    def newest_first(self) -> list[LiveSession]:
        return sorted(self._by_id.values(), key=lambda s: (s.started_at, s.id), reverse=True)


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="milliseconds")

"""The live console sessions: which consoles are being relayed now, and the caps on them.

A live session is a relay in progress (not the console page's cookie, access/pages.py):
something outside the relay may need to end it with a reason (the VM stopped, the
broker shuts down, its time is up), and new ones are counted against the broker-wide
and per-console limits before any libvirt call is made.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

from .access.limits import SessionLimits
from .errors import BUSY, CONSOLE_EXCLUSIVE, TOO_MANY_SESSIONS, TOO_MANY_VIEWERS, BrokerError
from .model import ConsoleRef, LinkMode


class LiveSession:
    """A relayed console that something outside the relay may need to end, with a reason."""

    def __init__(self, console: ConsoleRef, name: str, mode: LinkMode = LinkMode.INTERACTIVE, user: str = "") -> None:
        self.console = console
        self.name = name
        self.mode = mode
        self.user = user
        self.max_session_length = 0.0  # this link's own cap (0: only the broker's)
        # A Future, not an Event: one is held per open session, and an Event costs ~8x more.
        self.stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.reason: BrokerError | None = None

    @property
    def uuid(self) -> str:
        return self.console.uuid

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
        self.count = 0
        self.pending = 0

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

    def add(self, console: ConsoleRef, name: str, mode: LinkMode = LinkMode.INTERACTIVE, user: str = "") -> LiveSession:
        """Count a session from here, before any await: opens that overlap must see each other."""
        self.check_viewers(console.uuid)
        session = LiveSession(console, name, mode, user)
        self._by_domain.setdefault(session.uuid, set()).add(session)
        self.count += 1
        return session

    def remove(self, session: LiveSession) -> None:
        live = self._by_domain.get(session.uuid)
        if live is None or session not in live:
            return
        self.count -= 1
        live.discard(session)
        if not live:
            del self._by_domain[session.uuid]

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

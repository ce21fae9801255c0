"""Page passes: what a spent link turns into, so the console page can reconnect.

Opening the console page spends the single-use link token and hands the browser a pass
(users read "console session") in an HttpOnly, SameSite=Strict cookie scoped to that
console's path. The pass is multi-use but only within a short window and only for the
console the link named; stored as a digest, like tokens. It is not a live session
(broker/live.py): one pass may open several, one after another.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from dataclasses import replace

from ..errors import SESSION_ENDED, SESSION_KILLED, BrokerError
from .tokens import TOKEN_BYTES, Grant, TokenStore, digest_of, is_token_shaped

COOKIE_NAME = "broker_console"


class PagePasses:
    def __init__(self, store: TokenStore, window: float = 600.0, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.window = window
        self.clock = clock
        # Passes an administrator ended (a killed session's), until they would expire.
        self._ended: dict[str, float] = {}

    def open(self, grant: Grant) -> tuple[str, Grant]:
        """Start a session for the console a redeemed link named; returns (session id, its grant)."""
        session_id = secrets.token_urlsafe(TOKEN_BYTES)
        now = self.clock()
        self.store.purge(now - self.window)
        self._ended = {digest: until for digest, until in self._ended.items() if until > now}
        session = replace(grant, expires_at=now + self.window, used=False)
        self.store.add(digest_of(session_id), session)
        return session_id, session

    def end_for(self, uuid: str) -> int:
        """The domain's run is over: its page sessions end with it, like its unused links,
        so a cookie never opens the next run of the same UUID (a re-provisioned VM)."""
        return self.store.revoke(uuid)

    def end(self, digest: str) -> None:
        """An administrator killed a live session this pass opened: the page may not
        reconnect with it (SESSION_KILLED), whatever is left of its window."""
        grant = self.store.get(digest)
        if grant is not None:
            self._ended[digest] = grant.expires_at

    def check(self, session_id: str | None, uuid: str) -> Grant:
        """The live session for this console, or SESSION_ENDED (SESSION_KILLED once an
        administrator ended a session it opened)."""
        if not session_id or not is_token_shaped(session_id):
            raise BrokerError(SESSION_ENDED, "No console session: open the console link again, or ask for a new one.")
        if digest_of(session_id) in self._ended:
            raise BrokerError(SESSION_KILLED)
        grant = self.store.get(digest_of(session_id))
        if grant is None or grant.console.uuid != uuid:
            raise BrokerError(SESSION_ENDED)
        if grant.revoked:
            raise BrokerError(
                SESSION_ENDED, "The virtual machine stopped since this console was opened; ask for a new console link."
            )
        if self.clock() >= grant.expires_at:
            raise BrokerError(SESSION_ENDED, "This console session has expired; ask for a new console link.")
        return grant

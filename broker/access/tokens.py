"""Short-lived, single-use console tokens.

A token is 256 random bits, shown once to whoever minted it. The store keeps only
its SHA-256 digest, so a copy of the store (or a debug dump) opens nothing.
Redeeming is atomic: the first redeemer wins, every later one gets TOKEN_USED.
Spent and expired records are kept for a while so the answer can say *why* a
link no longer works instead of a bare "invalid".
"""

from __future__ import annotations

import hashlib
import re
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol

from ..errors import TOKEN_EXPIRED, TOKEN_INVALID, TOKEN_MISSING, TOKEN_REVOKED, TOKEN_USED, BrokerError
from ..model import ConsoleRef, LinkMode

TOKEN_BYTES = 32
# The shortest lifetime a link may be given: one that expires before anyone can open it
# is a mistake, answered 422 rather than 201.
MIN_TTL = 1.0
# token_urlsafe(32) gives 43 characters of [A-Za-z0-9_-]; anything else is forged.
_TOKEN_SHAPE = re.compile(r"[A-Za-z0-9_-]{43}")


@dataclass(frozen=True)
class Grant:
    console: ConsoleRef
    name: str
    expires_at: float
    used: bool = False
    revoked: bool = False
    # What was minted beside the console: may this link force a busy serial console over?
    may_take_over: bool = False
    device: str = ""  # the console's name for people ("serial0"); the ref is what counts
    mode: LinkMode = LinkMode.INTERACTIVE
    user: str = ""  # the panel's label for the person the link is for; shown, never trusted
    max_session_length: float = 0.0  # this link's own cap, seconds (0: the broker's)
    # The label of the API key that minted the link ("cli" over the CLI socket): shown
    # with the sessions it opens, never the key itself.
    minted_by: str = ""


@dataclass(frozen=True)
class MintedToken:
    token: str
    grant: Grant


class TokenStore(Protocol):
    """Where grants live, keyed by token digest. In-process today; shared later."""

    def add(self, digest: str, grant: Grant) -> None: ...

    def get(self, digest: str) -> Grant | None: ...

    def claim(self, digest: str) -> Grant | None:
        """Atomically mark the grant used; return it as it was before, or None."""
        ...

    def revoke(self, uuid: str) -> int:
        """Mark every unused grant for this domain used and revoked; return how many."""
        ...

    def purge(self, before: float) -> None:
        """Forget grants that expired before this time."""
        ...


class MemoryTokenStore:
    """A dict. Atomic because nothing here awaits: one asyncio thread owns it."""

    def __init__(self) -> None:
        self._grants: dict[str, Grant] = {}

    def add(self, digest: str, grant: Grant) -> None:
        self._grants[digest] = grant

    def get(self, digest: str) -> Grant | None:
        return self._grants.get(digest)

    def claim(self, digest: str) -> Grant | None:
        grant = self._grants.get(digest)
        if grant is not None and not grant.used:
            self._grants[digest] = replace(grant, used=True)
        return grant

    def revoke(self, uuid: str) -> int:
        hits = [d for d, g in self._grants.items() if g.console.uuid == uuid and not g.used]
        for digest in hits:
            self._grants[digest] = replace(self._grants[digest], used=True, revoked=True)
        return len(hits)

    def purge(self, before: float) -> None:
        for digest in [d for d, g in self._grants.items() if g.expires_at < before]:
            del self._grants[digest]

    def __len__(self) -> int:
        return len(self._grants)


def is_token_shaped(text: str) -> bool:
    return bool(_TOKEN_SHAPE.fullmatch(text))


def digest_of(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Tokens:
    """The token rules: TTL bounds, single use, binding to one console."""

    def __init__(
        self,
        store: TokenStore,
        *,
        default_ttl: float = 60.0,
        max_ttl: float = 600.0,
        remember_for: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.default_ttl = default_ttl
        self.max_ttl = max_ttl
        self.remember_for = remember_for
        self.clock = clock
        self._last_purge = clock()

    def mint(
        self,
        console: ConsoleRef,
        name: str,
        ttl: float | None = None,
        *,
        may_take_over: bool = False,
        device: str = "",
        mode: LinkMode = LinkMode.INTERACTIVE,
        user: str = "",
        max_session_length: float = 0.0,
        minted_by: str = "",
    ) -> MintedToken:
        ttl = self.check_ttl(ttl)
        now = self.clock()
        self._purge(now)
        token = secrets.token_urlsafe(TOKEN_BYTES)
        grant = Grant(
            console=console,
            name=name,
            expires_at=now + ttl,
            may_take_over=may_take_over,
            device=device,
            mode=mode,
            user=user,
            max_session_length=max_session_length,
            minted_by=minted_by,
        )
        self.store.add(digest_of(token), grant)
        return MintedToken(token, grant)

    def check_ttl(self, ttl: float | None) -> float:
        if ttl is None:
            return self.default_ttl
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not MIN_TTL <= ttl <= self.max_ttl:
            raise ValueError(f"ttl must be a number of seconds from {MIN_TTL:g} to {self.max_ttl:g}")
        return float(ttl)

    def redeem(self, token: str | None) -> Grant:
        """Spend a token. Raises BrokerError saying why it opens nothing."""
        return self._look_up(token, self.store.claim)

    def peek(self, token: str | None) -> Grant:
        """What redeem would answer, without spending the token: for a plain GET of the
        console link, which link previewers and mail scanners make too."""
        return self._look_up(token, self.store.get)

    def _look_up(self, token: str | None, lookup: Callable[[str], Grant | None]) -> Grant:
        if not token:
            raise BrokerError(TOKEN_MISSING)
        if not _TOKEN_SHAPE.fullmatch(token):
            raise BrokerError(TOKEN_INVALID)
        grant = lookup(digest_of(token))
        if grant is None:
            raise BrokerError(TOKEN_INVALID)
        if grant.revoked:
            raise BrokerError(TOKEN_REVOKED)
        # Expiry first: an expired link stays "expired" however often it is tried.
        if self.clock() >= grant.expires_at:
            raise BrokerError(TOKEN_EXPIRED)
        if grant.used:
            raise BrokerError(TOKEN_USED)
        return grant

    def revoke(self, uuid: str) -> int:
        return self.store.revoke(uuid)

    def _purge(self, now: float) -> None:
        if now - self._last_purge >= 10:
            self._last_purge = now
            self.store.purge(now - self.remember_for)

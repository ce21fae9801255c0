"""API keys with a label and a scope: which domains, and which rights.

Configured either as plain strings (full rights, labelled key1, key2, … by position) or
as tables:

    [[api_keys]]
    label = "panel-eu"
    sha256 = "9f86d081…"            # or key = "…" (16+ characters)
    domains = ["web-*", "6f1c0e8e-3b7a-4c39-9d35-1f0b0c5d2a11"]   # globs on names, or UUIDs
    rights = ["mint", "list"]       # default: all of RIGHTS

Keys are kept as SHA-256 digests and compared in constant time, every key every time,
so neither a copy of the settings nor the timing of an answer says which key matched.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..errors import FORBIDDEN, BrokerError
from ..model import LinkMode

MINT = "mint"  # interactive links (and view-only ones)
MINT_VIEW_ONLY = "mint-view-only"  # view-only links only
MINT_EXCLUSIVE = "mint-exclusive"
LIST = "list"  # GET /api/v1/domains
SCREENSHOT = "screenshot"
SESSIONS = "sessions"  # list and show live sessions
KILL = "kill"  # end a live session
RIGHTS = (MINT, MINT_VIEW_ONLY, MINT_EXCLUSIVE, LIST, SCREENSHOT, SESSIONS, KILL)
MIN_KEY_LENGTH = 16
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


@dataclass(frozen=True)
class ApiKey:
    label: str
    digest: bytes = field(repr=False)  # SHA-256 of the key
    domains: tuple[str, ...] = ("*",)  # name globs and UUIDs
    rights: frozenset[str] = frozenset(RIGHTS)
    # The key itself when the config gave it (the CLI may send it); None for a digest.
    secret: str | None = field(default=None, repr=False)

    @classmethod
    def full(cls, label: str, secret: str) -> ApiKey:
        return cls(label, _digest(secret), secret=secret)

    @property
    def unscoped(self) -> bool:
        return self.domains == ("*",) and self.rights == frozenset(RIGHTS)

    def covers(self, name: str, uuid: str) -> bool:
        """Whether the domain (or static console) is in this key's scope."""
        return any(
            pattern == uuid.lower() if _UUID.fullmatch(pattern) else fnmatch.fnmatchcase(name, pattern)
            for pattern in self.domains
        )

    def require(self, right: str, name: str | None = None, uuid: str | None = None) -> None:
        """FORBIDDEN, saying what is missing, unless the key has `right` (for that domain)."""
        if right not in self.rights:
            raise BrokerError(FORBIDDEN, f"API key {self.label!r} does not have the right {right!r}.")
        if name is not None and uuid is not None and not self.covers(name, uuid):
            raise BrokerError(FORBIDDEN, f"Domain {name!r} is outside the scope of API key {self.label!r}.")

    def require_mint(self, mode: LinkMode, name: str, uuid: str) -> None:
        """View-only links need `mint` or `mint-view-only`; exclusive ones `mint-exclusive`."""
        if mode is LinkMode.EXCLUSIVE:
            needed = MINT_EXCLUSIVE
        elif mode is LinkMode.VIEW_ONLY and MINT not in self.rights:
            needed = MINT_VIEW_ONLY
        else:
            needed = MINT
        self.require(needed, name, uuid)


def match(keys: Iterable[ApiKey], presented: str) -> ApiKey | None:
    """The key `presented` is, comparing its digest with every key's (no early exit)."""
    digest = _digest(presented)
    found = None
    for key in keys:
        if hmac.compare_digest(digest, key.digest):
            found = key
    return found


def parse_keys(value: Any) -> tuple[ApiKey, ...]:
    """`api_keys` from the config: strings, tables, or a comma-separated string (environment)."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list | tuple):
        raise ValueError("api_keys must be a list of keys or of tables (README, 'Scoped API keys')")
    keys = [_parse_one(position, entry) for position, entry in enumerate(value, 1)]
    labels = [key.label for key in keys]
    duplicated = sorted({label for label in labels if labels.count(label) > 1})
    if duplicated:
        raise ValueError(f"api_keys: labels must differ, {', '.join(duplicated)} is used twice")
    return tuple(keys)


def _parse_one(position: int, entry: Any) -> ApiKey:
    if isinstance(entry, str):
        _check_secret(entry, f"key{position}")
        return ApiKey.full(f"key{position}", entry)
    if not isinstance(entry, dict):
        raise ValueError(f"api_keys entry {position} must be a string or a table")
    where = f"api_keys entry {position}"
    unknown = set(entry) - {"label", "key", "sha256", "domains", "rights"}
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
    label = str(entry.get("label", f"key{position}"))
    if not _LABEL.fullmatch(label):
        raise ValueError(f"{where}: label must be 1-64 letters, digits, '.', '_' or '-', got {label!r}")
    where = f"api key {label!r}"
    if ("key" in entry) == ("sha256" in entry):
        raise ValueError(f"{where}: give exactly one of key or sha256")
    secret: str | None = None
    if "key" in entry:
        secret = str(entry["key"])
        _check_secret(secret, label)
        digest = _digest(secret)
    else:
        text = str(entry["sha256"]).lower()
        if not _SHA256.fullmatch(text):
            raise ValueError(f"{where}: sha256 must be 64 hex digits (sha256sum of the key)")
        digest = bytes.fromhex(text)
    domains = _strings(entry.get("domains", ["*"]), f"{where}: domains")
    if not domains:
        raise ValueError(f"{where}: domains is empty: the key would open nothing (leave it out for all)")
    rights = _strings(entry.get("rights", list(RIGHTS)), f"{where}: rights")
    unknown_rights = sorted(set(rights) - set(RIGHTS))
    if unknown_rights:
        raise ValueError(f"{where}: unknown right(s) {', '.join(unknown_rights)}; known: {', '.join(RIGHTS)}")
    normalised = tuple(d.lower() if _UUID.fullmatch(d.lower()) else d for d in domains)
    return ApiKey(label, digest, normalised, frozenset(rights), secret)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list | tuple) or not all(isinstance(item, str) and item for item in value):
        raise ValueError(f"{where} must be a list of non-empty strings")
    return tuple(value)


def _check_secret(secret: str, label: str) -> None:
    if len(secret) < MIN_KEY_LENGTH:
        raise ValueError(f"every API key must be at least {MIN_KEY_LENGTH} characters long ({label} is not)")


def _digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()

"""The audit trail: one JSON object per line, to a file or stdout.

Every event has the schema version `v`, the time `ts` (UTC, ISO 8601, milliseconds) and
its `event` name; the rest is per event (README, "Operating it"). Events are built from
values the broker chose to show (session ids, key labels, domain names, reason slugs,
client addresses), never from a token, page pass, API key, VNC password or query string.

The file is opened for appending and reopened on SIGHUP, so logrotate can move it away
(contrib/logrotate/vm-console-broker). A write that fails (a full disk) is logged once
and never ends a session.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

log = logging.getLogger("broker.audit")

SCHEMA_VERSION = 1
# `audit_log = "-"` (or "stdout"): to standard output, for journald or a container's log.
STDOUT_NAMES = ("-", "stdout")
FILE_MODE = 0o640


class AuditError(Exception):
    """The audit file cannot be opened; the message names it and why."""


class AuditLog:
    """Where audit events go: nowhere (target None), stdout, or an append-only file."""

    def __init__(self, target: str | None) -> None:
        self.target = target
        self._stream: TextIO | None = None
        self._failing = False
        if target is None:
            return
        if target in STDOUT_NAMES:
            self._stream = sys.stdout
        else:
            self._stream = _open(Path(target))

    @property
    def enabled(self) -> bool:
        return self._stream is not None

    @property
    def path(self) -> Path | None:
        return None if self.target is None or self.target in STDOUT_NAMES else Path(self.target)

    def emit(self, event: str, **fields: Any) -> None:
        if self._stream is None:
            return
        record = {"v": SCHEMA_VERSION, "ts": _now(), "event": event, **fields}
        # ASCII only: a domain named with control or bidi characters reaches no terminal as such.
        line = json.dumps(record, ensure_ascii=True, separators=(",", ":"), default=str)
        try:
            self._stream.write(line + "\n")
            self._stream.flush()
        except (OSError, ValueError) as exc:
            if not self._failing:
                log.error(
                    "cannot write to the audit log %s: %s; events are lost until it works again", self.target, exc
                )
            self._failing = True
        else:
            if self._failing:
                log.warning("the audit log %s is written again", self.target)
            self._failing = False

    def reopen(self) -> None:
        """After logrotate moved the file away (SIGHUP): continue in a new file at the same
        path. If that fails, keep writing where we were, and say so."""
        path = self.path
        if path is None:
            return
        try:
            fresh = _open(path)
        except AuditError as exc:
            log.error("%s; still writing to the file that was open", exc)
            return
        old, self._stream = self._stream, fresh
        if old is not None:
            old.close()
        log.info("audit log reopened: %s", path)

    def close(self) -> None:
        stream, self._stream = self._stream, None
        if stream is not None and stream is not sys.stdout:
            stream.close()


def _open(path: Path) -> TextIO:
    """Append, line by line; created 0640 (the parent directory too, 0750, if missing); a
    symbolic link at the path is refused rather than followed."""
    try:
        path.parent.mkdir(mode=0o750, parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    except OSError as exc:
        raise AuditError(f"cannot open the audit log {path}: {exc.strerror or exc}") from None
    return os.fdopen(fd, "a", encoding="utf-8")


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")

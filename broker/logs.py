"""Logging set-up, with secrets kept out of every line.

Tokens travel in query strings (`/websockify?token=…`, `/console?token=…`), and
uvicorn logs request lines, so a filter rewrites any `token=` value before a
record is formatted.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import unquote_plus

from .terminal import terminal_safe

_SECRET_NAMES = {"token", "key", "password", "passwd"}
_QUERY = re.compile(r"\?([^\s\"']*)")
_PAIR = re.compile(r"([^&;=]*)=([^&;]*)")
_BARE_SECRET = re.compile(r"((?:^|\s)(?:token|key|password|passwd)=)[^&;\s\"']*", re.IGNORECASE)


def _redact_pair(match: re.Match[str]) -> str:
    # Compare the decoded name: Starlette decodes `tok%65n=` into `token` too.
    name = unquote_plus(match.group(1)).strip().lower()
    return f"{match.group(1)}=[redacted]" if name in _SECRET_NAMES else match.group(0)


def _redact_query(match: re.Match[str]) -> str:
    return "?" + _PAIR.sub(_redact_pair, match.group(1))


def redact(text: str) -> str:
    """Replace the values of token, key and password parameters in any query string in text."""
    return _BARE_SECRET.sub(r"\1[redacted]", _QUERY.sub(_redact_query, text))


class QuietClientErrors(logging.Filter):
    """A client's protocol error is the client's problem: one line, no traceback.

    uvicorn logs an invalid UTF-8 text frame with logger.exception, so anyone holding a
    link could fill the log with tracebacks."""

    MESSAGES = {"Invalid UTF-8 sequence received from client."}

    def filter(self, record: logging.LogRecord) -> bool:
        if record.getMessage() in self.MESSAGES:
            record.exc_info = None
            record.exc_text = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


class RedactSecrets(logging.Filter):
    """Secrets out, and what clients and libvirt supplied made harmless for a terminal."""

    def filter(self, record: logging.LogRecord) -> bool:
        # Format first: a secret may sit in the arguments (`token=%s`), and redacting the
        # format string alone would eat its placeholder and lose the line.
        record.msg = terminal_safe(redact(record.getMessage()))
        record.args = None
        return True


def logging_config(level: str) -> dict[str, Any]:
    """A dictConfig for uvicorn and the broker: one format, the redacting filter on every handler."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecrets}, "quiet": {"()": QuietClientErrors}},
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "filters": ["quiet", "redact"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "broker": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
        },
    }

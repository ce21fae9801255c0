"""Logging set-up, with secrets kept out of every line.

Tokens travel in query strings (`/websockify?token=…`, `/console?token=…`), and
uvicorn logs request lines, so a filter rewrites any `token=` value before a
record is formatted.
"""

from __future__ import annotations

import logging
import re
from typing import Any

_SECRET_QUERY = re.compile(r"((?:^|[?&;\s])(?:token|key|password|passwd)=)[^&;\s\"']*", re.IGNORECASE)


def redact(text: str) -> str:
    return _SECRET_QUERY.sub(r"\1[redacted]", text)


class RedactSecrets(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        # Format first: a secret may sit in the arguments (`token=%s`), and redacting the
        # format string alone would eat its placeholder and lose the line.
        record.msg = redact(record.getMessage())
        record.args = None
        return True


def logging_config(level: str) -> dict[str, Any]:
    """A dictConfig for uvicorn and the broker: one format, the redacting filter on every handler."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"redact": {"()": RedactSecrets}},
        "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
        "handlers": {
            "stderr": {
                "class": "logging.StreamHandler",
                "formatter": "plain",
                "filters": ["redact"],
                "stream": "ext://sys.stderr",
            }
        },
        "loggers": {
            "broker": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
            "uvicorn.access": {"handlers": ["stderr"], "level": level.upper(), "propagate": False},
        },
    }

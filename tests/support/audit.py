"""Reading a broker's audit trail, and checking it for anything secret."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from broker.access.tokens import is_token_shaped


def audit_events(path: Path) -> list[dict[str, Any]]:
    """Every event, oldest first; each line must be one JSON object of schema version 1."""
    events = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        event = json.loads(line)
        assert isinstance(event, dict) and event.get("v") == 1, f"line {number}: {line}"
        assert {"ts", "event"} <= set(event), f"line {number}: {line}"
        events.append(event)
    return events


def _strings(value: Any, path: str = "") -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _strings(item, f"{path}.{key}")
    elif isinstance(value, list):
        for item in value:
            yield from _strings(item, f"{path}[]")


def secrets_in(path: Path, known: Iterable[str]) -> list[str]:
    """What in the audit file at `path` looks secret: any of the `known` secrets (tokens,
    API keys, VNC passwords) anywhere in it, a value shaped like a token or cookie (43
    URL-safe characters), a query string or a `token=`/`key=`/`password=` pair."""
    text = path.read_text()
    found = [f"a known secret ({secret[:4]}…)" for secret in known if secret and secret in text]
    for event in audit_events(path):
        for where, value in _strings(event):
            if where in (".domain.name", ".user_agent"):
                continue  # chosen by whoever named the domain or wrote the client, not ours to hide
            if is_token_shaped(value):
                found.append(f"{event['event']}{where} is shaped like a token")
            lowered = value.lower()
            if "?" in value or any(f"{name}=" in lowered for name in ("token", "key", "password", "passwd")):
                found.append(f"{event['event']}{where} holds a query or a secret's name: {value!r}")
    return found

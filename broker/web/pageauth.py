"""The console page's WebSocket handshake, above the WebSocket one.

A plain GET of a console link spends nothing (link previewers and mail scanners fetch it
too); the page's script spends it. Its socket, /console/{uuid}/websockify, sends one text
frame first:

    {"token": "<the link's token>"}     the first time: spends the link
    {"pass": "<the page's pass>"}       every later time (Reload, Reconnect, after a restart)

and the broker answers, once the credential is good and before any console byte, with

    {"type": "session", "pass": "…", "domain": {"name": …, "uuid": …}, "kind": "vnc"|"serial",
     "console": "<device>", "mode": "interactive"|"view-only"|"exclusive",
     "may_take_over": bool, "expires_at": "<ISO 8601, UTC>", "expires_in": <seconds>}

then the console's stream as on /websockify. A refusal is a close with its code and
reason (broker/errors.py); a first frame that is missing, late or malformed closes with
4100. No cookie is involved, so the page works in a cross-site iframe too.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from starlette.websockets import WebSocket

from ..access.tokens import Grant
from ..errors import TOKEN_MISSING, BrokerError

# How long the broker waits for the page's first frame after accepting its socket.
FIRST_FRAME_SECONDS = 10.0
# A token or pass is 43 characters: anything much longer is not one.
MAX_FIRST_FRAME = 512

SHAPE = 'The console page must first send {"token": …} or {"pass": …}.'


class PageLeft(Exception):
    """The page closed its socket before saying who it is."""


@dataclass(frozen=True)
class Credential:
    """What the page's first frame presented: exactly one of them."""

    token: str | None = None
    pass_id: str | None = None


def parse_first_frame(message: Mapping[str, Any]) -> Credential:
    """The credential in an ASGI websocket.receive message; BrokerError(TOKEN_MISSING) if
    it is not one text frame holding a JSON object with just a string "token" or "pass"."""
    text = message.get("text")
    if not isinstance(text, str) or len(text) > MAX_FIRST_FRAME:
        raise BrokerError(TOKEN_MISSING, SHAPE)
    try:
        body = json.loads(text)
    except ValueError:
        raise BrokerError(TOKEN_MISSING, SHAPE) from None
    if not isinstance(body, dict) or len(body) != 1:
        raise BrokerError(TOKEN_MISSING, SHAPE)
    ((name, value),) = body.items()
    if name not in ("token", "pass") or not isinstance(value, str) or not value:
        raise BrokerError(TOKEN_MISSING, SHAPE)
    return Credential(token=value) if name == "token" else Credential(pass_id=value)


async def read_credential(websocket: WebSocket, timeout: float = FIRST_FRAME_SECONDS) -> Credential:
    """Wait for the page's first frame; PageLeft if it went away, TOKEN_MISSING if it
    said nothing within `timeout` or something else than a credential."""
    try:
        message = await asyncio.wait_for(websocket.receive(), timeout)
    except TimeoutError:
        raise BrokerError(
            TOKEN_MISSING, f"The console page sent no link token or session pass within {timeout:g} s."
        ) from None
    if message["type"] == "websocket.disconnect":
        raise PageLeft
    return parse_first_frame(message)


def session_frame(grant: Grant, pass_id: str, now: float) -> str:
    """The broker's first frame to the page: what it opened, and the pass for next time.
    `expires_in` (seconds) beside `expires_at`: the page times its window by its own
    clock from that, so a browser whose clock is off does not give up early or late."""
    return json.dumps(
        {
            "type": "session",
            "pass": pass_id,
            "domain": {"name": grant.name, "uuid": grant.console.uuid},
            "kind": grant.console.kind.value,
            "console": grant.device,
            "mode": grant.mode.value,
            "may_take_over": grant.may_take_over,
            "expires_at": datetime.fromtimestamp(grant.expires_at, UTC).isoformat(timespec="seconds"),
            "expires_in": max(0, round(grant.expires_at - now)),
        }
    )

"""The serial console's control vocabulary: small JSON text frames beside the raw bytes.

Terminal bytes travel as binary frames both ways (the browser's terminal decodes UTF-8 as
a stream, so a character split across frames still renders). Text frames carry control
messages, one JSON object each, with a "type":

    browser -> broker   {"type": "ping"}                      answered {"type": "pong"}
                        {"type": "resize", "cols": C, "rows": R}
                                                              accepted; a serial guest cannot
                                                              learn its size (stty rows R cols C)
    broker -> browser   {"type": "history", "available": true, "bytes": N}
                                                              N bytes of the console's log follow
                        {"type": "history", "available": false, "hint": "..."}
                        {"type": "live"}                      live output from here on

Anything else ends the session (4302) with a reason naming this vocabulary, so a panel's
own client learns its mistake at once instead of being ignored.
"""

from __future__ import annotations

import json
from typing import Any

from ..relay.pump import REFUSED, TextAnswer

PONG = TextAnswer(reply=json.dumps({"type": "pong"}))
ACCEPTED = TextAnswer()
MAX_TERMINAL_SIDE = 10_000
VOCABULARY = (
    'Text messages must be JSON control messages: {"type": "ping"} or {"type": "resize", "cols": C, "rows": R}.'
)


def control(text: str) -> TextAnswer:
    """What a text frame from the browser does on a serial console."""
    try:
        message = json.loads(text)
    except (ValueError, RecursionError):
        return REFUSED
    if not isinstance(message, dict):
        return REFUSED
    kind = message.get("type")
    if kind == "ping":
        return PONG
    if kind == "resize" and _side(message.get("cols")) and _side(message.get("rows")):
        return ACCEPTED
    return REFUSED


def _side(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_TERMINAL_SIDE


def history_header(history: bytes | None, hint: str) -> str:
    if history is None:
        return json.dumps({"type": "history", "available": False, "hint": hint})
    return json.dumps({"type": "history", "available": True, "bytes": len(history)})


LIVE = json.dumps({"type": "live"})

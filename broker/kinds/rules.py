"""What each console kind makes of the browser's WebSocket text frames.

The relay moves binary frames for every kind alike; a text frame is the kind's business:
an RFB client never sends one (so for VNC it ends the session, UNSUPPORTED_DATA); a serial
console's browser sends JSON control messages (kinds/serial.py).
"""

from __future__ import annotations

from ..model import ConsoleKind
from ..relay.pump import TextRule, refuse_text
from . import serial

_TEXT_RULES: dict[ConsoleKind, TextRule] = {ConsoleKind.VNC: refuse_text, ConsoleKind.SERIAL: serial.control}


def text_rule(kind: ConsoleKind) -> TextRule:
    return _TEXT_RULES[kind]

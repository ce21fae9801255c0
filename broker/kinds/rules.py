"""What each console kind, and each link mode, makes of what the browser sends.

The relay moves binary frames for every kind alike; the rest is the kind's business:
- text frames: an RFB client never sends one (so for VNC it ends the session,
  UNSUPPORTED_DATA); a serial console's browser sends JSON control messages (kinds/serial.py);
- the browser's bytes: for VNC, ClientInit's shared flag is forced on, and under a
  view-only link only the requests for pictures pass (kinds/rfbinput.py); a view-only
  serial console passes nothing.
"""

from __future__ import annotations

from ..model import ConsoleKind, LinkMode, Stream
from ..relay.pump import InputRule, TextRule, refuse_text
from . import serial
from .rfbinput import ClientStream, InputRefused

_TEXT_RULES: dict[ConsoleKind, TextRule] = {ConsoleKind.VNC: refuse_text, ConsoleKind.SERIAL: serial.control}


def text_rule(kind: ConsoleKind) -> TextRule:
    return _TEXT_RULES[kind]


class VncInput:
    """The browser's RFB stream through ClientStream; `refused` says why it ended a session."""

    def __init__(self, *, view_only: bool, at_client_init: bool) -> None:
        self.stream = ClientStream(view_only=view_only, at_client_init=at_client_init)
        self.refused: str | None = None

    @property
    def finished(self) -> bool:
        return self.stream.finished

    def __call__(self, data: bytes) -> bytes | None:
        try:
            return self.stream.feed(data)
        except InputRefused as exc:
            self.refused = str(exc)
            return None


class DropAll:
    """A view-only serial console: no byte the browser sends reaches the guest."""

    @property
    def finished(self) -> bool:
        return False

    def __call__(self, data: bytes) -> bytes:
        return b""


def input_rule(stream: Stream, mode: LinkMode, *, at_client_init: bool) -> InputRule | None:
    """What of the browser's bytes reaches this console under this link; None: all of it.

    Every followed VNC stream gets ClientInit's shared flag forced on; a view-only link
    also has its input dropped. `at_client_init`: the broker did the security handshake."""
    view_only = mode is LinkMode.VIEW_ONLY
    if stream.kind is ConsoleKind.SERIAL:
        return DropAll() if view_only else None
    if not (view_only or stream.follow_rfb):
        return None
    return VncInput(view_only=view_only, at_client_init=at_client_init)

"""The serial console's JSON control vocabulary (kinds/serial.py)."""

from __future__ import annotations

import json

import pytest

from broker.kinds.rules import text_rule
from broker.kinds.serial import LIVE, VOCABULARY, control, history_header
from broker.model import ConsoleKind


def test_ping_is_answered_with_pong() -> None:
    answer = control('{"type": "ping"}')
    assert not answer.refused and json.loads(answer.reply or "") == {"type": "pong"}


def test_a_resize_is_accepted_without_an_answer() -> None:
    answer = control('{"type": "resize", "cols": 120, "rows": 40}')
    assert not answer.refused and answer.reply is None


@pytest.mark.parametrize(
    "text",
    [
        "ls -l",  # keystrokes belong in binary frames
        "",
        "[]",
        '"ping"',
        '{"type": "shout"}',
        '{"type": "resize", "cols": 0, "rows": 24}',
        '{"type": "resize", "cols": 80}',
        '{"type": "resize", "cols": true, "rows": 24}',
        '{"type": "resize", "cols": 80, "rows": 100000}',
        "[" * 100_000,
    ],
)
def test_anything_else_ends_the_session(text: str) -> None:
    assert control(text).refused


def test_the_kinds_rules() -> None:
    assert text_rule(ConsoleKind.VNC)('{"type": "ping"}').refused  # an RFB client never sends text
    assert text_rule(ConsoleKind.SERIAL) is control


def test_history_headers() -> None:
    assert json.loads(history_header(b"abc", "hint")) == {"type": "history", "available": True, "bytes": 3}
    assert json.loads(history_header(None, "add a log")) == {"type": "history", "available": False, "hint": "add a log"}
    assert json.loads(LIVE) == {"type": "live"}


def test_the_close_reason_fits_a_close_frame() -> None:
    assert len(VOCABULARY.encode()) <= 123

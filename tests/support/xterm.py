"""What the terminal page's xterm.js shows, read from a Playwright page."""

from __future__ import annotations

from typing import Any


def terminal_text(page: Any) -> str:
    """Every line of the terminal's buffer, scrollback included, right-trimmed."""
    return str(
        page.evaluate(
            """() => {
                const buffer = term.buffer.active;
                const lines = [];
                for (let i = 0; i < buffer.length; i++) lines.push(buffer.getLine(i).translateToString(true));
                return lines.join('\\n');
            }"""
        )
    )

"""Text from outside made harmless for a terminal, one rule for the CLI and the log.

libvirt accepts TAB, C1 CSI and bidi overrides in domain names, and clients choose their
Origin and User-Agent: printed as such, they could move the cursor, recolour or clear
the screen, fake a log line, or reorder what follows (U+202E).
"""

from __future__ import annotations

import unicodedata

# Controls (C0, DEL, C1), format characters (bidi embeddings, overrides and isolates,
# marks, zero-width joiners), line and paragraph separators, lone surrogates.
_UNSAFE = frozenset({"Cc", "Cf", "Zl", "Zp", "Cs"})


def terminal_safe(text: str) -> str:
    """`text` with every such character written as an escape: \\x1b, \\u202e."""
    if text.isascii() and text.isprintable():
        return text
    return "".join(_escape(c) if unicodedata.category(c) in _UNSAFE else c for c in text)


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x100:
        return f"\\x{code:02x}"
    if code < 0x10000:
        return f"\\u{code:04x}"
    return f"\\U{code:08x}"

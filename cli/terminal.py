"""Text from elsewhere, made safe to write to a terminal."""

from __future__ import annotations

# C0 and C1 controls but tab and newline, DEL, and the bidirectional overrides: what text from a peer
# could use to rewrite the user's terminal (escape sequences) or to make itself read other than it is
_UNPRINTABLE = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if chr(c) not in "\t\n"}
_UNPRINTABLE |= {c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def printable(text: str) -> str:
    """``text`` (a reason, an error, an event: words that may come from a peer) safe for a terminal:
    control characters and bidirectional overrides are shown escaped (``\\x1b``), never sent."""
    return text.translate(_UNPRINTABLE)

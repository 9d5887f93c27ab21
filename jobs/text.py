"""Text from elsewhere (a peer's reason, a node's error, a remote traceback), made safe to write to a terminal.

One table for the CLI and the SDK: what a lying node writes must reach the user's terminal as text,
never as an escape sequence that rewrites the screen, sets the title or writes the clipboard.
"""

from __future__ import annotations

# C0 and C1 controls but tab and newline, DEL, and the bidirectional overrides and marks: what text from a
# peer could use to rewrite the user's terminal (escape sequences) or to make itself read other than it is
UNPRINTABLE = {c: f"\\x{c:02x}" for c in (*range(0x20), 0x7F, *range(0x80, 0xA0)) if chr(c) not in "\t\n"}
UNPRINTABLE |= {c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C)}


def printable(text: str) -> str:
    """``text`` safe for a terminal: control characters and bidirectional controls are shown escaped
    (``\\x1b``), never sent."""
    return text.translate(UNPRINTABLE)

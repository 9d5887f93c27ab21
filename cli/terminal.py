"""Text from elsewhere, made safe to write to a terminal."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable
from typing import TextIO

from jobs.text import UNPRINTABLE, printable

__all__ = ["printable", "terminal_output", "write_output"]

# in a job's own output: a colour (an SGR sequence, which only styles text), or one character to escape
_OUTPUT_CONTROL = re.compile("\x1b\\[[0-9;:]*m|[" + re.escape("".join(chr(c) for c in UNPRINTABLE if c != 0x0D)) + "]")
_PARTIAL_SGR = re.compile("\x1b(\\[[0-9;:]{0,32})?$")  # a colour that the next chunk may complete


def terminal_output(text: str) -> str:
    """A job's own output (written by the node that ran it) made safe for a terminal, as a program's
    output would look: colours, tabs, newlines and carriage returns pass; every other control
    character is shown escaped, and so is every other escape sequence (one that writes the
    clipboard, sets the title, answers the terminal's queries or draws a hyperlink)."""
    return _OUTPUT_CONTROL.sub(lambda m: m[0] if len(m[0]) > 1 else m[0].translate(UNPRINTABLE), text)


def write_output(chunks: Iterable[str], stream: TextIO | None = None) -> None:
    """Write a job's own output, chunk by chunk as it arrives: to a terminal as ``terminal_output``
    makes it, ending its last line (what follows, a status line or the prompt, starts a line of its own),
    to a pipe or a file exactly as the job wrote it."""
    stream = stream or sys.stdout
    tty, held, last = stream.isatty(), "", ""
    for chunk in chunks:
        text, held = held + chunk, ""
        if tty:
            if partial := _PARTIAL_SGR.search(text):
                text, held = text[:partial.start()], text[partial.start():]
            text = terminal_output(text)
        stream.write(text)
        stream.flush()
        last = text[-1:] or last
    if tty and (held or last not in ("", "\n")):
        stream.write(terminal_output(held) + "\n")
        stream.flush()

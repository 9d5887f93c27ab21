"""Server-Sent Events from a node's event streams: bytes in, ``Event``s out, no I/O.

The clients read the bytes (``iter_bytes`` or ``aiter_bytes``) and reconnect; ``EventReader``
cuts them into lines, turns each into an ``Event``, the stream's ``"end"``, or nothing yet, and remembers
the last event id the reconnection sends as ``Last-Event-ID``.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import ValidationError

from jobs.events import Event, EventKind
from shoal._error_mapping import validation_summary
from shoal._errors import ShoalAPIError

_EVENT_KINDS = frozenset(kind.value for kind in EventKind)
# Bytes of one line, and of one message's data, a stream may send (an event is a few hundred): a node sending a
# line that never ends once took the client's memory, as httpx's iter_lines keeps a line whole until its end.
MAX_LINE = 1 << 20
_EOL = re.compile(rb"\r\n|\r|\n")


def _too_long(what: str) -> ShoalAPIError:
    return ShoalAPIError(f"the node's event stream sent {what} over {MAX_LINE} bytes", 200, "too_large")


class LineSplitter:
    """Bytes as they come → whole lines of UTF-8 (ended by LF, CRLF or CR); a line past ``MAX_LINE`` bytes is
    refused before its end comes."""

    def __init__(self) -> None:
        self._pending = bytearray()  # the start of the line not ended yet
        self._cr = False  # the last chunk ended with CR: an LF first in the next one belongs to it

    def feed(self, chunk: bytes) -> list[str]:
        if self._cr and chunk.startswith(b"\n"):
            chunk, self._cr = chunk[1:], False
        if not chunk:
            return []
        self._cr = chunk.endswith(b"\r")
        *lines, rest = _EOL.split(chunk)
        if lines:
            lines[0] = bytes(self._pending) + lines[0]
            self._pending.clear()
        self._pending += rest
        if len(self._pending) > MAX_LINE or any(len(line) > MAX_LINE for line in lines):
            raise _too_long("a line")
        return [line.decode("utf-8", "replace") for line in lines]


class SSEMessage:
    __slots__ = ("data", "event", "id")

    def __init__(self, event: str, data: str, id: str | None) -> None:
        self.event, self.data, self.id = event, data, id


class SSEParser:
    """Server-Sent Events, one line at a time (WHATWG rules: comments, multi-line data, ``id``).

    A message is produced only at its terminating blank line, so a stream cut in the middle of
    a message drops that partial message, and the reconnection's Last-Event-ID makes the
    server send it again whole.
    """

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._size = 0
        self._id: str | None = None

    def feed(self, line: str) -> SSEMessage | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            message = SSEMessage(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data, self._size = "", [], 0
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
            self._size += len(value) + 1
            if self._size > MAX_LINE:
                raise _too_long("a message")
        elif name == "id" and "\0" not in value:
            self._id = value
        return None


def read_event(message: SSEMessage) -> Event | Literal["end"] | None:
    """An SSE message → an Event, ``"end"``, or None for kinds this SDK does not know."""
    if message.event == "end":
        return "end"
    if message.event != "message" and message.event not in _EVENT_KINDS:
        return None  # a newer server's extra message kinds, or keep-alives: skip
    try:
        return Event.model_validate_json(message.data)
    except ValidationError as e:
        raise ShoalAPIError(f"malformed event in stream: {validation_summary(e)}", 200, "bad_response") from None


class EventReader:
    """One connection's lines → events; ``last_id`` is the id of the last message read (or the one
    the connection resumed after), what the next connection sends as ``Last-Event-ID``."""

    def __init__(self, last_id: str | None) -> None:
        self.last_id = last_id
        self._parser = SSEParser()
        self._lines = LineSplitter()

    def read(self, chunk: bytes) -> list[Event | Literal["end"]]:
        """The events (and the ``"end"``) that ``chunk``, the next bytes of the stream, completes."""
        return [item for line in self._lines.feed(chunk) if (item := self.feed(line)) is not None]

    def feed(self, line: str) -> Event | Literal["end"] | None:
        message = self._parser.feed(line)
        if message is None:
            return None
        if message.id is not None:
            self.last_id = message.id
        return read_event(message)

"""Server-Sent Events from a node's event streams: lines in, ``Event``s out, no I/O.

The clients read the lines (``iter_lines`` or ``aiter_lines``) and reconnect; ``EventReader``
turns each line into an ``Event``, the stream's ``"end"``, or nothing yet, and remembers the last
event id the reconnection sends as ``Last-Event-ID``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import ValidationError

from jobs.events import Event, EventKind
from shoal._error_mapping import validation_summary
from shoal._errors import ShoalAPIError

_EVENT_KINDS = frozenset(kind.value for kind in EventKind)


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
        self._id: str | None = None

    def feed(self, line: str) -> SSEMessage | None:
        if not line:
            if not self._data:
                self._event = ""
                return None
            message = SSEMessage(self._event or "message", "\n".join(self._data), self._id)
            self._event, self._data = "", []
            return message
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
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

    def feed(self, line: str) -> Event | Literal["end"] | None:
        message = self._parser.feed(line)
        if message is None:
            return None
        if message.id is not None:
            self.last_id = message.id
        return read_event(message)

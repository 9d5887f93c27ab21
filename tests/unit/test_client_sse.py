"""The event-stream reader alone: lines in, events out, the last id kept for a reconnection."""

from __future__ import annotations

import pytest

from jobs.events import Event, EventKind
from shoal._errors import ShoalAPIError
from shoal._sse import EventReader, SSEParser


def event_json(seq: int) -> str:
    return Event(job_id="j-1", seq=seq, at=1.0, kind=EventKind.CREATED, message=f"event {seq}").model_dump_json()


def feed_all(reader: EventReader, lines: list[str]) -> list[object]:
    return [item for line in lines if (item := reader.feed(line)) is not None]


def test_a_message_ends_at_its_blank_line_and_multi_line_data_is_joined() -> None:
    parser = SSEParser()
    assert parser.feed(": keep-alive") is None
    assert parser.feed("event: note") is None
    assert parser.feed("data: one") is None
    assert parser.feed("data:two") is None
    assert parser.feed("id: 7") is None
    message = parser.feed("")
    assert message is not None
    assert (message.event, message.data, message.id) == ("note", "one\ntwo", "7")
    assert parser.feed("") is None  # a blank line with no data is no message


def test_events_come_out_with_the_last_id_and_end_stops_the_stream() -> None:
    reader = EventReader(None)
    items = feed_all(reader, ["id: 1", f"data: {event_json(1)}", "", "id: 2", "event: end", "data: {}", ""])
    assert [type(i) for i in items] == [Event, str]
    assert items[0].seq == 1 and items[1] == "end"
    assert reader.last_id == "2"


def test_unknown_kinds_are_skipped_and_a_cut_message_is_dropped() -> None:
    reader = EventReader("5")
    items = feed_all(reader, ["event: from-the-future", "data: {}", "", f"data: {event_json(6)}"])
    assert items == []  # the second message never got its blank line
    assert reader.last_id == "5"  # a reconnection resumes after what was read whole


def test_a_malformed_event_is_a_bad_response() -> None:
    reader = EventReader(None)
    reader.feed("data: {\"not\": \"an event\"}")
    with pytest.raises(ShoalAPIError) as info:
        reader.feed("")
    assert info.value.code == "bad_response"

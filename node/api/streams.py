"""A job's or a sweep's events as Server-Sent Events (and their OpenAPI description); a job's output as it
is written."""

import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import aclosing
from typing import Any

import trio
from fastapi.responses import Response, StreamingResponse

from jobs import EventKind, JobState, RunResult
from node.api.access import refusal_now
from node.api.errors import refused
from node.api.parts import Node
from node.api.quotas import Quotas
from requester.logs import LiveOutputs

SSE_WAKE = 5.0  # an event stream is woken by its job's new events; it also looks this often regardless
SSE_POLL = 0.2  # how often a stream looks when it has no bell (more streams than the store's MAX_BELLS)
SSE_KEEPALIVE = 15.0  # a comment line after this much silence keeps proxies from closing the stream

_JSON_IN_A_STRING = {"type": "string", "contentMediaType": "application/json"}
# One Server-Sent Event, as a parsed message (``id``, ``event``, ``data``): a job event, the
# closing ``end`` (whose id, per the SSE rules, is inherited from the last event), or the closing
# ``error`` of a client no longer let in.
_SSE_ID = {"type": "string", "pattern": "^[0-9]+$", "description": "the event's seq; send it back as Last-Event-ID"}
SSE_MESSAGE = {"oneOf": [
    {"type": "object", "required": ["id", "event", "data"], "properties": {
        "id": _SSE_ID,
        "event": {"type": "string", "enum": [kind.value for kind in EventKind]},
        "data": {**_JSON_IN_A_STRING, "contentSchema": {"$ref": "#/components/schemas/Event"}}}},
    {"type": "object", "required": ["event", "data"], "properties": {
        "id": _SSE_ID,
        "event": {"const": "end", "description": "the job has ended and so has the stream"},
        "data": {**_JSON_IN_A_STRING, "contentSchema": {
            "type": "object", "required": ["state"],
            "properties": {"state": {"$ref": "#/components/schemas/JobState"}}}},
    }},
    {"type": "object", "required": ["event", "data"], "properties": {
        "event": {"const": "error", "description": "the node's authorized keys no longer let this client read "
                                                   "the stream, which ends (reconnecting gets 403)"},
        "data": {**_JSON_IN_A_STRING, "contentSchema": {"$ref": "#/components/schemas/ErrorResponse"}}}},
]}  # fmt: skip


def resume_after(value: str | None) -> int:
    """The sequence number to resume after, from a Last-Event-ID header; anything that is not one
    starts from the beginning."""
    if value and value.isascii() and value.isdigit() and len(value) <= 18:
        return int(value)
    return 0


class _CountedStream(StreamingResponse):
    """A streaming response that gives its quota slot back however it ends, and ends once its caller
    is no longer let in (``while_admitted``)."""

    def __init__(self, content: AsyncIterator[bytes], release: Callable[[], None], **kw: Any) -> None:
        super().__init__(content, **kw)
        self._release = release

    async def __call__(self, scope, receive, send) -> None:
        self.body_iterator = while_admitted(self.body_iterator, scope, sse=self.media_type == "text/event-stream")
        try:
            await super().__call__(scope, receive, send)
        finally:
            self._release()


async def while_admitted(content: AsyncIterator[bytes], scope: dict[str, Any], sse: bool) -> AsyncIterator[bytes]:
    """``content`` for as long as the authorized-keys file that let the request in (if any) still lets its
    key make it: checked again at every chunk, and at every empty one (a stream yields one each time it
    wakes with nothing to send, at least every SSE_WAKE s). Once it no longer does, a last message says
    why (an ``error`` event, or a line of text) and the stream ends: a removed key reads nothing more."""
    async with aclosing(content):
        async for chunk in content:
            if (refusal := refusal_now(scope)) is not None:
                if sse:
                    data = json.dumps({"error": {"code": "forbidden", "message": refusal, "fields": []}})
                    yield f"event: error\ndata: {data}\n\n".encode()
                else:
                    yield f"\n[shoal: {refusal}: the stream ends here]\n".encode()
                return
            if chunk:
                yield chunk


def event_stream(node: Node, job_id: str, after: int,
                 state_of: Callable[[str], Awaitable[JobState | None]],
                 quotas: Quotas | None = None, client: str = "") -> Response:
    """A job's (or sweep's) events as Server-Sent Events from ``after`` on, ending after its last one.

    The stream sleeps until the store rings the job's bell (new events committed), or SSE_WAKE
    at most; a client over its open-stream quota gets 429 (``counted_stream``).
    """
    async def stream() -> AsyncIterator[bytes]:
        nonlocal after
        quiet_since = time.monotonic()
        with node.store.bell.listening(job_id) as listener:
            while True:
                ring = listener.next_ring()  # before reading: a write in between still wakes us
                batch = await node.store.events(job_id, after=after)
                for e in batch:
                    after = e.seq
                    yield f"id: {e.seq}\nevent: {e.kind.value}\ndata: {e.model_dump_json()}\n\n".encode()
                if batch:
                    quiet_since = time.monotonic()
                    continue
                # Looked at after an empty read: the terminal event is written in the same
                # transaction as the terminal state, so nothing of the job's own is missed.
                state = await state_of(job_id)
                if state is not None and state.is_terminal:
                    yield f"event: end\ndata: {json.dumps({'state': state.value})}\n\n".encode()
                    return
                if time.monotonic() - quiet_since > SSE_KEEPALIVE:
                    quiet_since = time.monotonic()
                    yield b": keep-alive\n\n"
                yield b""  # lets the response check the caller's access again (while_admitted)
                if ring is None:
                    await trio.sleep(SSE_POLL)
                else:
                    with trio.move_on_after(min(SSE_WAKE, SSE_KEEPALIVE)):
                        await ring.wait()

    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return counted_stream(stream(), quotas, client, media_type="text/event-stream", headers=headers)


def counted_stream(content: AsyncIterator[bytes], quotas: Quotas | None, client: str, **response: Any) -> Response:
    """A streaming response holding one of ``client``'s open streams (its events or a log it follows) while
    it lasts; 429 when it has none left."""
    if quotas is None:
        return _CountedStream(content, lambda: None, **response)
    refusal = quotas.open_stream(client)
    if refusal is not None:
        return refused(refusal)
    return _CountedStream(content, lambda: quotas.close_stream(client), **response)


FOLLOW_WAKE = 1.0  # a log follower looks at its job at least this often


def rest_of_record(record: str, truncated: bool, sent: bytes, first: int) -> bytes:
    """What a follower is sent once its job ended, having received live output up to ``first + len(sent)``
    (``sent``: the part of it this response sent). The rest of the record when the live output was
    its start; else a line saying where the record is (it differs: another node's run won, or the
    record holds only the output's tail)."""
    data, end = record.encode(), first + len(sent)
    if end == 0:
        return data
    if not truncated and data[first:end] == sent:
        return data[end:]
    return b"\n[shoal: the record differs from the live output above (another run was kept, or the output was " \
           b"too long to keep whole): `shoal logs` prints the record, `shoal get` fetches all of it]\n"


async def follow_output(outputs: LiveOutputs, job_id: str, stream: str, offset: int,
                        state_of: Callable[[str], Awaitable[JobState | None]],
                        record: Callable[[], Awaitable[RunResult | None]]) -> AsyncIterator[bytes]:
    """A running job's output from byte ``offset`` on as its node sends it, then the rest of its record."""
    first, at, sent, contiguous = offset, offset, bytearray(), True
    while True:
        changed = outputs.changed(job_id)
        start, data = outputs.read(job_id, stream, at)
        if data:
            contiguous = contiguous and start == at
            sent += data
            at = start + len(data)
            yield data
        state = await state_of(job_id)
        if state is None or state.is_terminal:
            break
        yield b""  # lets the response check the caller's access again (while_admitted)
        with trio.move_on_after(FOLLOW_WAKE):
            await (changed.wait() if changed is not None else trio.sleep_forever())
    result = await record()
    text = getattr(result, stream) if result else ""
    truncated = bool(result and getattr(result, f"{stream}_truncated"))
    if rest := rest_of_record(text, truncated or not contiguous, bytes(sent), first):
        yield rest

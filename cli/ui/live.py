"""``/ui/live``: the node's event streams of the jobs and sweeps a page shows, merged into one
Server-Sent Events stream (a browser opens only a few connections to one origin at a time).

Each message's ``data`` is JSON naming the job or sweep (``id``): ``event: event`` carries one of its
events as the node streamed it, ``event: end`` its final state, ``event: gone`` a stream the node
refused (its message). The node has no stream of *new* jobs, so with ``watch=jobs`` (or ``sweeps``) the
proxy looks at the head of the list every ``WATCH_EVERY`` seconds and sends ``event: list`` when it differs
from what the page shows (``seen=TOTAL:NEWEST-ID``), filtered as the page's list is (``state``, ``selector``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import httpx
import trio

from cli.ui.relay import Receive, Send, disconnected, start
from shoal._sse import SSEParser

MAX_IDS = 100  # streams one page may follow (the node allows a client 256 open streams)
WATCH_EVERY = 1.0
KEEPALIVE = 15.0
RETRY_DELAYS = (0.5, 1.0, 2.0, 5.0)  # reconnections of a broken upstream stream, then it is given up
# What is read of a node's answers, at most: a hostile or broken node's endless line or body is dropped there.
MAX_EVENT = 1024 * 1024  # one event of a stream (its lines up to the blank one)
MAX_ERROR = 64 * 1024  # an error's body (only its message is shown)
MAX_LIST = 4 * 1024 * 1024  # the head of the list (limit=1)
_ID = re.compile(r"^[js]-[0-9a-f]{32}$")
_LINE_END = re.compile(rb"\r\n|\r|\n")
LIST_FILTERS = ("state", "selector")  # query parameters of a watched list


def parse_ids(text: str) -> list[str]:
    """``j-…,s-…`` → the ids, checked; raises ``ValueError`` saying what is wrong."""
    ids = list(dict.fromkeys(part for part in text.split(",") if part))
    if len(ids) > MAX_IDS:
        raise ValueError(f"at most {MAX_IDS} ids may be followed at once (got {len(ids)})")
    for some_id in ids:
        if not _ID.match(some_id):
            raise ValueError(f"not a job or sweep id: {some_id[:80]!r}")
    return ids


def sse(event: str, data: dict[str, Any]) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


class Live:
    def __init__(self, http: httpx.AsyncClient, ids: list[str], watch: str = "", seen: str = "",
                 filters: Mapping[str, str] | None = None) -> None:
        self.http = http
        self.ids = ids
        self.watch = watch if watch in ("jobs", "sweeps") else ""
        self.seen = seen  # "TOTAL:NEWEST-ID": the head of the list as the page shows it
        # the list's filters as the page asked for them (the node checks them): its head is compared with seen
        self.filters = {k: v for k, v in (filters or {}).items() if k in LIST_FILTERS}
        self._last: dict[str, str | None] = {}  # id -> the last event id relayed (Last-Event-ID on reconnection)

    async def __call__(self, receive: Receive, send: Send) -> None:
        await send(start(200, "text/event-stream", [(b"x-accel-buffering", b"no")]))
        lock = trio.Lock()

        async def emit(chunk: bytes) -> None:
            async with lock:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

        await emit(b": live\n\n")  # the browser's EventSource opens now
        async with trio.open_nursery() as nursery:
            for some_id in self.ids:
                nursery.start_soon(self._follow, some_id, emit)
            if self.watch:
                nursery.start_soon(self._watch_list, emit)
            nursery.start_soon(_keepalive, emit)
            await disconnected(receive)
            nursery.cancel_scope.cancel()

    async def _follow(self, some_id: str, emit: Any) -> None:
        """Relay one job's (or sweep's) events until its end, reconnecting after the last event seen."""
        kind = "sweeps" if some_id.startswith("s-") else "jobs"
        failures = 0
        while failures <= len(RETRY_DELAYS):
            last_id = self._last.get(some_id)
            headers = {"Accept": "text/event-stream", **({"Last-Event-ID": last_id} if last_id else {})}
            request = self.http.build_request("GET", f"/v1/{kind}/{some_id}/events", headers=headers,
                                              timeout=httpx.Timeout(30.0, read=None))
            try:
                response = await self.http.send(request, stream=True)
                try:
                    if await self._relay(some_id, response, emit):
                        return
                    failures = 0 if response.status_code == 200 else failures
                finally:
                    await response.aclose()
            except (httpx.RequestError, ValueError):
                pass
            if failures < len(RETRY_DELAYS):
                await trio.sleep(RETRY_DELAYS[failures])
            failures += 1
        await emit(sse("gone", {"id": some_id, "status": 502, "message": "the node's event stream broke"}))

    async def _relay(self, some_id: str, response: httpx.Response, emit: Any) -> bool:
        """Relay one connection's events; True once the stream has ended for good (its end, a refusal, or an
        event over MAX_EVENT)."""
        if response.status_code >= 400:
            body = await read_capped(response, MAX_ERROR)
            await emit(sse("gone", {"id": some_id, "status": response.status_code, "message": _message(body)}))
            return True
        parser, pending, size = SSEParser(), bytearray(), 0  # size: the event's bytes before pending
        async for chunk in response.aiter_bytes():
            pending += chunk
            if b"\n" in chunk or b"\r" in chunk:
                held = pending.endswith(b"\r")  # perhaps a \r\n cut in two: its \n comes next
                *lines, rest = _LINE_END.split(pending[:-1] if held else pending)
                pending = bytearray(rest + (b"\r" if held else b""))
                for line in lines:
                    size = size + len(line) if line else 0  # a blank line ends an event
                    message = parser.feed(line.decode("utf-8", "replace"))
                    if message is None:
                        continue
                    if message.event == "end":
                        await emit(sse("end", {"id": some_id, **json.loads(message.data)}))
                        return True
                    self._last[some_id] = message.id or self._last.get(some_id)
                    await emit(sse("event", {"id": some_id, "event": json.loads(message.data)}))
            if size + len(pending) > MAX_EVENT:
                await emit(sse("gone", {"id": some_id, "status": 502,
                                        "message": f"the node sent an event over {MAX_EVENT} bytes: stream dropped"}))
                return True
        return False

    async def _watch_list(self, emit: Any) -> None:
        """Send ``list`` when the newest job (or sweep) or the count changes: new work to show."""
        total, _, newest = self.seen.partition(":")
        seen: tuple[int, str] | None = (int(total), newest) if total.isdigit() and len(total) < 10 else None
        while True:
            try:
                request = self.http.build_request("GET", f"/v1/{self.watch}", params={"limit": 1, **self.filters})
                response = await self.http.send(request, stream=True)
                try:
                    body = await read_capped(response, MAX_LIST) if response.status_code == 200 else None
                finally:
                    await response.aclose()
                if body is not None and len(body) <= MAX_LIST:  # a refused filter says nothing of the list
                    listed = json.loads(body)
                    items = listed.get(self.watch) or [{}]
                    head = (listed.get("total", 0), items[0].get("id", ""))
                    if seen is not None and head != seen:
                        await emit(sse("list", {"total": head[0], "newest": head[1]}))
                    seen = head
            except (httpx.RequestError, ValueError, AttributeError):
                pass
            await trio.sleep(WATCH_EVERY)


async def read_capped(response: httpx.Response, limit: int) -> bytes:
    """The body of a streamed ``response``, read no further than ``limit`` bytes and a chunk (over: cut there)."""
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > limit:
            break
    return bytes(body)


async def _keepalive(emit: Any) -> None:
    while True:
        await trio.sleep(KEEPALIVE)
        await emit(b": keep-alive\n\n")


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")

"""The dashboard's ASGI app: its page and static files, ``/api/...`` proxied to the node (signed with
the user's key by the SDK's HTTP client) and ``/ui/live`` (``live.py``). Who may call it: ``guard.py``."""

from __future__ import annotations

import re
import secrets
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import httpx

from cli.ui import guard
from cli.ui.live import LIST_FILTERS, Live, parse_ids
from cli.ui.relay import Receive, Send, send_error, send_whole, start, until_gone

STATIC = Path(__file__).with_name("static")
MAX_BODY = 1024 * 1024  # what the page sends: job specs and small JSON bodies
READ_TIMEOUT = 30.0  # a node silent this long in an answer is not answering (streams excepted: they wait)
_STATIC_NAME = re.compile(r"^[a-z0-9_-]+\.(js|css|svg)$")
_CONTENT_TYPES = {"js": "text/javascript", "css": "text/css", "svg": "image/svg+xml"}
# Request headers the page may pass on to the node; everything else stays here.
_REQUEST_HEADERS = ("accept", "content-type", "last-event-id", "idempotency-key")
_RESPONSE_HEADERS = (b"content-type", b"content-disposition", b"retry-after", b"x-shoal-cid")


class Dashboard:
    """``Dashboard(http, port=…)``: ``http`` is an SDK client's signed ``httpx.AsyncClient`` for the node."""

    def __init__(self, http: httpx.AsyncClient, *, port: int, address: str = guard.LOOPBACK,
                 token: str | None = None, static: Path = STATIC) -> None:
        self.http = http
        self.address = address  # the loopback address it is served on
        self.port = port  # the port the browser reaches us on (set once bound when started on port 0)
        self.token = token or secrets.token_urlsafe(32)
        self.static = static

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        headers = _headers(scope)
        host = headers.get("host", "")
        if (refusal := guard.check_host(host, self.address, self.port)) is not None:
            return await send_error(send, refusal.status, "forbidden", refusal.message)
        path, method = scope["path"], scope["method"]
        query = scope.get("query_string", b"").decode("latin-1")
        if path in ("/", "/index.html") and method in guard.SAFE_METHODS:  # no secret in it: the key is the page's
            return await send_whole(send, 200, "text/html; charset=utf-8", (self.static / "index.html").read_bytes())
        if path.startswith("/static/") and method in guard.SAFE_METHODS:
            return await self._static(send, path.removeprefix("/static/"))
        if path == "/ui/live" and method == "GET":
            params = parse_qs(query)
            token = params.get(guard.TOKEN_PARAM, [None])[0]
            if (refusal := self._caller(method, host, headers, token)) is not None:
                return await send_error(send, refusal.status, "forbidden", refusal.message)
            try:
                ids = parse_ids(params.get("ids", [""])[0])
            except ValueError as e:
                return await send_error(send, 422, "invalid_request", str(e))
            watch, seen = params.get("watch", [""])[0], params.get("seen", [""])[0]
            filters = {key: params[key][0] for key in LIST_FILTERS if params.get(key, [""])[0]}
            return await Live(self.http, ids, watch, seen, filters)(receive, send)
        if path.startswith("/api/"):
            if (refusal := self._caller(method, host, headers, headers.get(guard.TOKEN_HEADER))) is not None:
                return await send_error(send, refusal.status, "forbidden", refusal.message)
            upstream = guard.upstream_path(path)
            if upstream is None:
                return await send_error(send, 404, "not_found", f"the dashboard does not proxy {path}")
            return await self._proxy(receive, send, method, upstream, query, headers)
        return await send_error(send, 404, "not_found", f"no such page: {path}")

    def _caller(self, method: str, host: str, headers: dict[str, str], token: str | None) -> guard.Refusal | None:
        return guard.check_caller(method, host, headers.get("origin"), headers.get("sec-fetch-site"), token,
                                  self.token)

    def url(self) -> str:
        """The address to open: it carries the session's key in its fragment, which reaches no server (``guard``)."""
        return f"http://{self.address}:{self.port}/#{guard.KEY_PARAM}={self.token}"

    async def _static(self, send: Send, name: str) -> None:
        path = self.static / name
        if not _STATIC_NAME.match(name) or not path.is_file():
            return await send_error(send, 404, "not_found", f"no such file: {name}")
        await send_whole(send, 200, _CONTENT_TYPES[name.rsplit(".", 1)[1]], path.read_bytes())

    async def _proxy(self, receive: Receive, send: Send, method: str, upstream: str, query: str,
                     headers: dict[str, str]) -> None:
        body = await _read_body(receive)
        if body is None:
            return await send_error(send, 413, "too_large", f"request body over {MAX_BODY} bytes")
        forwarded = {name: headers[name] for name in _REQUEST_HEADERS if name in headers}
        streaming = upstream.endswith("/events") or "true" in parse_qs(query).get("follow", [])
        # results wait too: the node may first fetch them from IPFS, and the SDK gives it all the time it takes
        waits = streaming or upstream.endswith("/results")
        request = self.http.build_request(method, upstream + (f"?{query}" if query else ""), content=body or None,
                                          headers=forwarded,
                                          timeout=httpx.Timeout(30.0, read=None if waits else READ_TIMEOUT))

        async def answer() -> None:
            try:
                response = await self.http.send(request, stream=True)
            except httpx.TimeoutException:
                return await send_error(send, 504, "node_timeout", f"the node at {self.http.base_url} did not "
                                                                   f"answer within {READ_TIMEOUT:g} s")
            except httpx.RequestError as e:
                return await send_error(send, 502, "node_unreachable", f"the node at {self.http.base_url} did not "
                                                                       f"answer: {type(e).__name__} {e}".strip())
            try:
                passed = [(k.lower(), v) for k, v in response.headers.raw if k.lower() in _RESPONSE_HEADERS]
                content_type = response.headers.get("content-type", "application/octet-stream")
                await send(start(response.status_code, content_type,
                                 [(k, v) for k, v in passed if k != b"content-type"]))
                try:
                    async for chunk in response.aiter_bytes():  # decoded: the Content-Encoding stays here
                        await send({"type": "http.response.body", "body": chunk, "more_body": True})
                except httpx.RequestError:
                    if not streaming:  # left unfinished, the answer fails in the browser: a download cut short
                        return  # was saved as if whole
                    # the node went away (or fell silent) mid-stream: the browser sees the stream end there
                await send({"type": "http.response.body", "body": b""})
            finally:
                await response.aclose()

        await until_gone(receive, answer)  # a browser that leaves, even before the node answers, ends the call


def _headers(scope: dict[str, Any]) -> dict[str, str]:
    """The request's headers (lower-case names; a repeated header keeps its first value)."""
    out: dict[str, str] = {}
    for name, value in scope.get("headers", []):
        out.setdefault(name.decode("latin-1").lower(), value.decode("latin-1"))
    return out


async def _read_body(receive: Receive) -> bytes | None:
    """The request body, or None when over MAX_BODY."""
    body = bytearray()
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return bytes(body)
        body += message.get("body", b"")
        if len(body) > MAX_BODY:
            return None
        if not message.get("more_body"):
            return bytes(body)

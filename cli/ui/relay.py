"""ASGI plumbing shared by the proxy and the live stream: work done while watching for the browser to
go away (then the upstream work is cancelled and its connection closed)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import trio

Send = Callable[[dict[str, Any]], Awaitable[None]]
Receive = Callable[[], Awaitable[dict[str, Any]]]

# Sent with every answer: the dashboard is never framed, sends no referrer and loads nothing from elsewhere.
SECURITY_HEADERS = [
    (b"x-frame-options", b"DENY"),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"content-security-policy",
     b"default-src 'self'; img-src 'self' data: blob:; style-src 'self'; frame-ancestors 'none'; base-uri 'none'"),
]


def start(status: int, content_type: str, extra: Sequence[tuple[bytes, bytes]] = ()) -> dict[str, Any]:
    """The start of an answer: its status and headers (never cached, with SECURITY_HEADERS)."""
    headers = [(b"content-type", content_type.encode()), (b"cache-control", b"no-store"), *SECURITY_HEADERS, *extra]
    return {"type": "http.response.start", "status": status, "headers": headers}


async def send_whole(send: Send, status: int, content_type: str, body: bytes,
                     extra: Sequence[tuple[bytes, bytes]] = ()) -> None:
    await send(start(status, content_type, [*extra, (b"content-length", str(len(body)).encode())]))
    await send({"type": "http.response.body", "body": body})


async def send_error(send: Send, status: int, code: str, message: str) -> None:
    """An error in the node's own shape (``{"error": {"code", "message"}}``), which the page shows."""
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    await send_whole(send, status, "application/json", body)


async def disconnected(receive: Receive) -> None:
    """Return once the browser has gone (hypercorn drops what is sent after that, silently)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def until_gone(receive: Receive, work: Callable[[], Awaitable[None]]) -> bool:
    """Run ``work`` until it ends or the browser leaves (then it is cancelled); whether the browser left."""
    gone = False
    async with trio.open_nursery() as nursery:
        async def watch() -> None:
            nonlocal gone
            await disconnected(receive)
            gone = True
            nursery.cancel_scope.cancel()

        nursery.start_soon(watch)
        await work()
        nursery.cancel_scope.cancel()
    return gone

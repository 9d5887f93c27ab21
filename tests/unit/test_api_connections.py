"""One API connection's failure ends that connection, never the node's API."""

from __future__ import annotations

import httpx
import pytest
import trio
from fastapi import FastAPI
from hypercorn.protocol.h11 import H11Protocol

from node.api.app import serve_api


async def test_a_connection_whose_handling_fails_leaves_the_api_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    """hypercorn let an exception out of one connection's task and so out of the node: 600 strangers hanging
    up mid-body while the node sent its 408s ended the node ("another task is currently sending data").
    Here a connection fails the same way by fiat (its handling raises), and the API goes on."""
    real_handle = H11Protocol.handle

    async def handle(self: H11Protocol, event: object) -> None:
        if b"X-Fail" in getattr(event, "data", b""):
            raise trio.BusyResourceError("another task is currently sending data on this SocketStream")
        await real_handle(self, event)

    monkeypatch.setattr(H11Protocol, "handle", handle)
    app = FastAPI()
    app.get("/ping")(lambda: {"pong": True})
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(serve_api, app, "127.0.0.1", 0)
        stream = await trio.open_tcp_stream("127.0.0.1", int(url.rsplit(":", 1)[1]))
        await stream.send_all(b"GET /ping HTTP/1.1\r\nHost: x\r\nX-Fail: 1\r\n\r\n")
        assert await stream.receive_some(1000) == b""  # that connection is closed, nothing answered
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.get("/ping")).json() == {"pong": True}
        nursery.cancel_scope.cancel()

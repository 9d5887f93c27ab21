"""One API connection's failure ends that connection, never the node's API."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import httpx
import pytest
import trio
from fastapi import FastAPI, Request, Response
from hypercorn.protocol.h11 import H11Protocol

from node.api.app import serve_api
from node.api.middleware import BodyLimit


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


@contextlib.asynccontextmanager
async def serving(body: bytes, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[str, trio.SocketStream]]:
    """An API whose GET /big answers ``body`` and whose sends wait 1 s at most, and a raw connection to it."""
    import node.api.app

    monkeypatch.setattr(node.api.app, "SEND_TIMEOUT", 1.0)
    app = FastAPI()
    app.get("/big")(lambda: Response(body, media_type="application/octet-stream"))
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(serve_api, app, "127.0.0.1", 0)
        yield url, await trio.open_tcp_stream("127.0.0.1", int(url.rsplit(":", 1)[1]))
        nursery.cancel_scope.cancel()


async def test_a_response_its_client_does_not_read_is_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    """hypercorn's sends are shielded and have no deadline: 8 connections that never read a list of big specs
    held 1 GB of the node for as long as they stayed open."""
    big = b"x" * (64 << 20)  # far more than the sockets' buffers hold
    async with serving(big, monkeypatch) as (url, stream):
        await stream.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        await trio.sleep(3)  # reading nothing
        received = 0
        with trio.fail_after(20):
            with contextlib.suppress(trio.BrokenResourceError):
                while chunk := await stream.receive_some(1 << 20):
                    received += len(chunk)
        assert received < len(big)  # the connection ended before the response did
        async with httpx.AsyncClient(base_url=url) as client:  # and the API serves on
            assert len((await client.get("/big")).content) == len(big)


async def test_request_bodies_held_at_once_have_a_node_wide_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bodies are read before their signature can be checked: 1,000 strangers' connections stalled just short
    of 1 MiB each held 1.5 GB for 30 s. Past the budget a body is refused (503), and its room comes back."""
    import node.api.middleware

    monkeypatch.setattr(node.api.middleware, "BODY_BUDGET", 1000)
    app = FastAPI()
    app.add_middleware(BodyLimit)

    @app.post("/echo")
    async def echo(request: Request) -> dict:
        return {"length": len(await request.body())}

    head = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 900\r\n\r\n"
    async with trio.open_nursery() as nursery:
        (url,) = await nursery.start(serve_api, app, "127.0.0.1", 0)
        port = int(url.rsplit(":", 1)[1])
        stalled = await trio.open_tcp_stream("127.0.0.1", port)
        await stalled.send_all(head + b"x" * 600)  # and no more
        await trio.sleep(0.5)
        second = await trio.open_tcp_stream("127.0.0.1", port)
        await second.send_all(head + b"x" * 600)
        with trio.fail_after(10):
            answer = await second.receive_some(10_000)
        assert answer.startswith(b"HTTP/1.1 503") and b"retry-after: 1" in answer.lower()
        await stalled.aclose()  # its 600 bytes are given back
        await trio.sleep(0.5)
        async with httpx.AsyncClient(base_url=url) as client:
            assert (await client.post("/echo", content=b"x" * 900)).json() == {"length": 900}
        nursery.cancel_scope.cancel()


async def test_a_client_that_reads_slowly_but_reads_gets_the_whole_response(monkeypatch: pytest.MonkeyPatch) -> None:
    big = bytes(range(256)) * (64 << 10)  # 16 MiB
    async with serving(big, monkeypatch) as (_, stream):
        await stream.send_all(b"GET /big HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = bytearray()
        with trio.fail_after(30):
            while chunk := await stream.receive_some(1 << 20):
                received += chunk
                await trio.sleep(0.1)  # about 4 s in all: far longer than one send may wait
        assert received.endswith(big)

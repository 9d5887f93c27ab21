"""Inputs from URLs, against a real HTTP server on loopback (trio sockets, hand-written responses)."""

from __future__ import annotations

import random
from functools import partial

import pytest
import trio

from jobs import InputSpec
from storage import HttpInput, InputRegistry, InvalidSource, NotFound, StorageError, TooLarge, Unavailable

BIG = random.Random(5).randbytes(3 << 20)


def _response(status: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    head = {"Content-Length": str(len(body)), **(headers or {})}
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in head.items()), "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + body


async def _handler(stream: trio.SocketStream) -> None:
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        request += chunk
    path = request.split(b" ")[1].decode()
    try:
        if path == "/hello":
            await stream.send_all(_response("200 OK", b"hello world\n"))
        elif path == "/big":
            await stream.send_all(_response("200 OK", BIG))
        elif path == "/big-chunked":  # no Content-Length: the limit must hold while streaming
            await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            for i in range(0, len(BIG), 65536):
                piece = BIG[i: i + 65536]
                await stream.send_all(b"%x\r\n" % len(piece) + piece + b"\r\n")
            await stream.send_all(b"0\r\n\r\n")
        elif path == "/redirect":
            await stream.send_all(_response("302 Found", headers={"Location": "/hello"}))
        elif path == "/error":
            await stream.send_all(_response("503 Service Unavailable", b"busy"))
        elif path == "/forbidden":
            await stream.send_all(_response("403 Forbidden", b"no"))
        elif path == "/stall":
            await trio.sleep_forever()
        elif path == "/cut":  # promises more than it sends
            await stream.send_all(_response("200 OK", b"x" * 100)[:-50])
        else:
            await stream.send_all(_response("404 Not Found", b"nothing here"))
    except trio.BrokenResourceError:
        pass  # the client hung up early (size limit): that is the point of some tests
    finally:
        await stream.aclose()


@pytest.fixture
async def server(nursery):
    listeners = await nursery.start(partial(trio.serve_tcp, _handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def http() -> HttpInput:
    return HttpInput(allow_private=True, stall_timeout=1.0)


async def test_download_follows_redirects_and_writes_the_file(server, http, tmp_path):
    assert http.handles(f"{server}/hello") and http.handles("https://example.com/x") and not http.handles("Qm")
    await http.fetch(f"{server}/redirect", tmp_path / "hello", max_bytes=100)
    assert (tmp_path / "hello").read_bytes() == b"hello world\n"
    await http.fetch(f"{server}/big-chunked", tmp_path / "big", max_bytes=len(BIG))
    assert (tmp_path / "big").read_bytes() == BIG


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
async def test_size_limit_stops_the_download(server, http, tmp_path, path):
    with pytest.raises(TooLarge) as info:
        await http.fetch(f"{server}{path}", tmp_path / "big", max_bytes=1 << 20)
    assert info.value.limit == 1 << 20 and f"{server}{path}" in str(info.value)
    assert not (tmp_path / "big").exists()


async def test_http_errors_are_translated(server, http, tmp_path):
    with pytest.raises(NotFound, match="HTTP 404"):
        await http.fetch(f"{server}/missing", tmp_path / "x", max_bytes=100)
    with pytest.raises(Unavailable, match="HTTP 503"):
        await http.fetch(f"{server}/error", tmp_path / "x", max_bytes=100)
    with pytest.raises(StorageError, match="HTTP 403") as info:
        await http.fetch(f"{server}/forbidden", tmp_path / "x", max_bytes=100)
    assert not info.value.retryable
    with pytest.raises(Unavailable, match="broke"):
        await http.fetch(f"{server}/cut", tmp_path / "x", max_bytes=1000)
    with pytest.raises(Unavailable, match="silent"):
        await http.fetch(f"{server}/stall", tmp_path / "x", max_bytes=100)
    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(Unavailable, match="cannot connect"):
        await http.fetch(f"http://127.0.0.1:{port}/x", tmp_path / "x", max_bytes=100)
    assert not (tmp_path / "x").exists()


async def test_private_addresses_are_refused_by_default(server, tmp_path):
    strict = HttpInput()
    for url in [f"{server}/hello", "http://localhost:1/x", "http://169.254.169.254/computeMetadata/v1/",
                "http://10.0.0.1/x", "http://[::1]:1/x"]:
        with pytest.raises(InvalidSource, match="local or private"):
            await strict.fetch(url, tmp_path / "x", max_bytes=100)


async def test_slow_input_fails_within_the_deadline_naming_it(server, http, tmp_path):
    registry = InputRegistry([http])
    inputs = [InputSpec(source=f"{server}/hello", path="/in/a"), InputSpec(source=f"{server}/stall", path="/in/b")]
    start = trio.current_time()
    with pytest.raises(Unavailable, match=rf"input 1 \({server}/stall → /in/b\).*0.5 s input deadline"):
        await registry.prepare_inputs(inputs, tmp_path, deadline=0.5, max_bytes=1000)
    assert trio.current_time() - start < 1.5
    assert (tmp_path / "0").read_bytes() == b"hello world\n"  # the caller's cleanup removes the execution dir
    assert not (tmp_path / "1").exists()

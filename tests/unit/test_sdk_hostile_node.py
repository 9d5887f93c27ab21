"""The SDK against a node that answers without end: a body larger than any real answer, an event line that never
ends, an answer trickled a byte at a time. Each call ends, with an error, within its caps and timeouts; both
clients, against a small HTTP server of the test's own (httpx's timeouts apply to each read, so only real
sockets show a trickle)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

import shoal
from jobs.model import Job
from jobs.spec import JobSpec
from jobs.states import JobState
from jobs.views import JobDescription
from shoal import ClientKey, ConnectionFailed, ShoalAPIError, WaitTimeout
from shoal._sse import EventReader, LineSplitter, SSEParser

CAP = 64_000  # the answer cap the tests set (100 records of 640 bytes): the server sends 64 times more
BIG = 64 * CAP
TRICKLE_FOR = 10.0  # seconds a trickled answer lasts (then it ends, well formed) unless the client hangs up
SLOW_BYTES, SLOW_CHUNK, SLOW_RATE = 1024 * 1024, 64 * 1024, 512 * 1024  # 1 MiB at 512 KiB/s: 2 s


def running(job_id: str) -> bytes:
    job = Job(id=job_id, owner="c-x", spec=JobSpec.model_validate({"engine": {"name": "noop"}}),
              state=JobState.RUNNING, created_at=1.0, updated_at=1.0)
    return JobDescription(job=job).model_dump_json().encode()


class Hostile(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    asked: dict[str, int] = {}

    def log_message(self, *args: Any) -> None:
        pass

    def chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n" % len(data) + data + b"\r\n")
        self.wfile.flush()

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        job = path.split("/")[3]
        self.asked[job] = self.asked.get(job, 0) + 1
        if job.startswith("j-later") and self.asked[job] == 1:  # answered at once the first time, trickled after
            body = running(job)
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream" if path.endswith("/events") else "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        try:
            if job.startswith("j-slow"):  # a large answer over a slow link: steady, and longer than the timeout
                for _ in range(SLOW_BYTES // SLOW_CHUNK):
                    self.chunk(b" " * SLOW_CHUNK)  # JSON may start with white space
                    time.sleep(SLOW_CHUNK / SLOW_RATE)
                self.chunk(running(job))
            elif job.startswith(("j-trickle", "j-later")):
                until = time.monotonic() + TRICKLE_FOR
                while time.monotonic() < until:
                    self.chunk(b" ")
                    time.sleep(0.1)
                self.chunk(running(job))
            else:  # j-big: far more than the cap, a JSON string, a log or one event line that goes on
                self.chunk(b"data: " if path.endswith("/events") else b'{"job": {"id": "')
                for _ in range(BIG // CAP):
                    self.chunk(b"A" * CAP)
            self.chunk(b"")
        except OSError:  # the client hung up
            pass


@pytest.fixture(scope="module")
def node() -> Iterator[str]:
    for port in range(65500, 66000):
        try:
            server = ThreadingHTTPServer(("127.0.0.1", port), Hostile)
            break
        except OSError:
            continue
    else:
        raise RuntimeError("no free port in 65500-65999")
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def small_caps(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("shoal._client.MAX_RECORD_BYTES", CAP // 100)
    monkeypatch.setattr("shoal._sse.MAX_LINE", CAP)


async def call(kind: str, url: str, name: str, *args: Any, client_timeout: float = 0.5, **kwargs: Any) -> Any:
    if kind == "sync":
        with shoal.Client(url, key=ClientKey.generate(), timeout=client_timeout) as client:
            client.stream_retry_delays = (0.0,) * 5
            result = getattr(client, name)(*args, **kwargs)
            return list(result) if name == "events" else result
    async with shoal.AsyncClient(url, key=ClientKey.generate(), timeout=client_timeout) as client:
        client.stream_retry_delays = (0.0,) * 5
        result = getattr(client, name)(*args, **kwargs)
        return [e async for e in result] if name == "events" else await result


@pytest.mark.parametrize("kind", ["sync", "async"])
@pytest.mark.parametrize("name", ["describe", "logs", "events"])
async def test_an_answer_past_the_cap_is_refused_as_it_comes(node: str, kind: str, name: str) -> None:
    with pytest.raises(ShoalAPIError) as info:
        await call(kind, node, name, "j-big")
    assert info.value.code == "too_large" and f"over {CAP} bytes" in str(info.value)


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_trickled_answer_ends_at_the_clients_timeout(node: str, kind: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match="timed out"):
        await call(kind, node, "describe", "j-trickle")
    assert time.monotonic() - started < TRICKLE_FOR / 2


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_large_answer_over_a_slow_link_is_read_past_the_clients_timeout(
        node: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The timeout bounds waiting, not a steady answer's length: a page of 1,000 jobs over a slow link was refused
    once the whole of it took longer than the timeout (2.6 MiB at 640 KiB/s, timeout 2 s)."""
    monkeypatch.setattr("shoal._client.MAX_RECORD_BYTES", SLOW_BYTES)
    description = await call(kind, node, "describe", f"j-slow-{kind}")
    assert description.job.id == f"j-slow-{kind}"


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_a_wait_on_a_trickling_node_ends_at_its_timeout(node: str, kind: str) -> None:
    started = time.monotonic()
    with pytest.raises(ConnectionFailed, match="timed out"):  # not one description came: nothing to show
        await call(kind, node, "wait", "j-trickle", timeout=0.5, poll=0.5)
    assert time.monotonic() - started < TRICKLE_FOR / 2
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as info:  # the first poll answered, the next trickled
        await call(kind, node, "wait", f"j-later-{kind}", timeout=0.5, poll=0.5)
    assert time.monotonic() - started < TRICKLE_FOR / 2
    assert info.value.description.job.state is JobState.RUNNING


def test_lines_are_cut_whatever_the_chunks() -> None:
    splitter = LineSplitter()
    chunks = [b"data: a", b"b\r", b"\nid: 1\r", b"\r", b"data: \xc3", b"\xa9\n\n", b"x"]
    assert [line for chunk in chunks for line in splitter.feed(chunk)] == ["data: ab", "id: 1", "", "data: é", ""]
    reader = EventReader(None)
    assert reader.read(b"event: end\ndata: {}") == []
    assert reader.read(b"\n\n") == ["end"]


def test_a_message_of_many_data_lines_past_the_cap_is_refused() -> None:
    parser = SSEParser()
    with pytest.raises(ShoalAPIError, match=f"a message over {CAP} bytes"):
        for _ in range(CAP):
            parser.feed("data: xx")

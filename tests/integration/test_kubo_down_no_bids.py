"""A node whose Kubo stops answering takes no job until it is back, against a real ``shoal serve`` and a
stand-in for Kubo's RPC that can be stopped and started: it once kept bidding, ran each job and failed it
for want of somewhere to put its results, and ``/readyz`` said ready."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from shoal import Client, ClientKey
from tests.integration.rogue import free_base_port
from tests.integration.single_node import noop_node

pytestmark = pytest.mark.slow

PORT = free_base_port(1)
API = f"http://127.0.0.1:{PORT}"
KUBO_PORT = PORT + 2
NOOP = {"engine": {"name": "noop"}}
NOTICED_WITHIN = 20.0  # the node looks every NODE_INFO_INTERVAL (10 s)


class _Kubo(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # every RPC call answers as `version` does (a noop node publishes nothing)
        body = b'{"Version": "0.0.0-stand-in"}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class StandInKubo:
    def __init__(self) -> None:
        self.server: ThreadingHTTPServer | None = None

    def start(self) -> None:
        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", KUBO_PORT), _Kubo)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
        self.server = None


@pytest.fixture
def kubo() -> Iterator[StandInKubo]:
    kubo = StandInKubo()
    kubo.start()
    yield kubo
    if kubo.server is not None:
        kubo.stop()


@pytest.fixture
def node(tmp_path: Path, kubo: StandInKubo) -> Iterator[Path]:
    args = ["--ipfs-api", f"http://127.0.0.1:{KUBO_PORT}", "--listen", f"/ip4/127.0.0.1/tcp/{PORT + 1}"]
    with noop_node(tmp_path, PORT, args=args):
        yield tmp_path


def until(check: Callable[[], bool], within: float) -> None:
    deadline = time.monotonic() + within
    while not check():
        assert time.monotonic() < deadline, f"not within {within:g} s"
        time.sleep(0.2)


def readyz() -> httpx.Response:
    return httpx.get(f"{API}/readyz", timeout=10)


def test_a_node_whose_kubo_is_down_bids_on_nothing_until_it_is_back(node: Path, kubo: StandInKubo) -> None:
    client = Client(API, key=ClientKey.load_or_create(node / "client.key"))
    assert client.run(NOOP, timeout=30).job.state == "completed"
    assert readyz().status_code == 200

    kubo.stop()
    until(lambda: readyz().status_code == 503, NOTICED_WITHIN)
    error = readyz().json()["error"]
    assert error["code"] == "unavailable" and f"127.0.0.1:{KUBO_PORT}" in error["message"], error
    job = client.submit(NOOP, cache=False).job.id
    time.sleep(3)
    waiting = client.describe(job)
    assert waiting.job.state == "pending" and waiting.executions == [], waiting  # no bid, so nothing ran

    kubo.start()
    until(lambda: readyz().status_code == 200, NOTICED_WITHIN)
    assert client.wait(job, timeout=30).job.state == "completed"
    client.close()

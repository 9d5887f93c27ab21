"""``shoal ui``'s proxy with a fake node: it signs what it forwards as the SDK does, and serves only
its own page (Host, Origin and the per-session token); the live stream merges the node's event streams."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import trio

from cli.ui import guard
from cli.ui.live import Live, parse_ids
from cli.ui.proxy import MAX_BODY, Dashboard
from shoal import AsyncClient
from shoal._auth import (
    HEADER_KEY,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    ClientKey,
    b64decode,
    canonical_request,
)

PORT = 8790
OWN = f"http://127.0.0.1:{PORT}"
NODE = "http://node.test:8700"
TOKEN = "t0ken-for-tests"
JOB = "j-" + "a" * 32
SWEEP = "s-" + "b" * 32


class FakeNode:
    """Records what reaches the node and answers like it; ``routes``: path -> (status, content type, body)."""

    def __init__(self, key: ClientKey) -> None:
        self.key = key
        self.seen: list[httpx.Request] = []
        self.routes: dict[str, tuple[int, str, bytes]] = {
            "/v1/jobs": (200, "application/json", json.dumps({"jobs": [], "total": 0}).encode()),
            f"/v1/jobs/{JOB}/cancel": (200, "application/json", b'{"job": {"id": "%s"}}' % JOB.encode()),
            f"/v1/jobs/{JOB}/events": (200, "text/event-stream",
                                       b'id: 1\nevent: Created\ndata: {"seq": 1, "kind": "Created"}\n\n'
                                       b'id: 2\nevent: Completed\ndata: {"seq": 2, "kind": "Completed"}\n\n'
                                       b'event: end\ndata: {"state": "completed"}\n\n'),
            f"/v1/sweeps/{SWEEP}/events": (404, "application/json",
                                           b'{"error": {"code": "not_found", "message": "no such sweep"}}'),
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(request)
        status, content_type, body = self.routes.get(request.url.path, (404, "application/json", b"{}"))
        return httpx.Response(status, headers={"content-type": content_type}, content=_chunks(body))

    def signed_by_key(self, request: httpx.Request) -> bool:
        """The request carries a valid signature by ``key`` over its method, host, target and body."""
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        h = request.headers
        if b64decode(h[HEADER_KEY]) != self.key.public_key:
            return False
        message = canonical_request(request.method, h["host"], request.url.raw_path, h[HEADER_TIMESTAMP],
                                    h[HEADER_NONCE], request.content)
        try:
            Ed25519PublicKey.from_public_bytes(self.key.public_key).verify(b64decode(h[HEADER_SIGNATURE]), message)
        except InvalidSignature:
            return False
        return True


async def _chunks(body: bytes):
    """A body that arrives as a real node's does: streamed, not read in advance."""
    for line in body.splitlines(keepends=True):
        yield line


@pytest.fixture
def node() -> FakeNode:
    return FakeNode(ClientKey.generate())


@pytest.fixture
async def browser(node: FakeNode):
    """An HTTP client standing for the browser, talking to a Dashboard whose node is ``node``."""
    sdk = AsyncClient(NODE, key=node.key, transport=httpx.MockTransport(node.handle))
    dashboard = Dashboard(sdk._http, port=PORT, token=TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=dashboard), base_url=OWN) as client:
        yield client
    await sdk.aclose()


def _api(**extra: str) -> dict[str, str]:
    return {guard.TOKEN_HEADER: TOKEN, **extra}


# -- the decisions -------------------------------------------------------------------------------------


def test_only_the_proxys_own_names_are_answered() -> None:
    assert guard.check_host(f"127.0.0.1:{PORT}", "127.0.0.1", PORT) is None
    assert guard.check_host(f"localhost:{PORT}", "127.0.0.1", PORT) is None
    for host in (f"evil.example:{PORT}", "127.0.0.1:1", "127.0.0.1", "", None):
        refusal = guard.check_host(host, "127.0.0.1", PORT)
        assert refusal is not None and refusal.status == 403
    assert guard.check_host(f"127.9.8.7:{PORT}", "127.9.8.7", PORT) is None  # a session's own address
    for host in (f"127.0.0.1:{PORT}", f"localhost:{PORT}"):  # which is not that of this session
        assert guard.check_host(host, "127.9.8.7", PORT) is not None


def test_each_session_is_served_on_a_loopback_address_of_its_own() -> None:
    """Served on 127.0.0.1:8790 by default, the dashboard had an origin any local user could prepare a page for:
    a service worker (or a cached script) planted there while no dashboard ran took the next session's key."""
    from cli.ui.server import session_address

    addresses = {session_address() for _ in range(20)}
    assert len(addresses) == 20 and all(a.startswith("127.") and a != "127.0.0.1" for a in addresses), addresses
    dashboard = Dashboard(httpx.AsyncClient(), port=PORT, address="127.9.8.7", token=TOKEN)
    assert dashboard.url() == f"http://127.9.8.7:{PORT}/#key={TOKEN}"


def test_a_caller_needs_the_token_and_state_changes_need_the_own_origin() -> None:
    host = f"127.0.0.1:{PORT}"
    ok = guard.check_caller
    assert ok("GET", host, None, None, TOKEN, TOKEN) is None  # a same-origin GET carries no Origin
    assert ok("GET", host, OWN, "same-origin", TOKEN, TOKEN) is None
    assert ok("POST", host, OWN, "same-origin", TOKEN, TOKEN) is None
    assert ok("GET", host, None, None, None, TOKEN).status == 403
    assert ok("GET", host, None, None, "wrong", TOKEN).status == 403
    assert ok("GET", host, "https://evil.example", "cross-site", TOKEN, TOKEN).status == 403
    assert ok("GET", host, None, "cross-site", TOKEN, TOKEN).status == 403
    assert ok("POST", host, None, None, TOKEN, TOKEN).status == 403  # no Origin on a POST: not our page
    assert ok("DELETE", host, "http://127.0.0.1:1", None, TOKEN, TOKEN).status == 403
    assert ok("POST", host, "null", None, TOKEN, TOKEN).status == 403  # a sandboxed frame or a file


def test_only_the_nodes_api_paths_are_proxied() -> None:
    assert guard.upstream_path("/api/v1/jobs") == "/v1/jobs"
    assert guard.upstream_path(f"/api/v1/jobs/{JOB}/logs") == f"/v1/jobs/{JOB}/logs"
    assert guard.upstream_path("/api/metrics") == "/metrics"
    for path in ("/api/v1/../../etc/passwd", "/api/v1/jobs/..", "/api/docs", "/api/openapi.json", "/api/",
                 "/api/v1/jobs/a%2Fb", "/v1/jobs", "/api//v1/jobs", "/api/v1/jobs/", "/api/v1/jobs\n"):
        assert guard.upstream_path(path) is None, path


def test_live_ids_are_checked() -> None:
    assert parse_ids(f"{JOB},{SWEEP},{JOB}") == [JOB, SWEEP]
    assert parse_ids("") == []
    for bad in ("x", f"{JOB},../v1/node", "j-" + "A" * 32):
        with pytest.raises(ValueError):
            parse_ids(bad)
    with pytest.raises(ValueError, match="at most"):
        parse_ids(",".join(f"j-{i:032x}" for i in range(101)))


# -- the app ---------------------------------------------------------------------------------------------


async def test_the_key_is_only_in_the_printed_addresss_fragment_never_in_a_cookie(browser: httpx.AsyncClient,
                                                                                    node: FakeNode) -> None:
    """The proxy answers every user of the machine on 127.0.0.1, and held the power of the owner's key: the key
    (the session token) once went into a cookie, which a browser sends to every port of 127.0.0.1, so to any other
    local server the tab visits. Now the page holds no secret, the key is in the printed address's fragment (which
    no server is sent), and a cookie opens nothing."""
    async with httpx.AsyncClient() as http:
        url = httpx.URL(Dashboard(http, port=PORT, token=TOKEN).url())
    assert (url.host, url.port, url.path, url.query, url.fragment) == ("127.0.0.1", PORT, "/", b"", f"key={TOKEN}")
    for path in ("/", "/index.html", f"/?key={TOKEN}", "/?key=wrong"):
        page = await browser.get(path)
        assert page.status_code == 200 and TOKEN not in page.text and "set-cookie" not in page.headers
        assert page.headers["referrer-policy"] == "no-referrer"  # the key /ui/live takes in its address stays here
    for cookie in (f"shoal-ui-{PORT}={TOKEN}", f"token={TOKEN}", TOKEN):  # the old session cookie, or a guess at it
        assert (await browser.get("/api/v1/jobs", headers={"Cookie": cookie})).status_code == 403
        assert (await browser.post(f"/api/v1/jobs/{JOB}/cancel", headers={"Cookie": cookie, "Origin": OWN})
                ).status_code == 403
        assert (await browser.get(f"/ui/live?ids={JOB}", headers={"Cookie": cookie})).status_code == 403
    assert node.seen == []


async def test_the_page_holds_no_token_and_forbids_framing(browser: httpx.AsyncClient) -> None:
    page = await browser.get("/")
    assert page.status_code == 200
    assert 'name="shoal-ui-token"' not in page.text and TOKEN not in page.text
    assert page.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    script = await browser.get("/static/app.js")
    assert script.status_code == 200 and script.headers["content-type"] == "text/javascript"
    assert (await browser.get("/static/../proxy.py")).status_code == 404
    assert (await browser.get("/static/nope.js")).status_code == 404


async def test_api_calls_reach_the_node_signed_with_the_users_key(browser: httpx.AsyncClient,
                                                                  node: FakeNode) -> None:
    answer = await browser.get("/api/v1/jobs?limit=5&state=running", headers=_api(Cookie="secret=1"))
    assert answer.status_code == 200 and answer.json() == {"jobs": [], "total": 0}
    [request] = node.seen
    assert str(request.url) == f"{NODE}/v1/jobs?limit=5&state=running"
    assert request.headers["host"] == "node.test:8700"
    assert node.signed_by_key(request)
    assert "cookie" not in request.headers and guard.TOKEN_HEADER not in request.headers  # nothing of the browser's


async def test_a_cancel_from_the_page_is_signed_with_its_body(browser: httpx.AsyncClient, node: FakeNode) -> None:
    answer = await browser.post(f"/api/v1/jobs/{JOB}/cancel", headers=_api(Origin=OWN), content=b"{}")
    assert answer.status_code == 200 and answer.json()["job"]["id"] == JOB
    [request] = node.seen
    assert request.method == "POST" and request.content == b"{}" and node.signed_by_key(request)


@pytest.mark.parametrize("headers", [
    {"Origin": "https://evil.example", guard.TOKEN_HEADER: TOKEN},  # another site's page (a form post, a fetch)
    {guard.TOKEN_HEADER: TOKEN},  # no Origin: not a browser page of ours
    {"Origin": OWN, guard.TOKEN_HEADER: "guessed"},
    {"Origin": OWN, guard.TOKEN_HEADER: ""},
    {"Origin": OWN},
])  # fmt: skip
async def test_a_cancel_from_elsewhere_is_refused_and_never_reaches_the_node(browser: httpx.AsyncClient,
                                                                            node: FakeNode, headers) -> None:
    answer = await browser.post(f"/api/v1/jobs/{JOB}/cancel", headers=headers)
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "forbidden"
    assert node.seen == []


async def test_reads_without_the_token_or_from_another_origin_are_refused(browser: httpx.AsyncClient,
                                                                         node: FakeNode) -> None:
    assert (await browser.get("/api/v1/jobs")).status_code == 403
    assert (await browser.get("/api/v1/jobs", headers=_api(Origin="https://evil.example"))).status_code == 403
    assert (await browser.get(f"/ui/live?ids={JOB}")).status_code == 403
    assert node.seen == []


async def test_a_rebound_host_name_is_refused_even_for_the_page(browser: httpx.AsyncClient, node: FakeNode) -> None:
    for path in ("/", "/api/v1/jobs"):
        answer = await browser.get(path, headers=_api(Host=f"evil.example:{PORT}"))
        assert answer.status_code == 403 and TOKEN not in answer.text
    assert node.seen == []


async def test_paths_outside_the_api_are_not_proxied(browser: httpx.AsyncClient, node: FakeNode) -> None:
    for path in ("/api/docs", "/api/v1/jobs/%2E%2E/x", "/api/v1/jobs/%2E%2E/%2E%2E/node", "/ui/other",
                 "/api/v1/jobs%0a"):  # a 500 once: a regex's $ matches before a final newline
        assert (await browser.get(path, headers=_api())).status_code == 404, path
    assert node.seen == []


async def test_a_body_over_the_limit_is_refused(browser: httpx.AsyncClient, node: FakeNode) -> None:
    answer = await browser.post("/api/v1/jobs", headers=_api(Origin=OWN), content=b"x" * (MAX_BODY + 1))
    assert answer.status_code == 413 and node.seen == []


async def test_an_unreachable_node_is_a_502_saying_so(node: FakeNode) -> None:
    def down(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    sdk = AsyncClient(NODE, key=node.key, transport=httpx.MockTransport(down))
    app = Dashboard(sdk._http, port=PORT, token=TOKEN)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=OWN) as client:
        answer = await client.get("/api/v1/jobs", headers=_api())
    assert answer.status_code == 502
    assert "did not answer" in answer.json()["error"]["message"]


async def test_live_merges_the_nodes_event_streams_and_says_which_were_refused(node: FakeNode) -> None:
    sdk = AsyncClient(NODE, key=node.key, transport=httpx.MockTransport(node.handle))
    sent: list[dict] = []
    done = trio.Event()

    async def send(message: dict) -> None:
        sent.append(message)
        body = b"".join(m.get("body", b"") for m in sent)
        if b"event: end" in body and b"event: gone" in body:
            done.set()

    async def receive() -> dict:
        await done.wait()
        return {"type": "http.disconnect"}

    with trio.fail_after(10):
        await Live(sdk._http, [JOB, SWEEP])(receive, send)
    await sdk.aclose()
    assert sent[0]["status"] == 200 and (b"content-type", b"text/event-stream") in sent[0]["headers"]
    stream = b"".join(m.get("body", b"") for m in sent[1:]).decode()
    messages = [m for m in stream.split("\n\n") if m.startswith("event")]
    parsed = [(m.split("\n")[0].removeprefix("event: "), json.loads(m.split("\n")[1].removeprefix("data: ")))
              for m in messages]
    assert ("event", {"id": JOB, "event": {"seq": 1, "kind": "Created"}}) in parsed
    assert ("event", {"id": JOB, "event": {"seq": 2, "kind": "Completed"}}) in parsed
    assert ("end", {"id": JOB, "state": "completed"}) in parsed
    assert ("gone", {"id": SWEEP, "status": 404, "message": "no such sweep"}) in parsed
    assert all(node.signed_by_key(r) for r in node.seen)


def test_shoal_ui_without_the_node_extra_says_so_in_one_line(tmp_path: Path) -> None:
    from tests.unit.test_thin_install import run_thin

    result = run_thin("from cli.main import main; sys.argv[1:] = ['ui']; main()", home=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stderr.splitlines() == [
        "Error: shoal ui needs the 'node' extra: pip install 'shoal[node]' (missing here: trio, hypercorn)"]


async def _list_events(live: Live, change: Callable[[], None]) -> list[bytes]:
    """What ``live`` streams while the list stays as the page shows it (none may say "list"), then once
    ``change`` has changed it: the stream up to its first "list" event."""
    sent: list[bytes] = []
    gone = trio.Event()

    async def send(message: dict) -> None:
        sent.append(message.get("body", b""))

    async def receive() -> dict:
        await gone.wait()
        return {"type": "http.disconnect"}

    async with trio.open_nursery() as nursery:
        nursery.start_soon(live, receive, send)
        await trio.sleep(0.2)  # many looks at the list: the same as the page shows
        assert b"event: list" not in b"".join(sent)
        change()
        with trio.fail_after(5):
            while b"event: list" not in b"".join(sent):
                await trio.sleep(0.01)
        gone.set()
    return sent


async def test_live_says_the_list_changed_only_when_it_differs_from_what_the_page_shows(
        node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    import cli.ui.live

    monkeypatch.setattr(cli.ui.live, "WATCH_EVERY", 0.01)
    listed = {"jobs": [{"id": JOB}], "total": 1}
    node.routes["/v1/jobs"] = (200, "application/json", json.dumps(listed).encode())
    sdk = AsyncClient(NODE, key=node.key, transport=httpx.MockTransport(node.handle))
    newer = "j-" + "c" * 32

    def change() -> None:
        node.routes["/v1/jobs"] = (200, "application/json", json.dumps({"jobs": [{"id": newer}], "total": 2}).encode())

    sent = await _list_events(Live(sdk._http, [], "jobs", f"1:{JOB}"), change)
    await sdk.aclose()
    assert f'event: list\ndata: {{"total": 2, "newest": "{newer}"}}'.encode() in b"".join(sent)


async def test_live_watches_the_list_as_the_page_filters_it(node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """A page showing only running jobs compares with the running jobs, not with every job: no reload loop
    while nothing it shows changed, a reload when a running job appears; parameters it does not know stay."""
    import cli.ui.live

    monkeypatch.setattr(cli.ui.live, "WATCH_EVERY", 0.01)
    node.routes["/v1/jobs"] = (200, "application/json", json.dumps({"jobs": [{"id": "j-" + "e" * 32}],
                                                                    "total": 7}).encode())
    running = {"jobs": [{"id": JOB}], "total": 1}

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/jobs" and request.url.params.get("state") == "running":
            node.seen.append(request)
            return httpx.Response(200, json=running)
        return node.handle(request)

    sdk = AsyncClient(NODE, key=node.key, transport=httpx.MockTransport(handle))
    newer = "j-" + "c" * 32
    filters = {"state": "running", "selector": "zone=eu", "limit": "1000"}
    sent = await _list_events(Live(sdk._http, [], "jobs", f"1:{JOB}", filters),
                              lambda: running.update(jobs=[{"id": newer}], total=2))
    await sdk.aclose()
    assert f'event: list\ndata: {{"total": 2, "newest": "{newer}"}}'.encode() in b"".join(sent)
    asked = [r for r in node.seen if r.url.path == "/v1/jobs"]
    assert asked and all(dict(r.url.params) == {"limit": "1", "state": "running", "selector": "zone=eu"}
                         for r in asked)


def _cut_short(node: FakeNode, first: bytes, content_type: str) -> tuple[AsyncClient, Dashboard]:
    """A dashboard whose node sends ``first``, then goes away mid-answer; and the SDK client to close."""
    async def cut(request: httpx.Request):
        yield first
        raise httpx.ReadError("connection reset", request=request)

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": content_type}, content=cut(request))

    sdk = AsyncClient(NODE, key=node.key, transport=httpx.MockTransport(handler))
    return sdk, Dashboard(sdk._http, port=PORT, token=TOKEN)


async def test_a_node_that_goes_away_mid_answer_ends_the_answer_there(node: FakeNode) -> None:
    sdk, app = _cut_short(node, b"line 1\n", "text/plain")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=OWN) as client:
        answer = await client.get(f"/api/v1/jobs/{JOB}/logs?follow=true", headers=_api())
    await sdk.aclose()
    assert answer.status_code == 200 and answer.text == "line 1\n"


def test_shoal_ui_on_a_port_in_use_says_so_in_one_line(tmp_path: Path) -> None:
    import socket
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))  # on every address: the dashboard's own is one at random
        taken.listen()
        port = taken.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(repo), "SHOAL_HOME": str(tmp_path), "SHOAL_API": "http://127.0.0.1:9"}
        result = subprocess.run([sys.executable, "-m", "cli.main", "ui", "--port", str(port)], capture_output=True,
                                text=True, env=env, cwd=repo, timeout=60)
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"Error: cannot serve the dashboard on port {port}: Address already in use"]


# -- a hostile or hung node ----------------------------------------------------------------------------------

BLOCK = 64 * 1024


def _endless(pulled: list[int], first: bytes = b"", block: bytes = b"x" * BLOCK, end: int = 16 * 1024 * 1024):
    """A body without end (one that ends past 16 MiB, so a proxy reading it all still stops), counting in
    ``pulled[-1]`` the bytes the proxy has read of it."""
    pulled.append(0)

    async def body():
        yield first
        pulled[-1] += len(first)
        while pulled[-1] < end:
            yield block
            pulled[-1] += len(block)

    return body()


async def _run_live(live: Live, done: Callable[[bytes], bool]) -> bytes:
    """What ``live`` streams until ``done(stream so far)``; then the browser leaves."""
    sent: list[bytes] = []
    gone = trio.Event()

    async def send(message: dict) -> None:
        sent.append(message.get("body", b""))
        if done(b"".join(sent)):
            gone.set()

    async def receive() -> dict:
        await gone.wait()
        return {"type": "http.disconnect"}

    with trio.fail_after(20):
        await live(receive, send)
    return b"".join(sent)


async def test_a_node_streaming_an_endless_event_or_error_is_dropped_having_read_little(
        node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    """An event stream that is one endless line, or an error without end, was read whole: a hostile node took
    `shoal ui` from 65 MB to 2.2 GB in 8 s. Each is read up to its limit, then dropped for good; a sound stream
    (keep-alives past the limit in all, \\r\\n line ends cut between chunks) is relayed as before."""
    import cli.ui.live

    monkeypatch.setattr(cli.ui.live, "RETRY_DELAYS", (0.01,) * 4)
    line, error, sound = JOB, SWEEP, "j-" + "d" * 32
    pulled: dict[str, list[int]] = {line: [], error: []}
    keepalives = b": keep-alive\r\n\r\n" * (2 * cli.ui.live.MAX_EVENT // 16)
    good = keepalives + b'id: 7\r\nevent: Created\r\ndata: {"seq": 7}\r\n\r\nevent: end\r\ndata: {"state": "x"}\r\n\r\n'

    async def cut(body: bytes):  # in pieces of 999 bytes: some \r\n are cut in two
        for i in range(0, len(body), 999):
            yield body[i:i + 999]

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path == f"/v1/jobs/{line}/events":
            return httpx.Response(200, headers={"content-type": "text/event-stream"},
                                  content=_endless(pulled[line], first=b"data: "))
        if request.url.path == f"/v1/sweeps/{error}/events":
            return httpx.Response(500, headers={"content-type": "text/plain"}, content=_endless(pulled[error]))
        return httpx.Response(200, headers={"content-type": "text/event-stream"},
                              content=cut(good))

    sdk = AsyncClient(NODE, key=node.key, transport=httpx.MockTransport(handle))
    stream = await _run_live(Live(sdk._http, [line, error, sound]), lambda s: s.count(b"event: gone") == 2 and
                             b"event: end" in s)
    await sdk.aclose()
    messages = [m.split("\n") for m in stream.decode().split("\n\n") if m.startswith("event")]
    parsed = [(m[0].removeprefix("event: "), json.loads(m[1].removeprefix("data: "))) for m in messages]
    assert ("gone", {"id": line, "status": 502,
                     "message": f"the node sent an event over {cli.ui.live.MAX_EVENT} bytes: stream dropped"}) in parsed
    assert ("gone", {"id": error, "status": 500, "message": "x" * 200}) in parsed
    assert [p for p in parsed if p[1]["id"] == sound] == [("event", {"id": sound, "event": {"seq": 7}}),
                                                          ("end", {"id": sound, "state": "x"})]
    assert len(pulled[line]) == 1 and pulled[line][0] <= cli.ui.live.MAX_EVENT + 2 * BLOCK  # no reconnection
    assert len(pulled[error]) == 1 and pulled[error][0] <= cli.ui.live.MAX_ERROR + BLOCK


async def test_a_node_answering_an_endless_list_is_read_no_further_than_the_limit(
        node: FakeNode, monkeypatch: pytest.MonkeyPatch) -> None:
    import cli.ui.live

    monkeypatch.setattr(cli.ui.live, "WATCH_EVERY", 0.01)
    monkeypatch.setattr(cli.ui.live, "KEEPALIVE", 0.01)  # what the test looks at its count on
    pulled: list[int] = []

    def handle(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"content-type": "application/json"},
                              content=_endless(pulled, first=b'{"jobs": [{"id": "', block=b"a" * BLOCK))

    sdk = AsyncClient(NODE, key=node.key, transport=httpx.MockTransport(handle))
    stream = await _run_live(Live(sdk._http, [], "jobs", f"1:{JOB}"), lambda _: len(pulled) >= 3)
    await sdk.aclose()
    assert b"event: list" not in stream
    assert pulled and max(pulled) <= cli.ui.live.MAX_LIST + 2 * BLOCK


def _mute_node() -> tuple[str, trio.socket.SocketType]:
    """A node that takes connections and never answers (a hung process): a Unix socket (no port taken)."""
    import tempfile

    path = os.path.join(tempfile.mkdtemp(), "node.sock")  # short: a socket's path is at most 107 bytes
    sock = trio.socket.socket(trio.socket.AF_UNIX)
    return path, sock


async def test_a_node_that_never_answers_is_a_504_within_the_read_timeout(node: FakeNode,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    import cli.ui.proxy

    monkeypatch.setattr(cli.ui.proxy, "READ_TIMEOUT", 0.3)
    path, sock = _mute_node()
    with sock:
        await sock.bind(path)
        sock.listen()
        sdk = AsyncClient(NODE, key=node.key, transport=httpx.AsyncHTTPTransport(uds=path))
        app = Dashboard(sdk._http, port=PORT, token=TOKEN)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=OWN) as client:
            with trio.fail_after(10):  # it held the call for good
                answer = await client.get("/api/v1/jobs", headers=_api())
        await sdk.aclose()
    assert answer.status_code == 504 and "did not answer within 0.3 s" in answer.json()["error"]["message"]


async def test_a_browser_that_leaves_before_the_node_answers_ends_the_call_to_the_node(node: FakeNode) -> None:
    """A followed log waits for the node however long (no read timeout): the browser's leaving ends it, even
    before the node's first byte, and closes the connection to the node."""
    path, sock = _mute_node()
    reached, left, closed = trio.Event(), trio.Event(), trio.Event()

    async def mute() -> None:
        conn, _ = await sock.accept()
        with conn:
            await conn.recv(65536)  # the request
            reached.set()
            while await conn.recv(65536):
                pass
            closed.set()  # the proxy closed the connection

    asked = []

    async def receive() -> dict:
        asked.append(1)
        if len(asked) == 1:
            return {"type": "http.request", "body": b"", "more_body": False}
        await left.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        raise AssertionError(f"nothing is sent to a browser that has gone: {message}")

    scope = {"type": "http", "method": "GET", "path": f"/api/v1/jobs/{JOB}/logs", "query_string": b"follow=true",
             "headers": [(b"host", f"127.0.0.1:{PORT}".encode()), (guard.TOKEN_HEADER.encode(), TOKEN.encode())]}
    with sock:
        await sock.bind(path)
        sock.listen()
        sdk = AsyncClient(NODE, key=node.key, transport=httpx.AsyncHTTPTransport(uds=path))
        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(mute)
                nursery.start_soon(Dashboard(sdk._http, port=PORT, token=TOKEN), scope, receive, send)
                await reached.wait()
                left.set()
                await closed.wait()
        await sdk.aclose()


async def test_a_download_the_node_cuts_short_is_left_unfinished_not_ended_as_if_whole(node: FakeNode) -> None:
    """The proxy ended a cut answer cleanly, so the browser saved part of a results tar as the whole of it."""
    sdk, app = _cut_short(node, b"the first part of a tar", "application/x-tar")
    sent: list[dict] = []

    requests = [{"type": "http.request", "body": b"", "more_body": False}]

    async def receive() -> dict:
        if requests:
            return requests.pop()
        await trio.sleep_forever()  # the browser stays
        return {}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": f"/api/v1/jobs/{JOB}/results", "raw_path": b"",
             "query_string": b"", "headers": [(b"host", OWN.removeprefix("http://").encode()),
                                              (guard.TOKEN_HEADER.encode(), TOKEN.encode())]}
    with trio.fail_after(10):
        await app(scope, receive, send)
    await sdk.aclose()
    bodies = [m for m in sent if m["type"] == "http.response.body"]
    assert sent[0]["status"] == 200 and bodies and bodies[0]["body"] == b"the first part of a tar"
    assert all(m.get("more_body") for m in bodies)  # never said to be complete


def test_an_address_may_be_given_for_a_tunnel_but_only_a_loopback_one(tmp_path: Path) -> None:
    """An SSH tunnel (ssh -L 8790:127.0.0.1:8790) reaches a fixed address: --address 127.0.0.1 --port 8790."""
    import signal
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "SHOAL_HOME": str(tmp_path), "SHOAL_API": "http://127.0.0.1:9"}
    refused = subprocess.run([sys.executable, "-m", "cli.main", "ui", "--address", "0.0.0.0"], capture_output=True,
                             text=True, env=env, cwd=repo, timeout=60)
    assert refused.returncode == 2 and refused.stderr.startswith("Error: --address '0.0.0.0': a loopback address")
    ui = subprocess.Popen([sys.executable, "-m", "cli.main", "ui", "--address", "127.0.0.1"], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env, cwd=repo)
    try:
        assert ui.stdout.readline().startswith("Shoal dashboard on http://127.0.0.1:")
    finally:
        ui.send_signal(signal.SIGINT)
        ui.communicate(timeout=20)


def test_the_file_open_sends_the_browser_to_is_this_users_and_gone_with_the_session(tmp_path: Path) -> None:
    """The file holds the session's key; it was left in the temporary folder for good."""
    import signal
    import stat
    import subprocess
    import sys
    import time

    repo = Path(__file__).resolve().parents[2]
    record = tmp_path / "opened"
    browser = tmp_path / "browser"
    browser.write_text(f"#!/bin/sh\necho \"$1\" > {record}\n")
    browser.chmod(0o755)
    env = {**os.environ, "PYTHONPATH": str(repo), "SHOAL_HOME": str(tmp_path), "SHOAL_API": "http://127.0.0.1:9",
           "BROWSER": f"{browser} %s"}
    dashboard = subprocess.Popen([sys.executable, "-m", "cli.main", "ui", "--open"], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True, env=env, cwd=repo)
    try:
        deadline = time.monotonic() + 60
        while not record.exists() or not record.read_text().strip():
            assert time.monotonic() < deadline and dashboard.poll() is None, dashboard.stderr.read()
            time.sleep(0.1)
        opened = Path(record.read_text().strip().removeprefix("file://"))
        assert stat.S_IMODE(opened.stat().st_mode) == 0o600
        assert "#key=" in opened.read_text()
    finally:
        dashboard.send_signal(signal.SIGINT)
        dashboard.wait(timeout=30)
    assert not opened.exists()

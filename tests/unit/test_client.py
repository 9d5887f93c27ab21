"""The SDK (``shoal.Client`` and ``shoal.AsyncClient``) against a fake node on httpx.MockTransport.

The fake speaks the REST contract (signed requests, error bodies, long-poll, SSE, logs, tar
results) and can misbehave on demand: drop a connection after creating a job, break an event
stream in the middle of a message, refuse to finish a job. Every scenario runs on both clients.
"""

from __future__ import annotations

import inspect
import io
import json
import socket
import tarfile
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import httpx
import pytest
import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError

import shoal
from jobs.messages import NodeInfo
from jobs.model import RunResult
from jobs.spec import Resources
from jobs.views import Capacity, SubmitRequest
from shoal import (
    AuthenticationError,
    ClientKey,
    Conflict,
    ConnectionFailed,
    Event,
    EventKind,
    InvalidRequest,
    Job,
    JobDescription,
    JobList,
    JobSpec,
    JobState,
    NodeList,
    NodeStatus,
    NoResults,
    NotFound,
    PeerList,
    ServerError,
    ShoalAPIError,
    WaitTimeout,
)
from shoal._auth import (
    HEADER_KEY,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    b64decode,
    canonical_request,
    canonical_target,
    client_id_for,
)

API = "http://node.test:8700"
SPEC = {"engine": {"name": "python", "code": "print(42)"}}


# -- the fake node ---------------------------------------------------------------------------------


class ChunkStream(httpx.SyncByteStream, httpx.AsyncByteStream):
    """A response body delivered in small chunks, optionally dying with ``error`` at the end."""

    def __init__(self, data: bytes, error: Exception | None = None, chunk: int = 7) -> None:
        self.chunks = [data[i : i + chunk] for i in range(0, len(data), chunk)]
        self.error = error

    def __iter__(self) -> Iterator[bytes]:
        yield from self.chunks
        if self.error:
            raise self.error

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for c in self.chunks:
            yield c
        if self.error:
            raise self.error


def sse(event: Event) -> bytes:
    return f"id: {event.seq}\nevent: {event.kind}\ndata: {event.model_dump_json()}\n\n".encode()


def tar_bytes(members: dict[str, bytes], links: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tar.addfile(info)
    return buffer.getvalue()


def results_archive(files: dict[str, bytes], links: dict[str, str] | None = None,
                    cid: str | None = None) -> tuple[str, bytes]:
    """(CID, tar) laid out as a node serves results: everything under a top directory named by the CID.

    The CID is that of the files and links, leaving out names with ``..`` (which only a forged tar
    carries), unless given.
    """
    import tempfile

    from storage.unixfs import cid_of_path

    links = links or {}
    if cid is None:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp) / "r"
            root.mkdir()
            for name, data in files.items():
                if ".." not in name.split("/"):
                    (root / name).parent.mkdir(parents=True, exist_ok=True)
                    (root / name).write_bytes(data)
            for name, target in links.items():
                (root / name).parent.mkdir(parents=True, exist_ok=True)
                (root / name).symlink_to(target)
            cid = str(cid_of_path(root))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        directories = [cid]
        for name in [*files, *links]:
            parents = name.split("/")[:-1]
            for depth in range(1, len(parents) + 1):
                directory = "/".join([cid, *parents[:depth]])
                if ".." not in parents and directory not in directories:
                    directories.append(directory)
        for directory in directories:
            info = tarfile.TarInfo(directory)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(info)
        for name, data in files.items():
            info = tarfile.TarInfo(f"{cid}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        for name, target in links.items():
            info = tarfile.TarInfo(f"{cid}/{name}")
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
    return cid, buffer.getvalue()


def error(status: int, code: str, message: str, fields: list[str] | None = None) -> httpx.Response:
    return httpx.Response(status, json={"error": {"code": code, "message": message, "fields": fields or []}})


class FakeNode:
    def __init__(self) -> None:
        self.jobs: dict[str, Job] = {}
        self.idempotency: dict[str, tuple[str, str]] = {}  # key → (spec digest, job id)
        self.polls_until_done: dict[str, int] = {}  # job id → wait-polls before it completes
        self.events: dict[str, list[Event]] = {}
        self.requests: list[httpx.Request] = []
        self.wait_params: list[float] = []
        # misbehaviour switches
        self.refuse_connections = 0  # next N requests: ConnectError before reaching the node
        self.store_unavailable = 0  # next N requests: 503, the node cannot write its store
        self.lose_submit_responses = 0  # next N submits: job created, then the connection drops
        self.break_first_stream = True  # the first event stream dies mid-message
        self.break_every_stream = False
        self.auth_detail: str | None = None
        self.node_fails = False
        self.served: dict[str, tuple[str, bytes]] = {}  # job id → (X-Shoal-CID, tar) its results request gets

    # transports
    def sync_transport(self) -> httpx.MockTransport:
        def handle(request: httpx.Request) -> httpx.Response:
            response, delay = self.route(request)
            time.sleep(delay)
            return response

        return httpx.MockTransport(handle)

    def async_transport(self) -> httpx.MockTransport:
        async def handle(request: httpx.Request) -> httpx.Response:
            response, delay = self.route(request)
            await trio.sleep(delay)
            return response

        return httpx.MockTransport(handle)

    # helpers
    def add_job(self, job_id: str, state: JobState = JobState.RUNNING, owner: str = "someone") -> Job:
        job = Job(
            id=job_id,
            owner=owner,
            spec=JobSpec.model_validate(SPEC),
            state=state,
            created_at=1.0,
            updated_at=1.0,
        )
        self.jobs[job_id] = job
        return job

    def describe(self, job_id: str) -> httpx.Response:
        return httpx.Response(200, json=JobDescription(job=self.jobs[job_id]).model_dump(mode="json"))

    def verify(self, request: httpx.Request) -> str | None:
        """The node's check, reimplemented from the format: the client id, or None if bad."""
        try:
            public_key = b64decode(request.headers[HEADER_KEY])
            path, _, query = request.url.raw_path.partition(b"?")
            message = canonical_request(
                request.method,
                request.headers["Host"],
                canonical_target(path, query),
                request.headers[HEADER_TIMESTAMP],
                request.headers[HEADER_NONCE],
                request.content,
            )
            Ed25519PublicKey.from_public_bytes(public_key).verify(
                b64decode(request.headers[HEADER_SIGNATURE]), message
            )
        except Exception:
            return None
        assert abs(int(request.headers[HEADER_TIMESTAMP]) - time.time()) < 5
        return client_id_for(public_key)

    # the API
    def route(self, request: httpx.Request) -> tuple[httpx.Response, float]:
        self.requests.append(request)
        if self.refuse_connections:
            self.refuse_connections -= 1
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        if self.store_unavailable:
            self.store_unavailable -= 1
            return error(503, "unavailable", "the node cannot write its store now: database or disk is full"), 0
        client_id = self.verify(request)
        if client_id is None:
            return httpx.Response(401, json={"detail": "bad signature"}), 0
        if self.auth_detail:
            return httpx.Response(401, json={"detail": self.auth_detail}), 0
        parts = [unquote(p) for p in request.url.raw_path.partition(b"?")[0].decode().split("/")[1:]]
        params = request.url.params
        method = request.method

        if parts == ["v1", "jobs"] and method == "POST":
            return self.submit(request, client_id), 0
        if parts == ["v1", "jobs"] and method == "GET":
            if int(params["limit"]) < 1:
                detail = [
                    {
                        "type": "greater_than_equal",
                        "loc": ["query", "limit"],
                        "msg": "Input should be greater than or equal to 1",
                        "input": params["limit"],
                    }
                ]
                return httpx.Response(422, json={"detail": detail}), 0
            jobs = [j for j in self.jobs.values() if j.owner == client_id]
            if "state" in params:
                jobs = [j for j in jobs if j.state == params["state"]]
            page = jobs[int(params["offset"]) :][: int(params["limit"])]
            return httpx.Response(200, json=JobList(jobs=page, total=len(jobs)).model_dump(mode="json")), 0
        if parts[:2] == ["v1", "jobs"] and len(parts) >= 3:
            job_id = parts[2]
            if job_id not in self.jobs:
                return error(404, "job_not_found", f"job {job_id} not found"), 0
            action = parts[3] if len(parts) > 3 else ""
            if action == "" and method == "GET":
                return self.describe_or_wait(job_id, params)
            if action == "cancel" and method == "POST":
                self.jobs[job_id] = self.jobs[job_id].transition(JobState.CANCELLED, "cancelled by user", 2.0)
                return self.describe(job_id), 0
            if action == "events":
                return self.event_stream(job_id, request), 0
            if action == "logs":
                return self.logs(params), 0
            if action == "results":
                return self.results(job_id), 0
        if parts == ["v1", "node"]:
            if self.node_fails:
                return httpx.Response(
                    500, text="Internal Server Error\nTraceback (most recent call last): ..."
                ), 0
            return httpx.Response(200, json=NODE.model_dump(mode="json")), 0
        if parts == ["v1", "peers"]:
            return httpx.Response(200, json={"peers": ["12D3KooWA", "12D3KooWB"]}), 0
        if parts == ["v1", "nodes"]:
            return httpx.Response(200, json=NodeList(nodes=[NODE_INFO]).model_dump(mode="json")), 0
        if parts == ["v1", "version"]:
            return httpx.Response(200, json={"version": "0.1.0"}), 0
        return httpx.Response(404, json={"detail": "Not Found"}), 0

    def submit(self, request: httpx.Request, client_id: str) -> httpx.Response:
        spec = SubmitRequest.model_validate_json(request.content).spec
        key = request.headers["Idempotency-Key"]
        if key in self.idempotency:
            digest, job_id = self.idempotency[key]
            if digest != spec.digest():
                return error(409, "idempotency_conflict", "Idempotency-Key already used with another spec")
            return self.describe(job_id)
        job_id = f"j-{len(self.jobs) + 1}"
        self.jobs[job_id] = Job(id=job_id, owner=client_id, spec=spec, created_at=1.0, updated_at=1.0)
        self.idempotency[key] = (spec.digest(), job_id)
        self.polls_until_done.setdefault(job_id, 1)
        if self.lose_submit_responses:
            self.lose_submit_responses -= 1
            raise httpx.ReadError("Connection reset by peer", request=request)
        response = self.describe(job_id)
        response.status_code = 201
        return response

    def describe_or_wait(self, job_id: str, params: httpx.QueryParams) -> tuple[httpx.Response, float]:
        if "wait" not in params:
            return self.describe(job_id), 0
        wait = float(params["wait"])
        self.wait_params.append(wait)
        job = self.jobs[job_id]
        if job.state.is_terminal:
            return self.describe(job_id), 0
        left = self.polls_until_done.get(job_id)
        if left is not None:
            self.polls_until_done[job_id] = left - 1
            if left - 1 <= 0:
                self.jobs[job_id] = job.transition(JobState.COMPLETED, "done", 3.0)
                return self.describe(job_id), 0
        return self.describe(job_id), wait  # nothing happened: the long poll runs its course

    def event_stream(self, job_id: str, request: httpx.Request) -> httpx.Response:
        events = self.events.get(job_id, [])
        after = int(request.headers.get("Last-Event-ID", "0"))
        todo = [e for e in events if e.seq > after]
        headers = {"content-type": "text/event-stream"}
        if self.break_every_stream:
            return httpx.Response(200, headers=headers, stream=ChunkStream(b"", httpx.ReadError("reset")))
        if self.break_first_stream:
            self.break_first_stream = False
            body = b": hello\n\n" + b"".join(sse(e) for e in todo[:2]) + sse(todo[2])[:-15]
            return httpx.Response(
                200, headers=headers, stream=ChunkStream(body, httpx.RemoteProtocolError("cut"))
            )
        body = b"event: ping\ndata: {}\n\n" + b"".join(sse(e) for e in todo)
        body += b'event: end\ndata: {"state": "completed"}\n\n'
        return httpx.Response(200, headers=headers, stream=ChunkStream(body))

    def logs(self, params: httpx.QueryParams) -> httpx.Response:
        text = "line 1\nline 2\n" if params["stream"] == "stdout" else "oops\n"
        if params["follow"] == "true":
            return httpx.Response(
                200, headers={"content-type": "text/plain"}, stream=ChunkStream(text.encode(), chunk=4)
            )
        return httpx.Response(200, text=text)

    def archive(self, job_id: str) -> tuple[str, bytes]:
        """(CID the job's record names, the tar the node serves) of a job's results."""
        if job_id in self.served:
            return self.served[job_id]
        if job_id == "evil":
            return results_archive({"ok.txt": b"fine", "../escaped.txt": b"gotcha"})
        if job_id == "evil-link":
            return results_archive({"ok.txt": b"fine"}, links={"link": "../../etc/passwd"})
        return results_archive({"stdout": b"42\n", "exitCode": b"0", "outputs/result.txt": b"done"})

    def completed(self, job_id: str) -> Job:
        """A completed job whose record names its results' CID (what ``download`` checks against)."""
        job = self.add_job(job_id, JobState.COMPLETED)
        self.jobs[job_id] = job.model_copy(update={"result": RunResult(stdout="42\n", cid=self.archive(job_id)[0])})
        return self.jobs[job_id]

    def results(self, job_id: str) -> httpx.Response:
        cid, data = self.archive(job_id)
        headers = {"content-type": "application/x-tar", "X-Shoal-CID": cid}
        return httpx.Response(200, headers=headers, stream=ChunkStream(data, chunk=512))


_R = Resources(cpu=4, memory="8GiB", disk="100GiB")
NODE = NodeStatus(
    peer_id="12D3KooWA",
    addrs=["/ip4/127.0.0.1/tcp/4001"],
    roles=["requester", "compute"],
    engines=["noop", "python"],
    capacity=Capacity(total=_R, free=_R, max_per_job=_R),
    running=0,
    backlog=0,
    version="0.1.0",
)
NODE_INFO = NodeInfo(peer_id="12D3KooWA", max_per_job=_R, total=_R, free=_R)


# -- fixtures and flavour-neutral helpers --------------------------------------------------------


@pytest.fixture
def fake() -> FakeNode:
    return FakeNode()


@pytest.fixture(params=["sync", "async"])
async def client(
    request: pytest.FixtureRequest, fake: FakeNode
) -> AsyncIterator[shoal.Client | shoal.AsyncClient]:
    key = ClientKey.generate()
    c: shoal.Client | shoal.AsyncClient
    if request.param == "sync":
        c = shoal.Client(API, key=key, transport=fake.sync_transport())
    else:
        c = shoal.AsyncClient(API, key=key, transport=fake.async_transport())
    c.submit_retry_delays = (0.0, 0.0, 0.0)
    c.stream_retry_delays = (0.0,) * 5
    yield c
    if isinstance(c, shoal.AsyncClient):
        await c.aclose()
    else:
        c.close()


async def call(client: Any, name: str, *args: Any, **kwargs: Any) -> Any:
    result = getattr(client, name)(*args, **kwargs)
    return await result if inspect.isawaitable(result) else result


async def collect(iterable: Any) -> list[Any]:
    if hasattr(iterable, "__aiter__"):
        return [item async for item in iterable]
    return list(iterable)


def make_events(job_id: str) -> list[Event]:
    kinds = [EventKind.CREATED, EventKind.ANNOUNCED, EventKind.BID, EventKind.RUNNING, EventKind.COMPLETED]
    return [
        Event(seq=i, job_id=job_id, at=float(i), kind=k, message=f"step {i}") for i, k in enumerate(kinds, 1)
    ]


# -- submit ----------------------------------------------------------------------------------------


async def test_submit_signs_and_returns_description(client, fake: FakeNode) -> None:
    description = await call(client, "submit", SPEC)
    assert isinstance(description, JobDescription)
    assert description.job.id == "j-1"
    assert description.job.owner == client.client_id  # the node saw a valid signature from our key
    (request,) = fake.requests
    assert request.headers["Idempotency-Key"]  # generated when not given
    assert request.url.query == b""  # the cache is the node's default: nothing to say
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.content)["spec"]["engine"] == {
        **SPEC["engine"],
        "args": [],
        "requirements": [],
        "main": None,
    }


async def test_submit_sends_secret_env_in_the_spec(client, fake: FakeNode) -> None:
    await call(client, "submit", {**SPEC, "secret_env": {"TOKEN": "s3cr3t"}})
    assert json.loads(fake.requests[-1].content)["spec"]["secret_env"] == {"TOKEN": "s3cr3t"}


async def test_submit_without_the_cache_says_so(client, fake: FakeNode) -> None:
    await call(client, "submit", SPEC, cache=False)
    assert str(fake.requests[-1].url.params) == "cache=false"


async def test_submit_accepts_a_jobspec_and_explicit_key(client, fake: FakeNode) -> None:
    spec = JobSpec.model_validate(SPEC)
    first = await call(client, "submit", spec, idempotency_key="my-key")
    again = await call(client, "submit", spec, idempotency_key="my-key")
    assert first.job.id == again.job.id and len(fake.jobs) == 1
    assert [r.headers["Idempotency-Key"] for r in fake.requests] == ["my-key", "my-key"]
    other = {"engine": {"name": "python", "code": "print(43)"}}
    with pytest.raises(Conflict) as info:
        await call(client, "submit", other, idempotency_key="my-key")
    assert info.value.status == 409 and info.value.code == "idempotency_conflict"


async def test_submit_retry_after_lost_response_reuses_the_key(client, fake: FakeNode) -> None:
    """The node created the job but the response never arrived: the retry must not run it twice."""
    fake.lose_submit_responses = 1
    description = await call(client, "submit", SPEC)
    assert len(fake.jobs) == 1 and description.job.id == "j-1"
    first, second = fake.requests
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert first.headers[HEADER_NONCE] != second.headers[HEADER_NONCE]  # each attempt signed afresh


async def test_submit_retries_connection_errors_then_gives_up(client, fake: FakeNode) -> None:
    fake.refuse_connections = 3
    assert (await call(client, "submit", SPEC)).job.id == "j-1"
    assert len(fake.requests) == 4
    assert len({r.headers["Idempotency-Key"] for r in fake.requests}) == 1

    fake.requests.clear()
    fake.refuse_connections = 10
    with pytest.raises(ConnectionFailed) as info:
        await call(client, "submit", SPEC)
    assert len(fake.requests) == 4
    assert str(info.value) == f"cannot reach Shoal API at {API}: connection refused (tried 4 times)"


async def test_a_submit_the_node_answered_503_is_sent_again_with_its_key(client, fake: FakeNode) -> None:
    """503 says the node did nothing (it cannot write its store, or reads too many bodies at once)."""
    fake.store_unavailable = 2
    assert (await call(client, "submit", SPEC)).job.id == "j-1"
    assert len(fake.requests) == 3 and len(fake.jobs) == 1
    assert len({r.headers["Idempotency-Key"] for r in fake.requests}) == 1
    fake.requests.clear()
    fake.store_unavailable = 10
    with pytest.raises(ServerError, match="cannot write its store"):
        await call(client, "submit", SPEC)
    assert len(fake.requests) == 4


async def test_a_wait_asks_again_while_its_node_restarts_or_cannot_write_then_gives_up(client, fake: FakeNode) -> None:
    fake.add_job("j-1", JobState.COMPLETED)
    client.reconnect_first_delay = 0.001
    fake.refuse_connections, fake.store_unavailable = 2, 2
    assert (await call(client, "wait", "j-1")).job.state is JobState.COMPLETED
    assert len(fake.requests) == 5
    assert len({r.headers[HEADER_NONCE] for r in fake.requests}) == 5  # each asked afresh: no replay
    fake.requests.clear()
    fake.refuse_connections, client.reconnect_patience = 1000, 0.05
    with pytest.raises(ConnectionFailed):
        await call(client, "wait", "j-1")
    assert 1 < len(fake.requests) < 1000


async def test_invalid_spec_fails_locally_with_fields(client, fake: FakeNode) -> None:
    with pytest.raises(InvalidRequest) as info:
        await call(client, "submit", {"engine": {"name": "docker"}, "timeout": -1})
    assert set(info.value.fields) == {"spec.engine.docker.image", "spec.timeout"}
    assert "\n" not in str(info.value) and str(info.value).startswith("invalid job spec: ")
    assert fake.requests == []


# -- describe, wait, run, list, cancel ------------------------------------------------------------


async def test_describe_and_not_found(client, fake: FakeNode) -> None:
    fake.add_job("j-9")
    assert (await call(client, "describe", "j-9")).job.state == JobState.RUNNING
    with pytest.raises(NotFound) as info:
        await call(client, "describe", "nope")
    assert (str(info.value), info.value.status, info.value.code) == (
        "job nope not found",
        404,
        "job_not_found",
    )
    assert type(info.value).__module__ == "shoal"


async def test_wait_long_polls_until_terminal(client, fake: FakeNode) -> None:
    fake.add_job("j-1")
    fake.polls_until_done["j-1"] = 2
    description = await call(client, "wait", "j-1", poll=0.05)
    assert description.job.state == JobState.COMPLETED
    assert fake.wait_params == [0.05, 0.05]
    assert all(r.url.params["wait"] == "0.05" for r in fake.requests)


async def test_wait_times_out_with_last_description(client, fake: FakeNode) -> None:
    fake.add_job("stuck")
    started = time.monotonic()
    with pytest.raises(WaitTimeout) as info:  # polls of 0.4 s: on a busy machine one of 0.1 took all of 0.25 s
        await call(client, "wait", "stuck", timeout=1.0, poll=0.4)
    elapsed = time.monotonic() - started
    assert 1.0 <= elapsed < 3.0
    assert info.value.description.job.state == JobState.RUNNING
    assert str(info.value) == "job stuck is still running after 1 s"
    assert 2 <= len(fake.wait_params) <= 4
    assert all(w <= 0.4 for w in fake.wait_params)
    assert fake.wait_params[-1] < 0.4  # the last poll only asks for what was left


async def test_run_is_submit_then_wait(client, fake: FakeNode) -> None:
    description = await call(client, "run", SPEC, timeout=5)
    assert description.job.state == JobState.COMPLETED
    assert [r.method for r in fake.requests] == ["POST", "GET"]
    assert fake.requests[1].url.params["wait"] == "5"  # min(poll=25, remaining≈5) rounded to ms


async def test_list_sends_filters(client, fake: FakeNode) -> None:
    fake.add_job("j-a", owner=client.client_id)
    fake.add_job("j-b", owner="other")
    mine = await call(client, "list")
    assert isinstance(mine, JobList) and [j.id for j in mine.jobs] == ["j-a"]
    assert str(fake.requests[-1].url.params) == "limit=50&offset=0"
    filtered = await call(client, "list", state="running", limit=10, offset=0)
    assert [j.id for j in filtered.jobs] == ["j-a"]  # the other owner's running job never shows
    assert str(fake.requests[-1].url.params) == "limit=10&offset=0&state=running"
    with pytest.raises(ValueError):
        await call(client, "list", state="bogus")


async def test_cancel(client, fake: FakeNode) -> None:
    fake.add_job("j-1")
    assert (await call(client, "cancel", "j-1")).job.state == JobState.CANCELLED
    assert fake.requests[-1].method == "POST" and fake.requests[-1].url.path == "/v1/jobs/j-1/cancel"


async def test_job_ids_are_path_escaped(client, fake: FakeNode) -> None:
    with pytest.raises(NotFound):
        await call(client, "describe", "a/../../node")
    assert fake.requests[-1].url.raw_path == b"/v1/jobs/a%2F..%2F..%2Fnode"


# -- error bodies ----------------------------------------------------------------------------------


async def test_fastapi_422_becomes_one_line_invalid_request(client) -> None:
    with pytest.raises(InvalidRequest) as info:
        await call(client, "list", limit=0)
    e = info.value
    assert (e.status, e.code, e.fields) == (422, "invalid_request", ["limit"])
    assert str(e) == "invalid request: limit: Input should be greater than or equal to 1"


async def test_verifier_401_detail(client, fake: FakeNode) -> None:
    fake.auth_detail = "timestamp 400 s off (max 300)"
    with pytest.raises(AuthenticationError) as info:
        await call(client, "version")
    assert (str(info.value), info.value.status, info.value.code) == (
        "timestamp 400 s off (max 300)",
        401,
        "unauthorized",
    )


async def test_plain_text_500_is_one_line(client, fake: FakeNode) -> None:
    fake.node_fails = True
    with pytest.raises(ServerError) as info:
        await call(client, "node")
    assert str(info.value) == "Internal Server Error"
    assert info.value.status == 500 and info.value.code == "server_error"


async def test_every_error_is_a_shoal_api_error(client, fake: FakeNode) -> None:
    for exc in (
        AuthenticationError,
        NotFound,
        Conflict,
        InvalidRequest,
        ServerError,
        WaitTimeout,
        ConnectionFailed,
    ):
        assert issubclass(exc, ShoalAPIError)
    with pytest.raises(ShoalAPIError):
        await call(client, "describe", "missing")


async def test_connection_refused_names_the_url(fake: FakeNode) -> None:
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    key = ClientKey.generate()
    with shoal.Client(url, key=key, timeout=5) as sync_client, pytest.raises(ConnectionFailed) as info:
        sync_client.describe("j-1")
    assert str(info.value) == f"cannot reach Shoal API at {url}: connection refused"
    async with shoal.AsyncClient(url, key=key, timeout=5) as async_client:
        with pytest.raises(ConnectionFailed) as info:
            await async_client.describe("j-1")  # under trio: anyio wraps the refusal in a group
    assert str(info.value) == f"cannot reach Shoal API at {url}: connection refused"
    assert info.value.status is None and info.value.url == url


# -- events ----------------------------------------------------------------------------------------


async def test_events_resume_after_a_break_mid_message(client, fake: FakeNode) -> None:
    fake.add_job("j-1")
    fake.events["j-1"] = make_events("j-1")
    events = await collect(client.events("j-1"))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5]  # nothing lost, nothing repeated
    assert events[-1].kind == EventKind.COMPLETED and all(isinstance(e, Event) for e in events)
    first, second = fake.requests
    assert "Last-Event-ID" not in first.headers
    assert second.headers["Last-Event-ID"] == "2"  # event 3 was cut off before its blank line
    assert first.headers["accept"] == "text/event-stream"


async def test_events_from_a_given_id(client, fake: FakeNode) -> None:
    fake.add_job("j-1")
    fake.events["j-1"] = make_events("j-1")
    fake.break_first_stream = False
    assert [e.seq for e in await collect(client.events("j-1", last_event_id=3))] == [4, 5]
    assert fake.requests[0].headers["Last-Event-ID"] == "3"


async def test_events_give_up_after_repeated_breaks(client, fake: FakeNode) -> None:
    fake.add_job("j-1")
    fake.break_every_stream = True
    with pytest.raises(ConnectionFailed) as info:
        await collect(client.events("j-1"))
    assert len(fake.requests) == 1 + len(client.stream_retry_delays)
    assert str(info.value).startswith(f"lost connection to Shoal API at {API}: ")


async def test_events_of_unknown_job(client) -> None:
    with pytest.raises(NotFound):
        await collect(client.events("nope"))


# -- logs and results ------------------------------------------------------------------------------


async def test_logs_and_follow_logs(client, fake: FakeNode) -> None:
    fake.add_job("j-1")
    assert await call(client, "logs", "j-1") == "line 1\nline 2\n"
    assert await call(client, "logs", "j-1", "stderr") == "oops\n"
    assert str(fake.requests[-1].url.params) == "stream=stderr&follow=false"
    chunks = await collect(client.follow_logs("j-1"))
    assert len(chunks) > 1 and "".join(chunks) == "line 1\nline 2\n"
    assert fake.requests[-1].url.params["follow"] == "true"
    with pytest.raises(ValueError):
        await call(client, "logs", "j-1", "stdin")


async def test_download_extracts_results(client, fake: FakeNode, tmp_path: Path) -> None:
    fake.completed("j-1")
    dest = await call(client, "download", "j-1", tmp_path / "out")
    assert dest == tmp_path / "out"
    assert (dest / "stdout").read_text() == "42\n"
    assert (dest / "outputs" / "result.txt").read_text() == "done"


MIB = 1 << 20


def long_stdout(n: int) -> bytes:
    return b"".join(b"line %d\n" % i for i in range(n))


def cut_job(node: FakeNode, job_id: str, written: bytes) -> None:
    """A completed job that wrote ``written``: the node keeps its last MiB, the record its last 64 KiB."""
    kept = written[-MIB:]
    cid, tar = results_archive({"stdout": kept, "stderr": b"", "exitCode": b"0"})
    node.served[job_id] = (cid, tar)
    node.add_job(job_id, JobState.COMPLETED)
    result = RunResult(stdout=kept[-65536:].decode(), stdout_truncated=True, cid=cid)
    node.jobs[job_id] = node.jobs[job_id].model_copy(update={"result": result})


async def test_a_download_of_a_cut_stdout_warns_which_part_it_holds(client, fake: FakeNode, tmp_path: Path) -> None:
    cut_job(fake, "j-long", long_stdout(200_000))  # 2.2 MB
    cut_job(fake, "j-mid", long_stdout(20_000))  # 180 KB: the record's tail is cut, the download whole
    with pytest.warns(UserWarning) as caught:
        dest = await call(client, "download", "j-long", tmp_path / "long")
    assert [str(w.message) for w in caught] == [f"stdout was longer than 1 MiB: {dest / 'stdout'} holds its last "
                                                "1 MiB; write large output to a file under -o"]
    assert (dest / "stdout").read_bytes().endswith(b"line 199999\n")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        await call(client, "download", "j-mid", tmp_path / "mid")


@pytest.mark.parametrize("job_id", ["evil", "evil-link"])
async def test_download_refuses_unsafe_archives(client, fake: FakeNode, tmp_path: Path, job_id: str) -> None:
    fake.completed(job_id)
    with pytest.raises(ShoalAPIError) as info:
        await call(client, "download", job_id, tmp_path / "out")
    assert info.value.code == "unsafe_archive"
    assert not (tmp_path / "escaped.txt").exists()
    assert not (tmp_path / "out").exists()  # all or nothing: checked before writing


HONEST = {"stdout": b"42\n", "exitCode": b"0", "outputs/o/result.txt": b"done"}


def recorded(fake: FakeNode, job_id: str, result: RunResult, served: tuple[str, bytes] | None = None) -> None:
    """A completed job whose record holds ``result``; its results request gets ``served`` (CID header, tar)."""
    fake.add_job(job_id, JobState.COMPLETED)
    fake.jobs[job_id] = fake.jobs[job_id].model_copy(update={"result": result})
    if served is not None:
        fake.served[job_id] = served


def results_requests(fake: FakeNode) -> list[str]:
    return [r.url.path for r in fake.requests if r.url.path.endswith("/results")]


def _forged_under(cid: str) -> tuple[str, bytes]:
    """Other files under the honest CID's name, and the CID header naming it: only the bytes differ."""
    return cid, results_archive({**HONEST, "stdout": b"rm -rf ~\n"}, cid=cid)[1]


@pytest.mark.parametrize("forge", [
    lambda cid: results_archive({**HONEST, "stdout": b"rm -rf ~\n"}),  # self-consistent: header = its own CID
    _forged_under,
])
async def test_a_tampered_download_with_a_plausible_header_is_refused(client, fake, tmp_path: Path, forge) -> None:
    """The record's CID decides, never the response's header: nothing is written, not even a partial dir."""
    cid, _ = results_archive(HONEST)
    recorded(fake, "j-1", RunResult(stdout="42\n", cid=cid), served=forge(cid))
    (tmp_path / "existing").mkdir()
    (tmp_path / "existing" / "keep").write_text("mine")
    for dest in (tmp_path / "new", tmp_path / "existing"):
        with pytest.raises(ShoalAPIError) as info:
            await call(client, "download", "j-1", dest)
        assert info.value.code == "corrupted" and "nothing was written" in str(info.value)
        assert "\n" not in str(info.value)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]  # no partial directory left beside it
    assert [p.name for p in (tmp_path / "existing").iterdir()] == ["keep"]

    fake.served.clear()  # the genuine bytes: into the existing directory, next to what was there
    fake.served["j-1"] = results_archive(HONEST)
    await call(client, "download", "j-1", tmp_path / "existing")
    assert (tmp_path / "existing" / "stdout").read_text() == "42\n" and (tmp_path / "existing" / "keep").exists()
    assert (tmp_path / "existing" / "outputs" / "o" / "result.txt").read_text() == "done"


async def test_a_result_without_a_cid_is_written_from_the_record_or_refused(client, fake, tmp_path: Path) -> None:
    recorded(fake, "whole", RunResult(exit_code=3, stdout="hi\n", stderr="oops\n"),
             served=results_archive({"stdout": b"forged\n"}))
    dest = await call(client, "download", "whole", tmp_path / "whole")
    files = {p.name: p.read_text() for p in dest.iterdir()}
    assert files == {"stdout": "hi\n", "stderr": "oops\n", "exitCode": "3"}
    for job_id, result in (("cut", RunResult(stdout="tail", stdout_truncated=True)),
                           ("outputs", RunResult(output_sizes={"o": 5}))):
        recorded(fake, job_id, result, served=results_archive({"stdout": b"anything\n"}))
        with pytest.raises(ShoalAPIError) as info:
            await call(client, "download", job_id, tmp_path / job_id)
        assert info.value.code == "no_cid" and str(info.value) == (
            f"the result of job {job_id} names no CID, so a download could not be checked; nothing was written")
        assert not (tmp_path / job_id).exists()
    assert results_requests(fake) == []  # nothing was taken from the node's download


async def test_a_job_without_a_result_has_no_results(client, fake, tmp_path: Path) -> None:
    fake.add_job("j-1", JobState.FAILED)
    with pytest.raises(NoResults, match=r"^job j-1 has no results \(state failed\)$"):
        await call(client, "download", "j-1", tmp_path / "out")
    assert not (tmp_path / "out").exists() and results_requests(fake) == []


@pytest.mark.parametrize("links", [
    {"a": "b", "b": ".", "c": "a/../.."},  # a chain through the top
    {"outputs/o/l": "..", "m": "outputs/o/l/../../.."},
    {"outputs/o/key": "/home/user/.ssh/id_ed25519"},  # absolute
    {"outputs/o/up": "../../../x"},
])
async def test_links_leading_outside_are_refused_even_under_a_genuine_cid(client, fake, tmp_path, links) -> None:
    """A signed result whose links lead out of the destination (a hostile job made them) is not extracted."""
    cid, tar = results_archive(HONEST, links=links)
    recorded(fake, "j-1", RunResult(stdout="42\n", cid=cid), served=(cid, tar))
    with pytest.raises(ShoalAPIError) as info:
        await call(client, "download", "j-1", tmp_path / "out")
    assert info.value.code == "unsafe_archive" and "link" in str(info.value)
    assert list(tmp_path.iterdir()) == []


async def test_links_inside_the_destination_are_kept(client, fake, tmp_path: Path) -> None:
    links = {"outputs/a": "b", "outputs/b": ".", "outputs/latest": "o/result.txt"}  # as a job's outputs hold them
    cid, tar = results_archive(HONEST, links=links)
    recorded(fake, "j-1", RunResult(stdout="42\n", cid=cid), served=(cid, tar))
    dest = await call(client, "download", "j-1", tmp_path / "out")
    assert (dest / "outputs" / "latest").read_text() == "done" and (dest / "outputs" / "a").readlink() == Path("b")


async def test_results_holding_more_than_a_result_does_replace_nothing_in_the_destination(client, fake,
                                                                                       tmp_path: Path) -> None:
    """A node chooses the CID it signs: its results held .bashrc and .ssh, and shoal get -o DIR into a home or
    project directory replaced the user's own (all of .ssh deleted for the node's authorized_keys)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("the user's key")
    (home / ".bashrc").write_text("the user's shell")
    for extra in ({".bashrc": b"echo pwned"}, {".ssh/authorized_keys": b"ssh-ed25519 attacker"}):
        cid, tar = results_archive({**HONEST, **extra})
        recorded(fake, "j-1", RunResult(stdout="42\n", cid=cid), served=(cid, tar))
        with pytest.raises(ShoalAPIError) as info:
            await call(client, "download", "j-1", home)
        assert info.value.code == "unsafe_archive" and "which no result holds" in str(info.value)
    assert (home / ".bashrc").read_text() == "the user's shell"
    assert sorted(p.name for p in (home / ".ssh").iterdir()) == ["id_ed25519"]
    assert sorted(p.name for p in home.iterdir()) == [".bashrc", ".ssh"]  # nothing left behind


async def test_the_size_limit_holds(client, fake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    big = {**HONEST, "outputs/o/result.txt": b"x" * 300_000}
    cid, tar = results_archive(big)
    recorded(fake, "j-1", RunResult(stdout="42\n", cid=cid, output_sizes={"o": 4}), served=(cid, tar))
    monkeypatch.setattr("shoal._results.LIMIT_MARGIN", 4096)  # default limit: 2 * (4 + 3) + 4096 bytes
    with pytest.raises(ShoalAPIError) as info:
        await call(client, "download", "j-1", tmp_path / "out")
    assert info.value.code == "too_large" and "limit of 4110 bytes" in str(info.value)
    with pytest.raises(ShoalAPIError, match=r"larger than the 97\.7 KiB given as their limit \(max_bytes"):
        await call(client, "download", "j-1", tmp_path / "out", max_bytes=100_000)
    assert list(tmp_path.iterdir()) == []
    dest = await call(client, "download", "j-1", tmp_path / "out", max_bytes=1_000_000)
    assert (dest / "outputs" / "o" / "result.txt").stat().st_size == 300_000


def test_the_default_limit_follows_the_recorded_sizes() -> None:
    from shoal._results import LIMIT_MARGIN, STREAM_ALLOWANCE, default_limit

    assert default_limit(RunResult(stdout="abc", output_sizes={"a": 10, "b": 20})) == 2 * 33 + LIMIT_MARGIN
    cut = RunResult(stdout="abc", stdout_truncated=True, stderr="é")
    assert default_limit(cut) == 2 * (STREAM_ALLOWANCE + 2) + LIMIT_MARGIN


# -- node endpoints ----------------------------------------------------------------------------------


async def test_node_peers_nodes_version(client) -> None:
    assert await call(client, "node") == NODE
    assert await call(client, "peers") == PeerList(peers=["12D3KooWA", "12D3KooWB"])
    nodes = await call(client, "nodes")
    assert isinstance(nodes, NodeList) and nodes.nodes[0].peer_id == "12D3KooWA"
    assert await call(client, "version") == "0.1.0"
    assert isinstance(await call(client, "node"), NodeStatus)


# -- construction ----------------------------------------------------------------------------------


def test_find_api_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path))
    monkeypatch.delenv("SHOAL_API", raising=False)
    assert shoal.find_api_url() == "http://127.0.0.1:8700"
    (tmp_path / "devstack.json").write_text("{not json")
    assert shoal.find_api_url() == "http://127.0.0.1:8700"
    state = {
        "nodes": [{"api": "http://127.0.0.1:8711", "peer_id": "12D3KooWA"}, {"api": "http://127.0.0.1:8712"}]
    }
    (tmp_path / "devstack.json").write_text(json.dumps(state))
    assert shoal.find_api_url() == "http://127.0.0.1:8711"
    monkeypatch.setenv("SHOAL_API", "http://10.0.0.5:8700/")
    assert shoal.find_api_url() == "http://10.0.0.5:8700"


def test_client_defaults_to_discovered_url_and_home_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path))
    monkeypatch.setenv("SHOAL_API", "127.0.0.1:9999")
    with shoal.Client() as client:
        assert client.api_url == "http://127.0.0.1:9999"
        assert client.client_id == ClientKey.load(tmp_path / "client.key").client_id
        assert repr(client) == f"Client('http://127.0.0.1:9999', client_id='{client.client_id}')"


def test_tls_is_verified_for_https_and_skipped_only_for_plain_http() -> None:
    """A plain-HTTP client skips loading CA certificates (CLI start time), never verification."""
    import ssl

    key = ClientKey.generate()
    with shoal.Client("https://node.example", key=key) as secure, shoal.Client("http://127.0.0.1:9", key=key) as plain:
        secure_ctx = secure._http._transport._pool._ssl_context
        plain_ctx = plain._http._transport._pool._ssl_context
    assert secure_ctx.verify_mode == ssl.CERT_REQUIRED and secure_ctx.cert_store_stats()["x509_ca"] > 0
    # Trusts nothing: an https request through it would fail, never pass unverified.
    assert plain_ctx.verify_mode == ssl.CERT_REQUIRED and plain_ctx.check_hostname
    assert plain_ctx.cert_store_stats()["x509_ca"] == 0


def test_a_tampered_results_download_is_refused_and_nothing_is_written(tmp_path):
    """The node names the results' CID; the SDK recomputes it from the extracted files."""
    import io
    import tarfile

    from shoal._errors import ShoalAPIError
    from shoal._results import extract_results as _extract_results
    from storage.unixfs import cid_of_path

    src = tmp_path / "src"
    (src / "outputs").mkdir(parents=True)
    (src / "stdout").write_text("42\n")
    (src / "outputs" / "x.txt").write_text("result")
    cid = str(cid_of_path(src))

    def archive(stdout: bytes) -> io.BytesIO:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for directory in (cid, f"{cid}/outputs"):  # as a node serves it: directories before their files
                info = tarfile.TarInfo(directory)
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            for name, data in ((f"{cid}/stdout", stdout), (f"{cid}/outputs/x.txt", b"result")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
        buf.seek(0)
        return buf

    good = _extract_results(archive(b"42\n"), tmp_path / "good", "j-1", cid)
    assert (good / "stdout").read_text() == "42\n" and (good / "outputs" / "x.txt").read_text() == "result"
    with pytest.raises(ShoalAPIError, match="do not match their CID"):
        _extract_results(archive(b"43\n"), tmp_path / "bad", "j-1", cid)
    assert not (tmp_path / "bad").exists()


def test_a_nodes_word_on_its_output_sizes_raises_the_default_download_limit_only_so_far() -> None:
    """Zero-filled outputs cost a lying node next to nothing to publish, and the sizes it signs set the default
    limit: 10**15 bytes of them once let shoal get write a gigabyte and more to the user's disk."""
    from shoal._results import LIMIT_MARGIN, OUTPUTS_BY_DEFAULT, plan_download

    cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
    huge = RunResult(stdout="42\n", cid=cid, output_sizes={"zeros": 10**15})
    assert plan_download(huge, "job j-1", "completed", None).max_bytes == 2 * (OUTPUTS_BY_DEFAULT + 3) + LIMIT_MARGIN
    assert plan_download(huge, "job j-1", "completed", 10**15).max_bytes == 10**15  # the user may allow more


@pytest.mark.parametrize("cid", ["\x1b]52;c;cm0gLXJmIH4K\x07", "bafy ../../etc", "x" * 300])
def test_a_result_whose_cid_is_no_cid_is_refused_whole(cid: str) -> None:
    """A node's CID reached the user's terminal raw ("results at ipfs://<escape sequences>")."""
    with pytest.raises(ValidationError, match="cid"):
        RunResult(cid=cid)
    with pytest.raises(ValidationError, match="output_sizes"):
        RunResult(output_sizes={"\x1b[2J": 1})


async def test_a_capped_read_refuses_a_body_past_its_limit_as_it_comes(client) -> None:
    """A map reads an index's results itself when its value is longer than a record keeps: a node sending
    more than the limit is refused as the bytes come, not read whole into memory first."""
    from shoal._client import _Capped

    def serve(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b"x" * int(request.url.params["n"]))

    transport = httpx.MockTransport(serve)
    client._http._transport = transport  # the test's node: a body of n bytes
    small = _Capped(client._http.build_request("GET", f"{API}/results?n=1000"), limit=4096)
    big = _Capped(client._http.build_request("GET", f"{API}/results?n=100000"), limit=4096)
    read = client._read_capped(small)
    assert (await read if inspect.isawaitable(read) else read) == b"x" * 1000
    with pytest.raises(ShoalAPIError, match="over 4096 bytes"):
        read = client._read_capped(big)
        await read if inspect.isawaitable(read) else read


async def test_an_async_client_keeps_few_requests_in_flight_and_long_polls_apart() -> None:
    """A thousand requests at once queued in httpx's pool, whose wait counted against their timeouts."""
    import trio

    from shoal import AsyncClient
    from shoal._client import MAX_IN_FLIGHT, MAX_POLLING

    in_flight = {"quick": 0, "poll": 0}
    most = {"quick": 0, "poll": 0}

    async def handle(request: httpx.Request) -> httpx.Response:
        kind = "poll" if "wait" in request.url.params else "quick"
        in_flight[kind] += 1
        most[kind] = max(most[kind], in_flight[kind])
        await trio.sleep(0.05 if kind == "quick" else 0.5)
        in_flight[kind] -= 1
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no such job"}})

    async with AsyncClient("http://node.test", key=ClientKey.generate(), timeout=0.2,
                           transport=httpx.MockTransport(handle)) as client:
        async def describe() -> None:
            with pytest.raises(NotFound):  # answered, however long it waited for a slot (more than its timeout)
                await client.describe("j-" + "0" * 32)

        async def wait() -> None:
            with pytest.raises(NotFound):
                await client.wait("j-" + "0" * 32)

        async with trio.open_nursery() as nursery:
            for _ in range(400):
                nursery.start_soon(describe)
                nursery.start_soon(wait)
    assert most == {"quick": MAX_IN_FLIGHT, "poll": MAX_POLLING}

"""The SDK's sweep methods (``submit_sweep`` … ``download_index``) against a fake node.

The fake is ``test_client.FakeNode`` (signed requests, misbehaviour switches) with the sweep
routes added; every scenario runs on both ``Client`` and ``AsyncClient``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from urllib.parse import unquote

import httpx
import pytest

from jobs.sweep import IndexRecord, Sweep, index_ranges
from jobs.views import IndexList, SweepDescription, SweepList, SweepSubmitRequest
from shoal import Conflict, EventKind, InvalidRequest, JobState, RunResult, ShoalAPIError, SweepSpec, WaitTimeout
from tests.unit.test_client import ChunkStream, FakeNode, call, collect, error, make_events, results_archive
from tests.unit.test_client import client as client  # the fixture (sync and async), found by name

SWEEP = {"job": {"engine": {"name": "noop"}}, "grid": {"x": ["1", "2", "3"]}}


class SweepNode(FakeNode):
    """``FakeNode`` that also keeps sweeps: ``/v1/sweeps/...``."""

    def __init__(self) -> None:
        super().__init__()
        self.sweeps: dict[str, Sweep] = {}
        self.sweep_keys: dict[str, tuple[str, str]] = {}  # idempotency key → (digest, sweep id)
        self.sweep_polls: dict[str, int] = {}  # sweep id → wait-polls before it completes
        self.result_cid: str | None = None  # the CID every index's record names (default: that of result_files)
        self.result_files: dict[str, bytes] = {"stdout": b"x=2\n", "exitCode": b"0"}
        self.index_page: list[int] | None = None  # the indexes every page of records names, whatever is asked
        self.results_delay = 0.0  # seconds each index's results take to come
        self.results_asked: list[float] = []  # when each was asked for (time.monotonic)

    def add_sweep(self, sweep_id: str, state: JobState = JobState.RUNNING, owner: str = "someone") -> Sweep:
        spec = SweepSpec.model_validate(SWEEP)
        sweep = Sweep(id=sweep_id, owner=owner, spec=spec, count=spec.count, state=state,
                      counts={state: spec.count}, created_at=1.0, updated_at=1.0)  # fmt: skip
        self.sweeps[sweep_id] = sweep
        return sweep

    def describe_sweep(self, sweep_id: str, status: int = 200) -> httpx.Response:
        sweep = self.sweeps[sweep_id]
        ranges = index_ranges((i, sweep.state, "") for i in range(sweep.count))
        body = SweepDescription(sweep=sweep, ranges=ranges).model_dump(mode="json")
        return httpx.Response(status, json=body)

    def route(self, request: httpx.Request) -> tuple[httpx.Response, float]:
        path = request.url.raw_path.partition(b"?")[0].decode()
        if not path.startswith("/v1/sweeps"):
            return super().route(request)
        self.requests.append(request)
        if self.refuse_connections:
            self.refuse_connections -= 1
            raise httpx.ConnectError("[Errno 111] Connection refused", request=request)
        client_id = self.verify(request)
        if client_id is None:
            return httpx.Response(401, json={"detail": "bad signature"}), 0
        parts = [unquote(p) for p in path.split("/")[1:]]
        params, method = request.url.params, request.method
        if parts == ["v1", "sweeps"] and method == "POST":
            return self.submit_sweep(request, client_id), 0
        if parts == ["v1", "sweeps"]:
            sweeps = [s for s in self.sweeps.values() if s.owner == client_id]
            page = sweeps[int(params["offset"]) :][: int(params["limit"])]
            return httpx.Response(200, json=SweepList(sweeps=page, total=len(sweeps)).model_dump(mode="json")), 0
        sweep_id = parts[2]
        if sweep_id not in self.sweeps:
            return error(404, "sweep_not_found", f"sweep {sweep_id} not found"), 0
        rest = parts[3:]
        if rest == [] and method == "GET":
            return self.describe_or_wait_sweep(sweep_id, params)
        if rest in (["retry"], ["cancel"]) and method == "POST":
            state = JobState.RUNNING if rest == ["retry"] else JobState.CANCELLED
            self.sweeps[sweep_id] = self.sweeps[sweep_id].model_copy(update={"state": state})
            return self.describe_sweep(sweep_id), 0
        if rest == ["events"]:
            self.break_first_stream = False
            return self.event_stream(sweep_id, request), 0
        if rest == ["indexes"]:
            first, limit = int(params["first"]), int(params["limit"])
            records = [IndexRecord(index=i, state=JobState.COMPLETED) for i in range(first, 3)][:limit]
            if self.index_page is not None:
                result = RunResult(exit_code=0, cid=self.recorded_cid())
                records = [IndexRecord(index=i, state=JobState.COMPLETED, result=result) for i in self.index_page]
            return httpx.Response(200, json=IndexList(indexes=records, total=3).model_dump(mode="json")), 0
        if rest[:1] == ["indexes"]:
            index = int(rest[1])
            if rest[2:] == []:
                result = RunResult(exit_code=0, cid=self.recorded_cid())
                record = IndexRecord(index=index, state=JobState.COMPLETED, attempts=1, result=result)
                return httpx.Response(200, json=record.model_dump(mode="json")), 0
            if rest[2:] == ["logs"]:
                return httpx.Response(200, text=f"{params['stream']} of {index}\n"), 0
            if rest[2:] == ["results"]:
                self.results_asked.append(time.monotonic())
                headers = {"content-type": "application/x-tar", "X-Shoal-CID": self.recorded_cid()}
                return httpx.Response(200, headers=headers, stream=ChunkStream(self.tar(), chunk=512)), \
                    self.results_delay
        return httpx.Response(404, json={"detail": "Not Found"}), 0

    def recorded_cid(self) -> str:
        return self.result_cid or results_archive(self.result_files)[0]

    def tar(self) -> bytes:
        return results_archive(self.result_files, cid=self.recorded_cid())[1]

    def submit_sweep(self, request: httpx.Request, client_id: str) -> httpx.Response:
        spec = SweepSubmitRequest.model_validate_json(request.content).spec
        key = request.headers["Idempotency-Key"]
        if key in self.sweep_keys:
            digest, sweep_id = self.sweep_keys[key]
            if digest != spec.digest():
                return error(409, "idempotency_conflict", "Idempotency-Key already used with another spec")
            return self.describe_sweep(sweep_id)
        sweep_id = f"s-{len(self.sweeps) + 1}"
        self.sweeps[sweep_id] = Sweep(id=sweep_id, owner=client_id, spec=spec, count=spec.count,
                                      counts={JobState.PENDING: spec.count}, created_at=1.0, updated_at=1.0)
        self.sweep_keys[key] = (spec.digest(), sweep_id)
        self.sweep_polls.setdefault(sweep_id, 1)
        if self.lose_submit_responses:
            self.lose_submit_responses -= 1
            raise httpx.ReadError("Connection reset by peer", request=request)
        return self.describe_sweep(sweep_id, 201)

    def describe_or_wait_sweep(self, sweep_id: str, params: httpx.QueryParams) -> tuple[httpx.Response, float]:
        if "wait" not in params:
            return self.describe_sweep(sweep_id), 0
        wait = float(params["wait"])
        self.wait_params.append(wait)
        sweep = self.sweeps[sweep_id]
        left = self.sweep_polls.get(sweep_id)
        if not sweep.state.is_terminal and left is not None:
            self.sweep_polls[sweep_id] = left - 1
            if left - 1 <= 0:
                done = {JobState.COMPLETED: sweep.count}
                self.sweeps[sweep_id] = sweep.model_copy(update={"state": JobState.COMPLETED, "counts": done})
                return self.describe_sweep(sweep_id), 0
        return self.describe_sweep(sweep_id), 0 if sweep.state.is_terminal else wait


@pytest.fixture
def fake() -> SweepNode:
    return SweepNode()


def paths(fake: SweepNode) -> list[str]:
    return [f"{r.method} {r.url.raw_path.decode()}" for r in fake.requests]


# -- submit ----------------------------------------------------------------------------------------


async def test_submit_sweep_posts_the_spec_with_a_generated_key(client, fake: SweepNode) -> None:
    description = await call(client, "submit_sweep", SWEEP)
    assert isinstance(description, SweepDescription)
    assert description.sweep.id == "s-1" and description.sweep.count == 3
    assert description.sweep.owner == client.client_id
    (request,) = fake.requests
    assert (request.method, request.url.path) == ("POST", "/v1/sweeps")
    assert request.headers["Idempotency-Key"] and request.headers["content-type"] == "application/json"
    assert json.loads(request.content)["spec"]["grid"] == {"x": ["1", "2", "3"]}


async def test_submit_sweep_retry_after_lost_response_reuses_the_key(client, fake: SweepNode) -> None:
    fake.lose_submit_responses = 1
    fake.refuse_connections = 0
    description = await call(client, "submit_sweep", SweepSpec.model_validate(SWEEP))
    assert len(fake.sweeps) == 1 and description.sweep.id == "s-1"
    first, second = fake.requests
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]


async def test_submit_sweep_retries_refused_connections_with_one_key(client, fake: SweepNode) -> None:
    fake.refuse_connections = 2
    assert (await call(client, "submit_sweep", SWEEP)).sweep.id == "s-1"
    assert len(fake.requests) == 3 and len({r.headers["Idempotency-Key"] for r in fake.requests}) == 1


async def test_submit_sweep_with_a_key_reattaches_or_conflicts(client, fake: SweepNode) -> None:
    first = await call(client, "submit_sweep", SWEEP, idempotency_key="k-1")
    again = await call(client, "submit_sweep", SWEEP, idempotency_key="k-1")
    assert first.sweep.id == again.sweep.id and len(fake.sweeps) == 1
    assert [r.headers["Idempotency-Key"] for r in fake.requests] == ["k-1", "k-1"]
    with pytest.raises(Conflict):
        await call(client, "submit_sweep", {**SWEEP, "grid": {"x": ["9"]}}, idempotency_key="k-1")


async def test_invalid_sweep_spec_fails_locally(client, fake: SweepNode) -> None:
    with pytest.raises(InvalidRequest) as info:
        await call(client, "submit_sweep", {"job": {"engine": {"name": "noop"}}, "grid": {"x": []}})
    assert str(info.value).startswith("invalid sweep spec: spec.grid: ")
    assert "give at least one value" in str(info.value)
    assert info.value.fields == ["spec.grid"]
    assert fake.requests == []


# -- describe, wait, run ---------------------------------------------------------------------------


async def test_describe_sweep_with_and_without_wait(client, fake: SweepNode) -> None:
    fake.add_sweep("s-9", JobState.COMPLETED)
    description = await call(client, "describe_sweep", "s-9")
    assert description.sweep.state == JobState.COMPLETED and str(description.ranges[0]) == "0-2 completed"
    assert fake.requests[-1].url.query == b""
    await call(client, "describe_sweep", "s-9", wait=1.5)
    assert str(fake.requests[-1].url.params) == "wait=1.5"


async def test_wait_sweep_long_polls_until_terminal(client, fake: SweepNode) -> None:
    fake.add_sweep("s-1")
    fake.sweep_polls["s-1"] = 2
    description = await call(client, "wait_sweep", "s-1", poll=0.05)
    assert description.sweep.state == JobState.COMPLETED
    assert fake.wait_params == [0.05, 0.05]
    assert all(r.url.path == "/v1/sweeps/s-1" for r in fake.requests)


async def test_wait_sweep_times_out_with_the_last_description(client, fake: SweepNode) -> None:
    fake.add_sweep("s-1")
    with pytest.raises(WaitTimeout) as info:
        await call(client, "wait_sweep", "s-1", timeout=0.1, poll=0.05)
    assert str(info.value).startswith("sweep s-1 is still running after 0.1 s")
    assert isinstance(info.value.description, SweepDescription)
    assert info.value.description.sweep.id == "s-1"


async def test_run_sweep_submits_then_waits(client, fake: SweepNode) -> None:
    description = await call(client, "run_sweep", SWEEP, timeout=5, idempotency_key="run-1")
    assert description.sweep.state == JobState.COMPLETED
    assert paths(fake)[0] == "POST /v1/sweeps" and paths(fake)[-1].startswith("GET /v1/sweeps/s-1?wait=")
    assert fake.requests[0].headers["Idempotency-Key"] == "run-1"


# -- the other endpoints ---------------------------------------------------------------------------


async def test_list_indexes_index_retry_cancel_paths(client, fake: SweepNode) -> None:
    fake.add_sweep("s-1", owner=client.client_id)
    fake.add_sweep("s-2", owner="someone-else")
    listed = await call(client, "list_sweeps", limit=5, offset=0)
    assert [s.id for s in listed.sweeps] == ["s-1"] and listed.total == 1
    assert str(fake.requests[-1].url.params) == "limit=5&offset=0"

    indexes = await call(client, "sweep_indexes", "s-1", state="failed", first=1, limit=10)
    assert isinstance(indexes, IndexList) and [r.index for r in indexes.indexes] == [1, 2]
    assert dict(fake.requests[-1].url.params) == {"first": "1", "limit": "10", "state": "failed"}
    await call(client, "sweep_indexes", "s-1")
    assert dict(fake.requests[-1].url.params) == {"first": "0", "limit": "1000"}
    with pytest.raises(ValueError):
        await call(client, "sweep_indexes", "s-1", state="sleeping")

    record = await call(client, "sweep_index", "s-1", 2)
    assert isinstance(record, IndexRecord) and record.index == 2 and record.attempts == 1

    assert (await call(client, "retry_sweep", "s-1")).sweep.state == JobState.RUNNING
    assert (await call(client, "cancel_sweep", "s-1")).sweep.state == JobState.CANCELLED
    assert paths(fake)[-4:] == [
        "GET /v1/sweeps/s-1/indexes?first=0&limit=1000",
        "GET /v1/sweeps/s-1/indexes/2",
        "POST /v1/sweeps/s-1/retry",
        "POST /v1/sweeps/s-1/cancel",
    ]


async def test_unknown_sweep_is_not_found(client, fake: SweepNode) -> None:
    from shoal import NotFound

    with pytest.raises(NotFound, match="sweep s-404 not found"):
        await call(client, "describe_sweep", "s-404")


async def test_index_logs(client, fake: SweepNode) -> None:
    fake.add_sweep("s-1")
    assert await call(client, "index_logs", "s-1", 4) == "stdout of 4\n"
    assert await call(client, "index_logs", "s-1", 4, "stderr") == "stderr of 4\n"
    assert paths(fake)[-1] == "GET /v1/sweeps/s-1/indexes/4/logs?stream=stderr"
    with pytest.raises(ValueError):
        await call(client, "index_logs", "s-1", 4, "stdin")
    with pytest.raises(ValueError, match="invalid index"):
        await call(client, "index_logs", "s-1", -1)


async def test_sweep_ids_are_path_escaped(client, fake: SweepNode) -> None:
    with pytest.raises(ShoalAPIError):
        await call(client, "describe_sweep", "s-1/../../jobs")
    assert fake.requests[-1].url.raw_path == b"/v1/sweeps/s-1%2F..%2F..%2Fjobs"


async def test_events_of_a_sweep_come_from_its_own_stream(client, fake: SweepNode) -> None:
    fake.add_sweep("s-1")
    fake.events["s-1"] = make_events("s-1")
    events = await collect(client.events("s-1"))
    assert [e.seq for e in events] == [1, 2, 3, 4, 5] and events[-1].kind == EventKind.COMPLETED
    assert paths(fake) == ["GET /v1/sweeps/s-1/events"]


# -- download_index --------------------------------------------------------------------------------


async def test_download_sweep_fetches_each_completed_index_once_whatever_the_node_pages(
        client, fake: SweepNode, tmp_path: Path) -> None:
    """Pages that repeat an index, go backwards, name one past the sweep or never move on: each index that can
    be is fetched once, and the loop ends (it took the node's word for where the next page starts)."""
    fake.add_sweep("s-1", state=JobState.COMPLETED)  # 3 indexes
    fake.index_page = [2, 0, 0, 1, 7, -1] + [2] * 1_000  # a full page (more than SWEEP_PAGE), the same every time
    got = await call(client, "download_sweep", "s-1", tmp_path / "all")
    assert got == [tmp_path / "all" / str(i) for i in (0, 1, 2)]
    assert all((tmp_path / "all" / str(i) / "stdout").read_text() == "x=2\n" for i in range(3))
    assert sum(1 for line in paths(fake) if line.endswith("/results")) == 3
    assert sum(1 for line in paths(fake) if "/indexes?" in line) == 1  # it reached the sweep's last index
    fake.index_page = [0] * 1_001  # a node that never moves on
    got = await call(client, "download_sweep", "s-1", tmp_path / "again")
    assert got == [tmp_path / "again" / "0"] and sum(1 for line in paths(fake) if "/indexes?" in line) == 3


async def test_download_sweep_fetches_several_indexes_at_once_and_returns_them_in_order(
        client, fake: SweepNode, tmp_path: Path) -> None:
    """One at a time, each index waited for the node to get its results from IPFS: 300 took 16 s to download,
    twice what they took to run. 8 at once, and no more (the node serves other clients)."""
    from shoal._client import DOWNLOADS_AT_ONCE

    sweep = fake.add_sweep("s-1", state=JobState.COMPLETED)
    spec = SweepSpec.model_validate({**SWEEP, "grid": {"x": [str(i) for i in range(20)]}})
    fake.sweeps["s-1"] = sweep.model_copy(update={"spec": spec, "count": 20})
    fake.index_page, fake.results_delay = list(range(20)), 1.0
    progressed: list[int] = []
    got = await call(client, "download_sweep", "s-1", tmp_path / "all", progress=progressed.append)
    assert got == [tmp_path / "all" / str(i) for i in range(20)]
    assert progressed == list(range(1, 21))  # how far it is, one index at a time
    first = fake.results_asked[0]
    together = [t for t in fake.results_asked if t - first < fake.results_delay / 2]  # before any could end
    assert len(together) == DOWNLOADS_AT_ONCE == 8 and len(fake.results_asked) == 20


async def test_download_sweep_makes_its_folder_when_no_index_completed(client, fake: SweepNode,
                                                                       tmp_path: Path) -> None:
    """``shoal get`` printed a folder that did not exist, and ``cd "$(shoal get ID)"`` failed."""
    fake.add_sweep("s-1", state=JobState.FAILED)
    fake.index_page = []
    assert await call(client, "download_sweep", "s-1", tmp_path / "none" / "here") == []
    assert (tmp_path / "none" / "here").is_dir() and not any((tmp_path / "none" / "here").iterdir())


async def test_download_index_extracts_results(client, fake: SweepNode, tmp_path: Path) -> None:
    fake.add_sweep("s-1")
    dest = await call(client, "download_index", "s-1", 2, tmp_path / "out")
    assert dest == tmp_path / "out" and (dest / "stdout").read_text() == "x=2\n"
    assert paths(fake)[-1] == "GET /v1/sweeps/s-1/indexes/2/results"
    assert fake.requests[-1].headers["accept"] == "application/x-tar"


def _cid_of(files: dict[str, bytes], tmp_path: Path) -> str:
    from storage.unixfs import cid_of_path

    src = tmp_path / "cid-src"
    for name, data in files.items():
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    return str(cid_of_path(src))


async def test_download_index_checks_the_cid(client, fake: SweepNode, tmp_path: Path) -> None:
    fake.add_sweep("s-1")
    fake.result_cid = _cid_of(fake.result_files, tmp_path)
    good = await call(client, "download_index", "s-1", 2, tmp_path / "good")
    assert (good / "stdout").read_text() == "x=2\n" and not (good / fake.result_cid).exists()

    fake.result_files = {**fake.result_files, "stdout": b"tampered\n"}  # same CID named, other bytes
    with pytest.raises(ShoalAPIError) as info:
        await call(client, "download_index", "s-1", 2, tmp_path / "bad")
    assert info.value.code == "corrupted"
    assert "the results of index 2 of sweep s-1 do not match their CID" in str(info.value)
    assert not (tmp_path / "bad").exists()


async def test_download_index_refuses_unsafe_archives(client, fake: SweepNode, tmp_path: Path) -> None:
    fake.add_sweep("s-1")
    fake.result_files = {"ok.txt": b"fine", "../escaped.txt": b"gotcha"}
    with pytest.raises(ShoalAPIError) as info:
        await call(client, "download_index", "s-1", 0, tmp_path / "out")
    assert info.value.code == "unsafe_archive" and "index 0 of sweep s-1" in str(info.value)
    assert not (tmp_path / "escaped.txt").exists()


def test_sdk_sweep_code_does_not_need_trio() -> None:
    """The CLI blocks trio; the SDK's sweep methods, like the rest, must work without it."""
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['trio'] = None\n"
        "import shoal, shoal._client\n"
        "c = shoal.Client('http://127.0.0.1:9', key=shoal.ClientKey.generate())\n"
        "print(callable(c.submit_sweep), 'trio' not in {m for m, v in sys.modules.items() if v is not None})\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["True", "True"]


def test_downloads_in_threads_raise_the_first_failure_at_once_and_start_nothing_after() -> None:
    """A pool's threads are joined: after a failure, or Ctrl-C, a download stalled on a silent node held the
    caller for as long as it stalled."""
    import threading

    from shoal._client import _in_threads

    stalled, called = threading.Event(), []

    def fetch(i: int) -> int:
        called.append(i)
        if i == 0:
            stalled.wait(30)  # a node that stopped sending
        if i == 1:
            raise ConnectionError("index 1 failed")
        return i * 10

    started = time.monotonic()
    with pytest.raises(ConnectionError, match="index 1 failed"):
        _in_threads(fetch, list(range(50)), 2)
    assert time.monotonic() - started < 10 and sorted(called) == [0, 1]  # not 30 s; nothing after the failure
    stalled.set()
    assert _in_threads(lambda i: i * 10, list(range(20)), 8) == [i * 10 for i in range(20)]
    assert _in_threads(fetch, [], 8) == []

"""``shoal._map``: planning a map's sweep, the program its indexes run, reading their replies, and
``Client.map``/``AsyncClient.map`` driven against a fake node.

The fake node runs each index's program with this interpreter in a subprocess, with the
environment the sweep gives that index: the program under test is the real one, only the
network and the Pyodide engine are left out (``tests/integration/test_map_devstack.py`` has them).
"""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import traceback
from typing import Any

import httpx
import pytest
import trio

from jobs.model import RunResult
from jobs.states import JobState
from jobs.sweep import IndexRecord, Sweep
from jobs.views import IndexList, SweepDescription, SweepSubmitRequest
from shoal import AsyncClient, CannotShip, Client, ClientKey, IndexFailed, InvalidRequest, RemoteError
from shoal._map import PAGE, MapPlan, MapRun, Progress, outcome, plan_map, reply_of

OFFSET = 100


def add(x: int) -> int:
    return x + OFFSET


def price(s0: float, vol: float) -> dict:
    return {"price": s0 * vol}


def chatty(x: int) -> int:
    print("printed, not the value")
    if x == 2:
        raise KeyError(x)
    if x == 3:
        raise SystemExit(4)
    return x


def run_index(plan: MapPlan, index: int) -> IndexRecord:
    """Index ``index`` run the way a python engine runs it: ``python -c PROGRAM`` with its env."""
    assert plan.spec is not None
    job = plan.spec.job_for(index)
    done = subprocess.run([sys.executable, "-c", job.engine.code], env={**os.environ, **job.env},
                          capture_output=True, text=True, timeout=60, cwd="/")  # fmt: skip
    state = JobState.COMPLETED if done.returncode == 0 else JobState.FAILED
    return IndexRecord(index=index, state=state, reason="completed" if done.returncode == 0 else
                       f"exit code {done.returncode}",
                       result=RunResult(exit_code=done.returncode, stdout=done.stdout, stderr=done.stderr))


# -- planning ------------------------------------------------------------------------------------


def test_items_become_a_zip_axis_and_a_grid_the_sweeps_own_grid() -> None:
    plan = plan_map(add, ([1, 2, 3],), None, None, None)
    assert plan.spec is not None and plan.count == 3
    assert plan.spec.zip == {"SHOAL_ARG_0": ["1", "2", "3"]}
    assert [plan.arguments(i) for i in range(3)] == [[1], [2], [3]]
    grid = plan_map(price, (), {"s0": [100, 110], "vol": [0.1, 0.2, 0.3]}, None, None)
    assert grid.count == 6 and grid.labels == ["s0", "vol"]
    assert grid.arguments(1) == [100, 0.2]  # itertools.product order: the last axis varies fastest
    assert grid.spec is not None and set(grid.spec.grid) == {"SHOAL_KW_s0", "SHOAL_KW_vol"}


@pytest.mark.parametrize("values", [5, "100"])
def test_a_grid_axis_that_is_no_list_is_refused_saying_what_to_give(values: object) -> None:
    """``grid={"s0": 5}`` raised a bare "TypeError: 'int' object is not iterable"; a string made one value a letter."""
    with pytest.raises(TypeError, match=r"grid values must be lists of values, e.g. grid=\{'s0': \[1, 2, 3\]\}"):
        plan_map(price, (), {"s0": values, "vol": [0.1]}, None, None)


def test_the_same_map_is_the_same_spec_byte_for_byte() -> None:
    first = plan_map(add, ([1, (2, 3)],), None, None, {"timeout": 30})
    again = plan_map(add, ([1, (2, 3)],), None, None, {"timeout": 30})
    assert first.spec is not None and again.spec is not None
    assert first.spec.digest() == again.spec.digest()
    assert first.spec.job.timeout == 30


def test_bad_calls_fail_before_anything_is_sent() -> None:
    with pytest.raises(TypeError, match="not both"):
        plan_map(add, ([1],), {"x": [1]}, None, None)
    with pytest.raises(TypeError, match="not both"):
        plan_map(add, (), None, None, None)
    with pytest.raises(ValueError, match="different lengths"):
        plan_map(add, ([1, 2], [1]), None, None, None)
    with pytest.raises(ValueError, match="identifiers"):
        plan_map(price, (), {"not a name": [1]}, None, None)
    with pytest.raises(CannotShip, match="item 1 cannot be sent"):
        plan_map(add, ([1, object()],), None, None, None)
    with pytest.raises(CannotShip, match="at most"):
        plan_map(add, (["x" * 1000] * 1000,), None, None, None)
    with pytest.raises(ValueError, match="engine is map's"):
        plan_map(add, ([1],), None, None, {"engine": {"name": "noop"}})
    with pytest.raises(InvalidRequest, match="timeout"):
        plan_map(add, ([1],), None, None, {"timeout": -1})
    assert plan_map(add, ([],), None, None, None).count == 0


def test_image_goes_to_the_python_engine_when_it_takes_one() -> None:
    from jobs.spec import PythonEngine

    if "image" not in PythonEngine.model_fields:  # before `shoal run python --image` exists
        with pytest.raises(ValueError, match="image"):
            plan_map(add, ([1],), None, "shoal/python-sci", None)
        return
    plan = plan_map(add, ([1],), None, "shoal/python-sci", None)
    assert plan.spec is not None and plan.spec.job.engine.image == "shoal/python-sci"  # type: ignore[union-attr]


# -- the program and its replies -------------------------------------------------------------------


def test_the_program_replies_with_the_value_and_sends_prints_to_stderr() -> None:
    plan = plan_map(chatty, ([1, 2, 3],), None, None, None)
    one, two, three = (run_index(plan, i) for i in range(3))
    assert one.result is not None and reply_of(one.result) == {"ok": True, "value": 1}
    assert "printed, not the value" in one.result.stderr
    assert outcome(plan, "s-1", one) == 1
    error = outcome(plan, "s-1", two)
    assert isinstance(error, RemoteError) and isinstance(error, KeyError)
    assert two.result is not None and two.result.exit_code == 1
    assert error.type_name == "KeyError" and error.index == 1 and error.sweep_id == "s-1"
    assert str(error) == "index 1 (item 2) of sweep s-1 raised KeyError: 2"
    assert "in chatty" in error.remote_traceback and "raise KeyError(x)" in error.remote_traceback
    assert "<string>" not in error.remote_traceback  # the runner's own frames are left out
    assert "raise KeyError(x)" in str(error.__cause__)
    exit_error = outcome(plan, "s-1", three)  # the function's SystemExit is an exception like any
    assert isinstance(exit_error, RemoteError) and exit_error.type_name == "SystemExit"


def test_an_index_without_a_reply_is_index_failed() -> None:
    plan = plan_map(add, ([1],), None, None, None)
    lost = IndexRecord(index=0, state=JobState.FAILED, reason="gave up after 3 attempts: node gone")
    failed = outcome(plan, "s-1", lost)
    assert isinstance(failed, IndexFailed) and "node gone" in str(failed) and failed.reason.startswith("gave up")
    killed = IndexRecord(index=0, state=JobState.FAILED, reason="exit code 137",
                         result=RunResult(exit_code=137, stdout="half a li", stderr="MemoryError\n"))
    assert "MemoryError" in str(outcome(plan, "s-1", killed))
    forged = IndexRecord(index=0, state=JobState.COMPLETED, result=RunResult(
        stdout=json.dumps({"ok": True, "value": {"__shoal__": "pickle"}})))
    assert isinstance(outcome(plan, "s-1", forged), IndexFailed)


def test_a_run_hands_out_outcomes_as_they_come_or_in_order() -> None:
    plan = plan_map(add, ([1, 2, 3],), None, None, None)
    records = [IndexRecord(index=i, state=JobState.COMPLETED,
                           result=RunResult(stdout=json.dumps({"ok": True, "value": i}))) for i in range(3)]
    pending = IndexRecord(index=0, state=JobState.RUNNING)
    for ordered, expected in ((False, [[(2, 2)], [(0, 0), (1, 1)]]), (True, [[], [(0, 0), (1, 1), (2, 2)]])):
        run = MapRun(plan, ordered=ordered)
        run.sweep_id = "s-1"
        assert run.take([pending, records[2]]) == expected[0]
        assert run.low == 0
        assert run.take([records[0], records[1], records[2]]) == expected[1]  # seen twice: handed out once
        assert run.low == 3 and run.complete


def test_the_progress_bar_redraws_one_line() -> None:
    out = io.StringIO()
    bar = Progress(4, stream=out, enabled=True)
    bar.update(2, 1)
    bar.close()
    text = out.getvalue()
    assert "\r" in text and "2/4, 1 failed" in text and text.endswith("\n")
    quiet = io.StringIO()
    Progress(4, stream=quiet).update(1, 0)  # not a terminal: off unless asked
    assert quiet.getvalue() == ""


# -- Client.map against a fake node ------------------------------------------------------------------


class MapNode:
    """Keeps one sweep; each poll of it runs the next ``per_poll`` indexes."""

    def __init__(self, per_poll: int = 2) -> None:
        self.per_poll = per_poll
        self.sweep: Sweep | None = None
        self.plan: MapPlan | None = None
        self.records: dict[int, IndexRecord] = {}
        self.cancelled = False

    def handle(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        if method == "POST" and path == "/v1/sweeps":
            spec = SweepSubmitRequest.model_validate_json(request.content).spec
            self.plan = MapPlan(spec, spec.count, [], [])
            self.records = {}
            self.sweep = Sweep(id="s-" + "1" * 32, owner="me", spec=spec, count=spec.count, state=JobState.RUNNING,
                               created_at=time.time(), updated_at=time.time())
            return self.describe(201)
        assert self.sweep is not None and self.plan is not None
        if path.endswith("/cancel"):
            self.cancelled = True
            self.sweep = self.sweep.model_copy(update={"state": JobState.CANCELLED})
            return self.describe()
        if path.endswith("/indexes"):
            first = int(request.url.params["first"])
            records = [self.records.get(i, IndexRecord(index=i)) for i in range(first, self.sweep.count)]
            return httpx.Response(200, json=IndexList(indexes=records, total=len(records)).model_dump(mode="json"))
        for i in [i for i in range(self.sweep.count) if i not in self.records][: self.per_poll]:
            self.records[i] = run_index(self.plan, i)
        if len(self.records) == self.sweep.count:
            self.sweep = self.sweep.model_copy(update={"state": JobState.COMPLETED})
        counts: dict[JobState, int] = {}
        for record in self.records.values():
            counts[record.state] = counts.get(record.state, 0) + 1
        self.sweep = self.sweep.model_copy(update={"counts": counts})
        return self.describe()

    def describe(self, status: int = 200) -> httpx.Response:
        assert self.sweep is not None
        return httpx.Response(status, json=SweepDescription(sweep=self.sweep).model_dump(mode="json"))


@pytest.fixture
def node() -> MapNode:
    return MapNode()


def sync_client(node: MapNode) -> Client:
    return Client("http://node", key=ClientKey.generate(), transport=httpx.MockTransport(node.handle))


def test_client_map_returns_values_in_order(node: MapNode) -> None:
    with sync_client(node) as client:
        assert client.map(add, [5, 6, 7, 8, 9]) == [105, 106, 107, 108, 109]
        assert dict(client.map_iter(add, [1, 2, 3])) == {0: 101, 1: 102, 2: 103}
        assert client.map(add, []) == []
    assert not node.cancelled


def test_a_remote_exception_cancels_the_rest_and_is_raised(node: MapNode) -> None:
    with sync_client(node) as client, pytest.raises(RemoteError) as caught:
        client.map(chatty, [0, 1, 2, 4, 5, 6, 7])
    assert caught.value.index == 2 and node.cancelled
    assert len(node.records) < 7  # nobody waited for the rest


def test_ctrl_c_stops_the_sweep_and_says_that_running_the_map_again_takes_it_up(node: MapNode) -> None:
    class Interrupted(MapNode):
        def handle(self, request: httpx.Request) -> httpx.Response:
            if request.method == "GET" and self.records:  # the user presses Ctrl-C while the map waits
                raise KeyboardInterrupt
            return super().handle(request)

    interrupted = Interrupted()
    with sync_client(interrupted) as client, pytest.raises(KeyboardInterrupt) as caught:
        client.map(add, [1, 2, 3, 4])
    assert str(caught.value) == (f"sweep s-{'1' * 32} stopped; the same map, run again, takes it up where it stopped "
                                 "(what finished is kept)")
    assert caught.value.__suppress_context__ and interrupted.cancelled


def test_return_exceptions_keeps_going(node: MapNode) -> None:
    with sync_client(node) as client:
        values = client.map(chatty, [0, 1, 2, 4], return_exceptions=True)
    assert values[:2] == [0, 1] and values[3] == 4 and isinstance(values[2], KeyError)
    assert not node.cancelled


def test_as_frame_gives_a_column_per_argument_and_per_value_key(node: MapNode) -> None:
    pd = pytest.importorskip("pandas")
    with sync_client(node) as client:
        frame = client.map(price, grid={"s0": [100, 110], "vol": [0.1, 0.2]}, as_frame=True)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["s0", "vol", "price"]
    assert frame.to_dict("records")[1] == {"s0": 100, "vol": 0.2, "price": 100 * 0.2}


def test_async_client_map(node: MapNode) -> None:
    async def main() -> tuple[list[Any], list[tuple[int, Any]]]:
        async with AsyncClient("http://node", key=ClientKey.generate(),
                               transport=httpx.MockTransport(node.handle)) as client:
            values = await client.map(add, [1, 2, 3])
            seen = [pair async for pair in client.map_iter(add, [4, 5, 6], ordered=True)]
        return values, seen

    values, seen = trio.run(main)
    assert values == [101, 102, 103]
    assert seen == [(0, 104), (1, 105), (2, 106)]


def test_a_straggler_below_a_page_of_finished_indexes_is_waited_on_with_fewer_polls(capsys) -> None:
    """One index runs on while those after it finish: the page of records from it comes back unchanged. The
    client asked for that page, and for the sweep, every 0.25 s until the straggler ended (on a 100,000-index
    sweep, about 75 ms and 200 ms of the node's time each); now it asks as seldom as while nothing finishes.
    Its progress bar stood still meanwhile, at the end of that page; it now shows what the sweep says ended."""
    count = 2 * PAGE

    def finished(i: int) -> IndexRecord:
        reply = json.dumps({"ok": True, "value": i})
        return IndexRecord(index=i, state=JobState.COMPLETED, result=RunResult(exit_code=0, stdout=reply + "\n"))

    class StragglerNode(MapNode):
        def __init__(self) -> None:
            super().__init__()
            self.waits: list[float] = []

        def handle(self, request: httpx.Request) -> httpx.Response:
            if request.method == "GET" and request.url.path.endswith("/indexes"):
                first, limit = int(request.url.params["first"]), int(request.url.params["limit"])
                records = [self.records.get(i, IndexRecord(index=i)) for i in range(first, min(count, first + limit))]
                return httpx.Response(200, json=IndexList(indexes=records, total=count).model_dump(mode="json"))
            if request.method == "GET" and "wait" in request.url.params:
                assert self.sweep is not None
                self.waits.append(float(request.url.params["wait"]))
                if len(self.waits) == 1:  # everything but index 0 finishes at once
                    self.records.update({i: finished(i) for i in range(1, count)})
                elif len(self.waits) == 6:  # index 0 at last
                    self.records[0] = finished(0)
                    self.sweep = self.sweep.model_copy(update={"state": JobState.COMPLETED})
                self.sweep = self.sweep.model_copy(update={"counts": {JobState.COMPLETED: len(self.records)}})
                return self.describe()
            return super().handle(request)

    straggling = StragglerNode()
    with sync_client(straggling) as client:
        assert client.map(add, range(count), progress=True) == list(range(count))
    # the page from index 0 read every index after it up to 999, then came back unchanged three times
    assert straggling.waits == [0.25, 0.25, 0.25, 0.5, 1.0, 2.0, 2.0]
    shown = [re.search(r"\] (\d+)/", line)[1] for line in capsys.readouterr().err.split("\r") if "map [" in line]
    assert f"{count - 1}" in shown and shown.index(f"{count - 1}") < shown.index(f"{count}")


def test_a_sweep_that_ends_without_some_records_fails_them_rather_than_polling_forever(node: MapNode) -> None:
    class LosingNode(MapNode):
        def handle(self, request: httpx.Request) -> httpx.Response:
            if request.method == "GET" and request.url.path.endswith("/indexes"):
                return httpx.Response(200, json={"indexes": [], "total": 0})
            response = super().handle(request)
            if self.sweep is not None and request.method == "GET":
                self.sweep = self.sweep.model_copy(update={"state": JobState.COMPLETED})
                return self.describe()
            return response

    losing = LosingNode()
    with sync_client(losing) as client, pytest.raises(IndexFailed, match="ended without it"):
        client.map(add, [1, 2])
    assert len(losing.records) <= 2


@pytest.mark.parametrize("type_name", ["SystemExit", "KeyboardInterrupt", "GeneratorExit", "BaseException",
                                       "RemoteError", "print", "__import__", "object", "NotAType",
                                       "StopIteration", "StopAsyncIteration"])
def test_a_forged_error_reply_cannot_make_the_client_raise_something_that_stops_it(type_name: str) -> None:
    """What a node's index prints is the node's word: a reply naming an exception that would end the caller's
    program (or anything but a built-in ``Exception``) comes back as a plain ``RemoteError``."""
    from shoal._map import remote_error

    error = remote_error("index 0 of sweep s-1", 0, "s-1", {"type": type_name, "builtin": True,
                                                            "message": "forged", "traceback": "forged tb"})
    assert type(error) is RemoteError and isinstance(error, Exception)
    assert error.type_name == type_name and error.remote_message == "forged"


def test_a_nodes_words_in_a_remote_error_reach_the_terminal_as_text() -> None:
    """Printed with its traceback, a forged exception set the user's window title and wrote the clipboard."""
    from shoal._map import remote_error

    hostile = "msg \x1b]0;PWNED\x07\x1b]52;c;cm0gLXJmIH4K\x07\u202e"
    error = remote_error("index 0 of sweep s-1", 0, "s-1", {"type": "ValueError" + hostile, "builtin": True,
                                                            "message": hostile, "traceback": hostile})
    shown = "".join(traceback.format_exception(error))
    assert not any(c in shown for c in "\x1b\x07\u202e"), shown
    assert "\\x1b]0;PWNED\\x07" in shown  # as written

"""Sweeps in the ``shoal`` CLI: --param/--sweep parsing, following a sweep, and ``shoal sweep …``.

Driven through typer's CliRunner against a fake SDK client, like ``test_cli``.
"""

from __future__ import annotations

import json
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import cli.connect
import cli.waiting
from jobs import JobSpec, JobState, RunResult
from jobs.sweep import IndexRecord, Sweep, SweepSpec, index_ranges
from jobs.views import IndexList, SweepDescription, SweepList
from shoal import NotFound, WaitTimeout
from tests.unit.test_cli import HOSTILE, JOB_ID, NODE_ID, NOW, FakeClient, assert_terminal_safe, run

SWEEP_ID = "s-5e1f0a2b3c4d5e6f7a8b9c0d1e2f3a4b"
NOOP = JobSpec(engine={"name": "noop"})


def sweep_of(spec: SweepSpec, state: JobState, counts: dict[JobState, int] | None = None,
             reason: str = "", winner: int | None = None) -> Sweep:  # fmt: skip
    return Sweep(id=SWEEP_ID, owner="client-1", spec=spec, count=spec.count, state=state, reason=reason,
                 counts=counts or {state: spec.count}, winner=winner, created_at=NOW - 5, updated_at=NOW)  # fmt: skip


def description(sweep: Sweep, states: list[JobState] | None = None, reasons: dict[int, str] | None = None
                ) -> SweepDescription:  # fmt: skip
    states = states or [sweep.state] * sweep.count
    reasons = reasons or {}
    ranges = index_ranges((i, s, reasons.get(i, "")) for i, s in enumerate(states))
    return SweepDescription(sweep=sweep, ranges=ranges)


class FakeSweepClient(FakeClient):
    """``FakeClient`` plus the SDK's sweep methods."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sweeps_submitted: list[tuple[SweepSpec, str | None]] = []
        self.sweep_spec = SweepSpec(job=NOOP, grid={"x": ["1", "2", "3"]})
        self.final: SweepDescription | None = None  # what waiting ends with (default: all completed)
        self.progress: list[SweepDescription] = []  # what describe_sweep(wait=…) returns, in turn
        self.described_with: list[float | None] = []
        self.sweep_wait_error: BaseException | None = None
        self.retried: list[str] = []
        self.index_calls: list[tuple[str, Any]] = []
        self.index_stdout = "step 1 of 2\nmean=0.0003\n\n"  # index 0's

    def _final(self) -> SweepDescription:
        if self.final is not None:
            return self.final
        return description(sweep_of(self.sweep_spec, JobState.COMPLETED))

    def submit_sweep(self, spec: SweepSpec, *, idempotency_key: str | None = None) -> SweepDescription:
        self._check()
        self.sweeps_submitted.append((spec, idempotency_key))
        self.sweep_spec = spec
        return description(sweep_of(spec, JobState.PENDING))

    def describe_sweep(self, sweep_id: str, *, wait: float | None = None) -> SweepDescription:
        self._check()
        self.described_with.append(wait)
        if sweep_id != SWEEP_ID:
            raise NotFound(f"sweep {sweep_id} not found", 404, "not_found")
        if wait is not None and self.progress:
            return self.progress.pop(0)
        return self._final()

    def wait_sweep(self, sweep_id: str, *, timeout: float | None = None, poll: float = 25.0) -> SweepDescription:
        self._check()
        self.waited = (sweep_id, timeout)
        if self.sweep_wait_error is not None:
            raise self.sweep_wait_error
        return self._final()

    def list_sweeps(self, *, limit: int = 50, offset: int = 0) -> SweepList:
        self._check()
        self.list_sweeps_args = {"limit": limit, "offset": offset}
        return SweepList(sweeps=[self._final().sweep], total=1)

    def sweep_indexes(self, sweep_id: str, *, state: Any = None, first: int = 0, limit: int = 1000) -> IndexList:
        self.index_calls.append(("indexes", {"state": state, "first": first, "limit": limit}))
        records = [
            IndexRecord(index=0, state=JobState.COMPLETED, node_id=NODE_ID, attempts=1, reason="completed",
                        result=RunResult(exit_code=0, stdout=self.index_stdout)),
            IndexRecord(index=1, state=JobState.FAILED, node_id=NODE_ID, attempts=2, reason="exit code 1",
                        result=RunResult(exit_code=1, stdout="starting vol 0.0\n",
                                         stderr="Traceback\nValueError: vol\n\n")),
            IndexRecord(index=2, state=JobState.PENDING),
        ]  # fmt: skip
        if state is not None:
            records = [r for r in records if r.state == state]
        return IndexList(indexes=records[first:][:limit], total=len(records))

    def sweep_index(self, sweep_id: str, index: int) -> IndexRecord:
        return IndexRecord(index=index, state=JobState.COMPLETED, result=RunResult(exit_code=0, stdout="kept\n"))

    def retry_sweep(self, sweep_id: str) -> SweepDescription:
        self.retried.append(sweep_id)
        return description(sweep_of(self.sweep_spec, JobState.RUNNING, {JobState.COMPLETED: 2, JobState.PENDING: 1}))

    def cancel_sweep(self, sweep_id: str) -> SweepDescription:
        return description(sweep_of(self.sweep_spec, JobState.CANCELLED))

    def download_index(self, sweep_id: str, index: int, dest: Path, *, max_bytes: int | None = None) -> Path:
        self.index_calls.append(("download", (sweep_id, index, Path(dest))))
        return Path(dest)

    def index_logs(self, sweep_id: str, index: int, stream: str = "stdout") -> str:
        self.index_calls.append(("logs", (sweep_id, index, stream)))
        return f"{stream} of index {index}\n"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeSweepClient:
    client = FakeSweepClient()
    monkeypatch.setattr(cli.connect, "make_client", lambda api_url, *, timeout=30.0, ca_cert=None: client)
    monkeypatch.delenv("SHOAL_API", raising=False)
    return client


def submitted_sweep(fake: FakeSweepClient) -> SweepSpec:
    assert fake.submitted == [], "a job was submitted instead of a sweep"
    assert len(fake.sweeps_submitted) == 1
    return fake.sweeps_submitted[0][0]


def error_lines(result: Any) -> list[str]:
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("Error: ") for line in lines), lines
    assert "Traceback" not in result.output
    return [line.removeprefix("Error: ") for line in lines]


# -- --param and friends → the sweep spec -------------------------------------------------------


def test_params_make_a_grid_around_the_job(fake: FakeSweepClient) -> None:
    result = run("run", "noop", "--param", "x=1,2,3", "--param", "y=a,b", "-e", "Z=9", "--no-wait")
    assert result.exit_code == 0, result.stderr
    spec = submitted_sweep(fake)
    assert spec.grid == {"x": ["1", "2", "3"], "y": ["a", "b"]} and spec.count == 6
    assert spec.job == JobSpec(engine={"name": "noop"}, env={"Z": "9"})
    assert spec.job_for(5).env == {"Z": "9", "x": "3", "y": "b", "SHOAL_INDEX": "5", "SHOAL_COUNT": "6"}
    assert (spec.success, spec.shard_inputs) == ("all", 0)
    assert result.stdout == f"{SWEEP_ID}\n"
    assert f"follow it with: shoal wait {SWEEP_ID}" in result.stderr


def test_spaces_around_values_are_dropped_and_a_parameter_set_with_e_too_is_refused(fake: FakeSweepClient) -> None:
    """``--param "S0=90, 100"`` stored " 100"; ``--param S0=… -e S0=5`` lost the -e without a word."""
    assert run("run", "noop", "--param", "S0=90, 100 ", "--no-wait").exit_code == 0
    assert submitted_sweep(fake).grid == {"S0": ["90", "100"]}
    result = run("run", "noop", "--param", "S0=90,100", "-e", "S0=5", "--no-wait")
    assert result.exit_code == 2 and error_lines(result) == [
        "--param S0: S0 is set with -e too; a parameter gives each index its value"]


def test_a_range_of_numbers_stands_for_each_of_them_ends_included(fake: FakeSweepClient) -> None:
    """A quant sweeping 1,000 seeds once had to type them all: ``--param seed=0..999`` took the text
    literally, a sweep of one index."""
    result = run("run", "noop", "--param", "seed=0..999", "--param", "vol=0.3..0.1..0.1", "--param",
                 "k=90,100..110..5,name..x", "--no-wait")
    assert result.exit_code == 0, result.stderr
    spec = submitted_sweep(fake)
    assert spec.grid["seed"] == [str(i) for i in range(1000)]
    assert spec.grid["vol"] == ["0.3", "0.2", "0.1"]  # decimal steps: no 0.30000000000000004, either way
    assert spec.grid["k"] == ["90", "100", "105", "110", "name..x"]  # what is not a range of numbers is itself
    assert spec.count == 1000 * 3 * 5


def test_a_range_too_long_for_a_sweep_without_a_step_or_half_written_is_refused_at_once(fake: FakeSweepClient) -> None:
    for value, why in (("x=0..2000000", "2,000,001 values; a sweep has at most 1,000,000 indexes"),
                       ("x=0..1..0", "the step must not be 0"),
                       *((f"x={bad}", "a range is FIRST..LAST or FIRST..LAST..STEP, in plain numbers "
                                      "(e.g. 0..99 or 0.1..0.5..0.1)") for bad in ("0..", "1e3..1e3", "..5", "0..9..")),
                       ):
        result = run("run", "noop", "--param", value, "--no-wait")
        assert result.exit_code == 2 and error_lines(result) == [f"--param {value}: {why}"]
    assert fake.sweeps_submitted == []


def test_values_keep_their_equals_signs_and_empty_values(fake: FakeSweepClient) -> None:
    assert run("run", "noop", "--param", "opt=a=1,b=2,", "--no-wait").exit_code == 0
    assert submitted_sweep(fake).grid == {"opt": ["a=1", "b=2", ""]}


def test_docker_python_and_wasm_runs_take_sweep_flags(fake: FakeSweepClient) -> None:
    assert run("docker", "run", "busybox", "--param", "n=1,2", "--no-wait", "--", "sh", "-c", "echo $n").exit_code == 0
    code = "import os; print(os.environ['n'])"
    assert run("run", "python", "-c", code, "--param", "n=1,2", "--no-wait").exit_code == 0
    assert run("wasm", "run", "ipfs://bafymod", "--param", "n=1,2", "--no-wait").exit_code == 0
    engines = [spec.job.engine.name for spec, _ in fake.sweeps_submitted]
    assert engines == ["docker", "python", "wasm"] and fake.submitted == []


def test_sweep_flags_and_key_reach_the_client(fake: FakeSweepClient) -> None:
    result = run("run", "noop", "-i", "ipfs://bafydata:/data", "-o", "hit:/outputs", "--shard-inputs", "4",
                 "--success", "any", "--success-output", "hit", "--idempotency-key", "k-7", "--no-wait")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    spec = submitted_sweep(fake)
    assert (spec.shard_inputs, spec.success, spec.success_output) == (4, "any", "hit")
    assert spec.job_for(3).inputs[0].shard.index == 3
    assert fake.sweeps_submitted[0][1] == "k-7"


def test_shard_path_picks_the_input(fake: FakeSweepClient) -> None:
    result = run("run", "noop", "-i", "ipfs://bafya:/a", "-i", "ipfs://bafyb:/b", "--shard-inputs", "2",
                 "--shard-path", "/b", "--no-wait")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    job = submitted_sweep(fake).job_for(1)
    assert job.inputs[0].shard is None and job.inputs[1].shard.index == 1


def test_without_sweep_flags_a_job_is_submitted(fake: FakeSweepClient) -> None:
    assert run("run", "noop", "--no-wait").exit_code == 0
    assert len(fake.submitted) == 1 and fake.sweeps_submitted == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--param", "x"], "--param 'x': expected KEY=V1,V2,… or KEY=FIRST..LAST, e.g. --param lr=0.1,0.01"),
        (["--param", "=1,2"], "--param '=1,2': expected KEY=V1,V2,… or KEY=FIRST..LAST, e.g. --param lr=0.1,0.01"),
        (["--param", "x="], "--param 'x=': give at least one value after '=', e.g. x=1,2,3"),
        (["--param", "x=1", "--param", "x=2"], "--param x is given twice: give all its values at once (x=V1,V2,…)"),
        (["--param", "1x=1"], "sweep (--param/--sweep): invalid parameter names (they become environment "
                              "variables): 1x"),
        (["--param", "SHOAL_INDEX=1"], "sweep (--param/--sweep): SHOAL_INDEX is set by Shoal for every index"),
        (["--param", "x=1", "--concurrency", "2"], "sweep (--concurrency/--min-bids): a sweep runs each index "
                                                   "once: leave concurrency and min_bids unset"),
        (["--param", "x=1", "--confidence", "9"], "confidence (--confidence): Input should be less than or equal "
                                                  "to 5"),
        (["--param", "x=1", "--success-output", "out"], "sweep (--success-output): success_output only applies "
                                                        "with success=any"),
        (["--success", "any"], "sweep (--param/--sweep/--shard-inputs): a sweep needs parameters (grid, zip or "
                               "items) or shard_inputs"),
        (["--shard-inputs", "2", "--shard-path", "/nope", "-i", "ipfs://bafy:/data"],
         "sweep (--shard-path): shard_path: no input is mounted at /nope"),
    ],
)
def test_sweep_flag_errors_are_one_line_and_exit_2(fake: FakeSweepClient, args: list[str], expected: str) -> None:
    result = run("run", "noop", *args)
    assert result.exit_code == 2, result.output
    assert error_lines(result) == [expected]
    assert fake.sweeps_submitted == [] and fake.submitted == []


def test_every_sweep_problem_gets_its_own_line(fake: FakeSweepClient) -> None:
    result = run("run", "noop", "--param", "1x=1", "--concurrency", "2", "--success-output", "o")
    assert result.exit_code == 2
    lines = error_lines(result)
    assert len(lines) == 3, lines
    for flag in ("--param", "--concurrency", "--success-output"):
        assert any(flag in line for line in lines), (flag, lines)


def test_confidence_on_a_sweep_verifies_each_index_and_a_sweep_file_can_set_it(fake: FakeSweepClient,
                                                                                  tmp_path: Path) -> None:
    assert run("run", "noop", "--param", "x=1,2", "--confidence", "2", "--no-wait").exit_code == 0
    spec = submitted_sweep(fake)
    assert spec.confidence == 2 and spec.job.deal.confidence == 0  # the sweep's, not each index's job's
    path = tmp_path / "sweep.yaml"
    path.write_text("grid: {x: [1, 2]}\nconfidence: 3\n")
    fake.sweeps_submitted.clear()
    assert run("run", "noop", "--sweep", str(path), "--no-wait").exit_code == 0
    assert submitted_sweep(fake).confidence == 3


def test_shard_inputs_must_be_positive_and_success_a_choice(fake: FakeSweepClient) -> None:
    assert run("run", "noop", "--shard-inputs", "0").exit_code == 2
    result = run("run", "noop", "--param", "x=1", "--success", "most")
    assert result.exit_code == 2 and "--success" in result.stderr


# -- --sweep FILE -------------------------------------------------------------------------------


def test_sweep_file_yaml_with_zip_items_and_typed_values(fake: FakeSweepClient, tmp_path: Path) -> None:
    path = tmp_path / "sweep.yaml"
    path.write_text("# the study\nzip:\n  lr: [0.1, 0.01]\n  tag: [big, small]\nitems:\n  - {flag: true, n: 3}\n"
                    "  - {flag: false, n: 4}\nsuccess: any\n")  # fmt: skip
    result = run("run", "noop", "--sweep", str(path), "--no-wait")
    assert result.exit_code == 0, result.stderr
    spec = submitted_sweep(fake)
    assert spec.zip == {"lr": ["0.1", "0.01"], "tag": ["big", "small"]}  # YAML numbers as their text
    assert spec.items == [{"flag": "true", "n": "3"}, {"flag": "false", "n": "4"}]
    assert spec.success == "any" and spec.count == 4
    assert spec.values(3) == {"lr": "0.01", "tag": "small", "flag": "false", "n": "4"}


def test_sweep_file_json_grid_plus_params_and_overrides(fake: FakeSweepClient, tmp_path: Path) -> None:
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps({"grid": {"a": [1, 2]}, "success": "any", "shard_inputs": 9}))
    result = run("run", "noop", "--sweep", str(path), "--param", "b=x,y", "--success", "all", "--shard-inputs", "2",
                 "-i", "ipfs://bafy:/data", "--no-wait")  # fmt: skip
    assert result.exit_code == 0, result.stderr
    spec = submitted_sweep(fake)
    assert spec.grid == {"a": ["1", "2"], "b": ["x", "y"]}  # the file's axes first, then the flags'
    assert (spec.success, spec.shard_inputs, spec.count) == ("all", 2, 8)  # flags override the file


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("grid: {x: [1, 2]}\njob: {engine: {name: docker}}\nfoo: 1\n",
         "unknown key(s) job, foo (the job comes from the command line); expected grid, zip, items, shard_inputs, "
         "shard_path, success, success_output"),
        ("grid: {x: 1}\n", "grid.x: expected a list of values, e.g. [1, 2, 3]"),
        ("grid: [1, 2]\n", "grid: expected a mapping of KEY: [values]"),
        ("items: [1, 2]\n", "items: expected a list of mappings of KEY: value, e.g. [{x: 1, y: a}, {x: 2, y: b}]"),
        ("- just\n- a list\n", "expected a mapping with keys grid, zip, items, shard_inputs, shard_path, success, "
                               "success_output"),
        ("grid: {x: [1, 2}\n", "not valid YAML or JSON at line 1: "),
    ],
)
def test_bad_sweep_files_are_usage_errors(fake: FakeSweepClient, tmp_path: Path, content: str, expected: str) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(content)
    result = run("run", "noop", "--sweep", str(path))
    assert result.exit_code == 2, result.output
    (line,) = error_lines(result)
    assert line.startswith(f"--sweep {path}: {expected}"), line
    assert fake.sweeps_submitted == []


def test_sweep_file_problems_found_by_the_model_name_the_file_flag(fake: FakeSweepClient, tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("zip: {a: [1, 2], b: [1]}\nitems: [{x: 1}, {y: 2}]\n")
    result = run("run", "noop", "--sweep", str(path))
    assert result.exit_code == 2
    assert error_lines(result) == ["sweep (--sweep): zip: every list must have the same length",
                                   "sweep (--sweep): items: every item must set the same parameters"]


def test_missing_sweep_file_and_param_clashing_with_it(fake: FakeSweepClient, tmp_path: Path) -> None:
    result = run("run", "noop", "--sweep", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2 and error_lines(result)[0].startswith(f"--sweep {tmp_path / 'nope.yaml'}: cannot read")
    path = tmp_path / "s.yaml"
    path.write_text("grid: {x: [1]}\n")
    result = run("run", "noop", "--sweep", str(path), "--param", "x=2")
    assert result.exit_code == 2
    assert error_lines(result) == ["--param x: x is in the --sweep file's grid already"]


def test_sweep_file_json_without_pyyaml(fake: FakeSweepClient, tmp_path: Path, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "yaml", None)  # PyYAML is optional: JSON still works
    path = tmp_path / "s.json"
    path.write_text('{"grid": {"x": ["1", "2"]}}')
    assert run("run", "noop", "--sweep", str(path), "--no-wait").exit_code == 0
    assert submitted_sweep(fake).grid == {"x": ["1", "2"]}
    path.write_text("grid: {x: [1]}\n")
    result = run("run", "noop", "--sweep", str(path))
    assert result.exit_code == 2 and "for YAML files install PyYAML" in result.stderr


# -- following a sweep --------------------------------------------------------------------------


def test_completed_sweep_prints_ranges_on_stderr_and_exits_0(fake: FakeSweepClient) -> None:
    result = run("run", "noop", "--param", "x=1,2,3")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == ""  # stdout is for the job's output: a sweep has one per index
    err = result.stderr.splitlines()
    assert err[0] == f"Sweep {SWEEP_ID} submitted: 3 indexes"
    assert err[1] == f"Sweep {SWEEP_ID} completed: 3/3 completed"
    assert err[2] == "  0-2 completed"
    assert f"shoal sweep logs {SWEEP_ID} INDEX" in err[3]
    assert fake.waited == (SWEEP_ID, None)


def test_failed_sweep_lists_failed_ranges_and_exits_1(fake: FakeSweepClient) -> None:
    states = [JobState.COMPLETED] * 5000 + [JobState.FAILED] * 3 + [JobState.COMPLETED] * 2
    fake.sweep_spec = SweepSpec(job=NOOP, grid={"x": [str(i) for i in range(5005)]})
    sweep = sweep_of(fake.sweep_spec, JobState.FAILED, {JobState.COMPLETED: 5002, JobState.FAILED: 3},
                     reason="3 of 5005 indexes failed")  # fmt: skip
    fake.final = description(sweep, states, {5000: "exit code 1", 5001: "exit code 2"})
    result = run("run", "noop", "--param", "x=" + ",".join(str(i) for i in range(5005)))
    assert result.exit_code == 1
    err = result.stderr.splitlines()
    assert f"Sweep {SWEEP_ID} failed: 5002/5005 completed · 3 failed" in err
    assert err[2:5] == ["  0-4999 completed", "  5000-5002 failed: exit code 1", "  5003-5004 completed"]
    # the first failed index's stderr, as a failed job shows its own
    assert err[5:8] == [f"Index 1 (x=1) failed; its stderr ended with (all of it: shoal sweep logs {SWEEP_ID} 1 "
                        "--stderr):", "Traceback", "ValueError: vol"]
    # a noop (as a python or wasm program) exits the same on every run: no retry is suggested
    assert "shoal sweep retry" not in result.stderr and "fix it and run the sweep again" in err[8]
    assert err[-1] == f"Error: sweep {SWEEP_ID} failed: 3 of 5005 indexes failed"


def test_a_failed_sweep_that_may_fail_by_chance_suggests_a_retry(fake: FakeSweepClient) -> None:
    fake.sweep_spec = SweepSpec(job=JobSpec(engine={"name": "docker", "image": "busybox"}), grid={"x": ["1", "2"]})
    fake.final = description(sweep_of(fake.sweep_spec, JobState.FAILED, {JobState.FAILED: 2}, reason="2 failed"))
    result = run("docker", "run", "busybox", "--param", "x=1,2", "--", "sh", "-c", "exit 1")
    assert result.exit_code == 1
    assert f"Why: shoal sweep indexes {SWEEP_ID} --state failed; run them again: shoal sweep retry {SWEEP_ID}" \
        in result.stderr.splitlines()


def test_many_ranges_are_cut_with_a_pointer_to_the_indexes(fake: FakeSweepClient) -> None:
    fake.sweep_spec = SweepSpec(job=NOOP, grid={"x": [str(i) for i in range(60)]})
    states = [JobState.COMPLETED if i % 2 else JobState.FAILED for i in range(60)]
    fake.final = description(sweep_of(fake.sweep_spec, JobState.FAILED, {JobState.FAILED: 30}), states)
    result = run("run", "noop", "--param", "x=1")
    ranges = [line for line in result.stderr.splitlines() if line.startswith("  ")]
    assert len(ranges) == 21 and ranges[-1] == f"  … 40 more ranges: shoal sweep indexes {SWEEP_ID}"


def test_success_any_prints_the_winner_and_its_stdout(fake: FakeSweepClient) -> None:
    fake.sweep_spec = SweepSpec(job=NOOP, grid={"x": ["1", "2", "3"]}, success="any")
    sweep = sweep_of(fake.sweep_spec, JobState.COMPLETED, {JobState.COMPLETED: 1, JobState.CANCELLED: 2}, winner=1)
    fake.final = description(sweep, [JobState.CANCELLED, JobState.COMPLETED, JobState.CANCELLED])
    result = run("run", "noop", "--param", "x=1,2,3", "--success", "any")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "stdout of index 1\n"
    assert "Index 1 succeeded first (x=2)" in result.stderr
    assert f"shoal sweep get {SWEEP_ID} 1" in result.stderr
    assert "  1 completed" in result.stderr.splitlines()


def test_json_prints_the_sweep_description_and_exit_code_follows(fake: FakeSweepClient) -> None:
    result = run("run", "noop", "--param", "x=1,2,3", "--json")
    assert result.exit_code == 0, result.stderr
    data = SweepDescription.model_validate(json.loads(result.stdout))
    assert data.sweep.id == SWEEP_ID and data.sweep.state == JobState.COMPLETED and result.stderr == ""
    fake.final = description(sweep_of(fake.sweep_spec, JobState.FAILED, reason="1 of 3 indexes failed"))
    result = run("run", "noop", "--param", "x=1,2,3", "--json")
    assert result.exit_code == 1 and json.loads(result.stdout)["sweep"]["state"] == "failed"
    result = run("run", "noop", "--param", "x=1,2,3", "--json", "--no-wait")
    assert result.exit_code == 0 and json.loads(result.stdout)["sweep"]["state"] == "pending"


def test_id_only_prints_only_the_sweep_id(fake: FakeSweepClient) -> None:
    result = run("run", "noop", "--param", "x=1,2,3", "--id-only")
    assert (result.exit_code, result.stdout, result.stderr) == (0, f"{SWEEP_ID}\n", "")


def test_wait_timeout_exits_124(fake: FakeSweepClient) -> None:
    running = sweep_of(fake.sweep_spec, JobState.RUNNING, {JobState.COMPLETED: 1, JobState.RUNNING: 2})
    fake.sweep_wait_error = WaitTimeout("sweep not finished", description(running))
    result = run("run", "noop", "--param", "x=1,2,3", "--wait-timeout", "1")
    assert result.exit_code == 124
    assert fake.waited == (SWEEP_ID, 1.0)
    assert error_lines_tail(result) == (f"sweep {SWEEP_ID} still running after waiting: 1/3 completed · 2 running "
                                        f"(it goes on: shoal wait {SWEEP_ID})")


def test_ctrl_c_while_following_exits_130(fake: FakeSweepClient) -> None:
    fake.sweep_wait_error = KeyboardInterrupt()
    result = run("run", "noop", "--param", "x=1,2,3")
    assert result.exit_code == 130 and "Traceback" not in result.output
    assert f"sweep {SWEEP_ID} goes on (stop it with: shoal cancel {SWEEP_ID})" in result.stderr


def live_console(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Stand in for rich's console on stderr: every text the status line shows, in order."""
    lines: list[str] = []

    class Status:
        def __enter__(self) -> Status:
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def update(self, text: Any) -> None:
            lines.append(text.plain)

    def status(text: Any) -> Status:
        lines.append(text.plain)
        return Status()

    console = types.SimpleNamespace(width=100, status=status)
    monkeypatch.setattr("cli.render.console", lambda stderr=False: console)
    monkeypatch.setattr(cli.waiting, "SWEEP_POLL", 0.01)
    return lines


def test_live_following_polls_with_a_short_wait_and_updates_the_line(fake: FakeSweepClient, monkeypatch) -> None:
    lines = live_console(monkeypatch)
    spec = fake.sweep_spec
    fake.progress = [
        description(sweep_of(spec, JobState.RUNNING, {JobState.COMPLETED: 1, JobState.RUNNING: 2})),
        description(sweep_of(spec, JobState.RUNNING, {JobState.COMPLETED: 2, JobState.FAILED: 1})),
        description(sweep_of(spec, JobState.COMPLETED)),
    ]
    start = description(sweep_of(spec, JobState.PENDING))
    final = cli.waiting.wait_sweep(fake, start, None, live=True)  # type: ignore[arg-type]
    assert final.sweep.state == JobState.COMPLETED
    assert fake.described_with == [0.01, 0.01, 0.01]  # long polls of SWEEP_POLL: the node is not hammered
    short = SWEEP_ID[:12]
    assert lines == [f"{short} pending  0/3 completed",
                     f"{short} running  1/3 completed · 2 running",
                     f"{short} running  2/3 completed · 1 failed",
                     f"{short} completed  3/3 completed"]  # fmt: skip


def test_live_following_stops_at_the_wait_timeout(fake: FakeSweepClient, monkeypatch) -> None:
    live_console(monkeypatch)
    running = description(sweep_of(fake.sweep_spec, JobState.RUNNING))
    fake.progress = [running] * 1000
    final = cli.waiting.wait_sweep(fake, running, 0.1, live=True)  # type: ignore[arg-type]
    assert final.sweep.state == JobState.RUNNING
    assert 2 <= len(fake.described_with) < 100


def test_sweep_status_line_never_wraps() -> None:
    from cli.render import sweep_status_line

    spec = SweepSpec(job=NOOP, grid={"x": [str(i) for i in range(10000)]})
    sweep = sweep_of(spec, JobState.RUNNING, {JobState.COMPLETED: 812, JobState.FAILED: 3, JobState.RUNNING: 40,
                                              JobState.PENDING: 9145})  # fmt: skip
    assert sweep_status_line(sweep).plain == f"{SWEEP_ID[:12]} running  812/10000 completed · 3 failed · 40 running"
    assert len(sweep_status_line(sweep, width=30).plain) == 30


# -- describe, cancel, events with a sweep id ---------------------------------------------------


def test_describe_a_sweep(fake: FakeSweepClient) -> None:
    spec = SweepSpec(job=NOOP, grid={"x": ["1", "2", "3"]}, success="any", confidence=2)
    sweep = sweep_of(spec, JobState.COMPLETED, {JobState.COMPLETED: 1, JobState.FAILED: 1, JobState.CANCELLED: 1},
                     reason="index 1 succeeded", winner=1)  # fmt: skip
    fake.final = description(sweep, [JobState.FAILED, JobState.COMPLETED, JobState.CANCELLED], {0: "exit code 3"})
    result = run("describe", SWEEP_ID)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for text in (SWEEP_ID, "index 1 succeeded", "grid x(3)", "index 1 (x=2)", "Counts", "Ranges", "exit code 3",
                 "each index's result by 2 nodes that agree"):
        assert text in out, text
    assert [line.split()[:2] for line in out.splitlines() if line.startswith(("0 ", "1 ", "2 "))] == [
        ["0", "failed"], ["1", "completed"], ["2", "cancelled"]]
    data = json.loads(run("describe", SWEEP_ID, "--json").stdout)
    assert data["sweep"]["winner"] == 1 and data["ranges"][0]["reason"] == "exit code 3"


def test_an_index_output_from_a_peer_is_shown_as_text_in_the_indexes_table(fake: FakeSweepClient) -> None:
    fake.index_stdout = "fine\n" + HOSTILE + "\n"  # what a lying node says its index printed last
    result = run("sweep", "indexes", SWEEP_ID)
    assert result.exit_code == 0, result.stderr
    assert_terminal_safe(result.stdout)
    assert "\\x1b[2J\\x1b]0;pwned" in result.stdout


def test_an_index_reason_from_a_peer_is_shown_as_text(fake: FakeSweepClient) -> None:
    spec = SweepSpec(job=NOOP, grid={"x": ["1", "2"]})
    sweep = sweep_of(spec, JobState.FAILED, {JobState.FAILED: 2}, reason=HOSTILE)
    fake.final = description(sweep, [JobState.FAILED, JobState.FAILED], {0: HOSTILE, 1: HOSTILE})
    described = run("describe", SWEEP_ID)
    assert described.exit_code == 0, described.stderr
    waited = run("sweep", "retry", SWEEP_ID)  # followed to its end: the ranges and the reason on stderr
    assert waited.exit_code != 0
    for text in (described.stdout, waited.stderr):
        assert_terminal_safe(text)
        assert "[/x] [bold]loud[/bold]" in text


def test_describe_a_sweep_by_prefix(fake: FakeSweepClient) -> None:
    result = run("describe", SWEEP_ID[:10], "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["sweep"]["id"] == SWEEP_ID
    result = run("describe", "s-000")
    assert result.exit_code == 4 and error_lines(result) == ["sweep s-000 not found"]


def test_cancel_a_sweep(fake: FakeSweepClient) -> None:
    fake.final = description(sweep_of(fake.sweep_spec, JobState.RUNNING))
    result = run("cancel", SWEEP_ID)
    assert (result.exit_code, result.stdout.strip()) == (0, f"Sweep {SWEEP_ID} cancelled")
    fake.final = description(sweep_of(fake.sweep_spec, JobState.COMPLETED))
    assert run("cancel", SWEEP_ID).stdout.strip() == f"Sweep {SWEEP_ID} already completed; nothing to cancel"
    assert json.loads(run("cancel", SWEEP_ID, "--json").stdout)["sweep"]["state"] == "cancelled"


def test_events_of_a_sweep(fake: FakeSweepClient) -> None:
    seen: list[str] = []
    original = fake.events

    def events(job_id: str, **kw: Any) -> Any:
        seen.append(job_id)
        return original(job_id, **kw)

    fake.events = events  # type: ignore[method-assign]
    result = run("events", SWEEP_ID[:10])
    assert result.exit_code == 0 and len(result.stdout.splitlines()) == 3
    assert seen == [SWEEP_ID]  # the prefix resolved among sweeps, not jobs


def test_logs_points_a_sweep_id_to_the_index_command(fake: FakeSweepClient) -> None:
    result = run("logs", SWEEP_ID)
    assert result.exit_code == 2 and "shoal sweep logs ID INDEX" in result.stderr
    assert run("describe", JOB_ID).exit_code == 0  # job ids still go to the job commands


def test_get_of_a_sweep_downloads_every_completed_index(fake: FakeSweepClient, tmp_path: Path) -> None:
    downloads: list[tuple[str, Path]] = []

    progressed: list[int] = []

    def download_sweep(sweep_id: str, dest: Path, *, max_bytes: int | None = None,
                       progress: Callable[[int], None] | None = None) -> list[Path]:
        downloads.append((sweep_id, Path(dest)))
        for done in (1, 2):
            assert progress is not None  # thousands of indexes took a minute of silence
            progress(done)
            progressed.append(done)
        return [Path(dest) / "0", Path(dest) / "2"]

    fake.download_sweep = download_sweep  # type: ignore[attr-defined]
    result = run("get", SWEEP_ID[:10], "-o", str(tmp_path / "r"))
    assert result.exit_code == 0, result.stderr
    assert downloads == [(SWEEP_ID, tmp_path / "r")] and result.stdout == f"{tmp_path / 'r'}\n"
    assert "2 completed indexes downloaded; the other 1 did not complete" in result.stderr
    assert progressed == [1, 2]


# -- shoal sweep … ------------------------------------------------------------------------------


def test_sweep_list(fake: FakeSweepClient) -> None:
    result = run("sweep", "list", "--limit", "5")
    assert result.exit_code == 0, result.stderr
    assert SWEEP_ID[:12] in result.stdout and "3/3 completed" in result.stdout and "noop" in result.stdout
    assert fake.list_sweeps_args == {"limit": 5, "offset": 0}
    assert json.loads(run("sweep", "list", "--json").stdout)["sweeps"][0]["id"] == SWEEP_ID


def test_sweep_indexes_table_and_filters(fake: FakeSweepClient) -> None:
    result = run("sweep", "indexes", SWEEP_ID)
    assert result.exit_code == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[2:]]
    assert rows[0] == ["0", "completed", NODE_ID[:16], "0", "1", "x=1", "mean=0.0003", "completed"]  # its last line
    assert rows[1] == ["1", "failed", NODE_ID[:16], "1", "2", "x=2", "ValueError:", "vol", "exit", "code", "1"]
    assert rows[2] == ["2", "pending", "0", "x=3"]
    result = run("sweep", "indexes", SWEEP_ID[:8], "--state", "failed", "--first", "0", "--limit", "1")
    assert result.exit_code == 0
    # the flags reach the client; one more index is asked for, to know whether a page follows
    assert fake.index_calls[-1] == ("indexes", {"state": "failed", "first": 0, "limit": 2})
    assert "more with" not in result.stderr  # the one failed index, shown
    assert "more with --first 2" in run("sweep", "indexes", SWEEP_ID, "--limit", "2").stderr
    for past_the_end in (["--limit", "3"], ["--first", "1", "--limit", "2"]):  # once said "more with --first 3"
        assert "more with" not in run("sweep", "indexes", SWEEP_ID, *past_the_end).stderr
    data = json.loads(run("sweep", "indexes", SWEEP_ID, "--json").stdout)
    assert [r["index"] for r in data["indexes"]] == [0, 1, 2] and data["total"] == 3
    assert run("sweep", "indexes", SWEEP_ID, "--state", "sleeping").exit_code == 2


def price(s0: float, vol: float) -> float:
    return s0 * vol


def test_a_maps_sweep_reads_as_its_function_and_arguments(fake: FakeSweepClient) -> None:
    # Client.map's sweeps were listed by the start of their program, the codec's docstring ("Values that
    # travel betwee…"), and their parameters as SHOAL_KW_s0=100 SHOAL_KW_vol=0.1.
    from shoal._map import plan_map

    fake.sweep_spec = plan_map(price, (), {"s0": [100, 110, 120], "vol": [0.1]}, None, None).spec
    listed = run("sweep", "list")
    assert listed.exit_code == 0, listed.stderr
    assert "python map price(s0, vol)" in listed.stdout and "Values" not in listed.stdout
    described = run("describe", SWEEP_ID)
    assert "python map price(s0, vol)" in described.stdout and "grid s0(3) vol(1)" in described.stdout
    rows = [line.split() for line in run("sweep", "indexes", SWEEP_ID).stdout.splitlines()[2:]]
    assert [row[5:7] for row in rows[:2]] == [["s0=100", "vol=0.1"], ["s0=110", "vol=0.1"]]
    fake.sweep_spec = plan_map(abs, ([-1, -2, -3],), None, None, None).spec  # one list: its values are items
    assert "python map abs(item)" in run("sweep", "list").stdout
    assert "zip item (3)" in run("describe", SWEEP_ID).stdout
    assert run("sweep", "indexes", SWEEP_ID).stdout.splitlines()[2].split()[5] == "item=-1"


def test_sweep_retry_then_follows(fake: FakeSweepClient) -> None:
    fake.final = description(sweep_of(fake.sweep_spec, JobState.FAILED, {JobState.COMPLETED: 2, JobState.FAILED: 1},
                                      reason="1 of 3 indexes failed"))  # fmt: skip
    result = run("sweep", "retry", SWEEP_ID)
    assert fake.retried == [SWEEP_ID]
    assert result.exit_code == 1  # it failed again
    assert result.stderr.splitlines()[0] == f"Sweep {SWEEP_ID}: 1 failed indexes put back to run"
    assert error_lines_tail(result) == f"sweep {SWEEP_ID} failed: 1 of 3 indexes failed"
    fake.final = description(sweep_of(fake.sweep_spec, JobState.COMPLETED))
    result = run("sweep", "retry", SWEEP_ID, "--no-wait")
    assert (result.exit_code, result.stdout) == (0, f"{SWEEP_ID}\n")
    assert "has no failed indexes; nothing to retry" in result.stderr
    result = run("sweep", "retry", SWEEP_ID, "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["sweep"]["state"] == "completed"


def error_lines_tail(result: Any) -> str:
    return result.stderr.strip().splitlines()[-1].removeprefix("Error: ")


def test_sweep_get_and_logs(fake: FakeSweepClient, tmp_path: Path) -> None:
    result = run("sweep", "get", SWEEP_ID, "2", str(tmp_path / "out"))
    assert result.exit_code == 0, result.stderr
    assert fake.index_calls[-1] == ("download", (SWEEP_ID, 2, tmp_path / "out"))
    assert result.stdout.strip() == str(tmp_path / "out")
    run("sweep", "get", SWEEP_ID[:8], "0")
    assert fake.index_calls[-1] == ("download", (SWEEP_ID, 0, Path(f"sweep-{SWEEP_ID[:12]}-0")))
    assert run("sweep", "logs", SWEEP_ID, "1").stdout == "stdout of index 1\n"
    assert run("sweep", "logs", SWEEP_ID, "1", "--stderr").stdout == "stderr of index 1\n"
    assert run("sweep", "logs", SWEEP_ID, "-1").exit_code == 2


def test_help_lists_the_sweep_commands() -> None:
    out = run("--help").stdout
    assert "  sweep " in out
    out = run("sweep", "--help").stdout
    for command in ("list", "indexes", "retry", "get", "logs"):
        assert f"  {command} " in out, command
    assert "--param" in run("run", "noop", "--help").stdout


@pytest.mark.parametrize("args", [("sweep", "indexes"), ("sweep", "logs", "JOB", "0"), ("sweep", "retry")])
def test_a_jobs_id_given_to_a_sweep_command_is_named_as_a_job(fake: FakeSweepClient, args: tuple[str, ...]) -> None:
    """It said "no sweep 'j-…' (or it is not yours)", as if the id were wrong."""
    job = "j-" + "0" * 32
    result = run(*[job if a == "JOB" else a for a in args], *([] if "JOB" in args else [job]))
    assert result.exit_code == 2 and error_lines(result) == [f"{job} is a job, not a sweep (shoal describe {job})"]


def test_wait_follows_a_sweep_submitted_earlier_to_its_end(fake: FakeSweepClient) -> None:
    result = run("wait", SWEEP_ID)
    assert result.exit_code == 0, result.stderr
    assert f"Sweep {SWEEP_ID} completed: 3/3 completed" in result.stderr
    assert f"every index's results: shoal get {SWEEP_ID}" in result.stderr
    fake.final = description(sweep_of(fake.sweep_spec, JobState.FAILED, reason="3 of 3 indexes failed"))
    result = run("wait", SWEEP_ID[:10])  # a prefix, as describe takes
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == f"Error: sweep {SWEEP_ID} failed: 3 of 3 indexes failed"


def test_max_failures_reaches_the_sweep_and_alone_makes_none(fake: FakeSweepClient) -> None:
    assert run("run", "noop", "--param", "x=1,2", "--max-failures", "0", "--no-wait").exit_code == 0
    assert submitted_sweep(fake).max_failures == 0
    result = run("run", "noop", "--max-failures", "3", "--no-wait")  # a sweep flag without parameters
    assert result.exit_code == 2 and fake.sweeps_submitted[1:] == []


def test_the_index_pages_limit_is_the_nodes(fake: FakeSweepClient) -> None:
    """``shoal`` starts without importing jobs, so --limit states the node's most as a number: the same one."""
    from jobs.views import MAX_INDEX_PAGE

    assert run("sweep", "indexes", SWEEP_ID, "--limit", str(MAX_INDEX_PAGE)).exit_code == 0
    assert run("sweep", "indexes", SWEEP_ID, "--limit", str(MAX_INDEX_PAGE + 1)).exit_code == 2

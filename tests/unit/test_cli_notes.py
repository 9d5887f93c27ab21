"""What the user was not told: Shoal's notes in a completed job's stderr, a sweep's indexes past the first 100
with --json, and a downloaded stdout that holds only the last MiB of what the job wrote."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

import cli.connect
import shoal
from jobs import JobState, RunResult
from jobs.sweep import IndexRecord, SweepSpec
from jobs.views import IndexList
from shoal import ClientKey
from tests.unit.test_cli import JOB_ID, FakeClient, describe_of, run
from tests.unit.test_cli_sweeps import NOOP, SWEEP_ID, FakeSweepClient, description, sweep_of
from tests.unit.test_client import API, FakeNode, cut_job, long_stdout

LOST = ("shoal: the job wrote /results/r.csv outside its outputs, in memory: not kept "
        "(a folder is kept when the job declares it: -o NAME:/PATH)")


class NotingClient(FakeSweepClient):
    """A completed job (and sweep index) whose stderr holds a note of Shoal's among the program's own lines."""

    def describe(self, job_id: str) -> Any:
        desc = super().describe(job_id)
        ex = desc.executions[0]
        result = ex.result.model_copy(update={"stderr": f"a warning of the program\n{LOST}\n"})
        return desc.model_copy(update={"executions": [ex.model_copy(update={"result": result})]})

    def sweep_index(self, sweep_id: str, index: int) -> IndexRecord:
        return IndexRecord(index=index, state=JobState.COMPLETED,
                           result=RunResult(stdout="kept\n", stderr=f"{LOST}\nshoaling: not ours\n"))


def use(monkeypatch: pytest.MonkeyPatch, sdk: Any) -> None:
    monkeypatch.setattr(cli.connect, "make_client", lambda api_url, *, timeout=30.0, ca_cert=None: sdk)
    monkeypatch.delenv("SHOAL_API", raising=False)
    monkeypatch.setenv("SHOAL_CONFIG", os.devnull)


def test_a_completed_run_shows_shoals_notes_from_its_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    """The job wrote /results/r.csv with no -o: exit 0, "completed", and the line saying the file was lost
    only in shoal logs --stderr."""
    use(monkeypatch, NotingClient())
    result = run("run", "noop")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "hello from the job\n"
    err = result.stderr.splitlines()
    assert LOST in err and "a warning of the program" not in result.stderr
    assert err.index(LOST) < len(err) - 1 and err[-1].startswith(f"Job {JOB_ID} completed")


def test_a_job_printing_a_flood_of_lines_like_shoals_gets_the_last_few_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    """A job controls its stderr: lines that only look like Shoal's notes are shown from its last few lines only,
    so a job cannot flood its owner's terminal on success."""
    from cli.waiting import SHOAL_NOTES

    class Flooding(NotingClient):
        def describe(self, job_id: str) -> Any:
            desc = FakeSweepClient.describe(self, job_id)
            ex = desc.executions[0]
            flood = "".join(f"shoal: fake note {i}\n" for i in range(10_000))
            result = ex.result.model_copy(update={"stderr": flood})
            return desc.model_copy(update={"executions": [ex.model_copy(update={"result": result})]})

    use(monkeypatch, Flooding())
    result = run("run", "noop")
    assert result.exit_code == 0, result.stderr
    shown = [line for line in result.stderr.splitlines() if line.startswith("shoal: fake note")]
    assert shown == [f"shoal: fake note {i}" for i in range(10_000 - SHOAL_NOTES, 10_000)]


def test_a_sweep_that_succeeded_shows_its_winners_notes(monkeypatch: pytest.MonkeyPatch) -> None:
    sdk = NotingClient()
    use(monkeypatch, sdk)
    sdk.sweep_spec = SweepSpec(job=NOOP, grid={"x": ["1", "2", "3"]}, success="any")
    sweep = sweep_of(sdk.sweep_spec, JobState.COMPLETED, {JobState.COMPLETED: 1, JobState.CANCELLED: 2}, winner=1)
    sdk.final = description(sweep, [JobState.CANCELLED, JobState.COMPLETED, JobState.CANCELLED])
    result = run("run", "noop", "--param", "x=1,2,3", "--success", "any")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "stdout of index 1\n"
    assert LOST in result.stderr.splitlines() and "shoaling" not in result.stderr


class LongSweepClient(FakeSweepClient):
    """A sweep of 2,500 indexes, served in pages of at most 1,000 as a node does."""

    def __init__(self) -> None:
        super().__init__()
        self.sweep_spec = SweepSpec(job=NOOP, items=[{"x": str(i)} for i in range(2500)])

    def sweep_indexes(self, sweep_id: str, *, state: Any = None, first: int = 0, limit: int = 1000) -> IndexList:
        self.index_calls.append(("indexes", {"state": state, "first": first, "limit": limit}))
        records = [IndexRecord(index=i, state=JobState.COMPLETED) for i in range(first, min(2500, first + limit))]
        return IndexList(indexes=records[:1000], total=2500)


def test_sweep_indexes_json_is_the_whole_sweep_and_a_limit_says_what_it_left_out(
        monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """--json gave 100 of 3,000 records, with no word: "one table for pandas" was a thirtieth of it."""
    sdk = LongSweepClient()
    use(monkeypatch, sdk)
    result = run("sweep", "indexes", SWEEP_ID, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [r["index"] for r in data["indexes"]] == list(range(2500)) and data["total"] == 2500
    assert result.stderr == ""
    assert all(call[1]["limit"] <= 10_000 for call in sdk.index_calls)
    result = run("sweep", "indexes", SWEEP_ID, "--output", "yaml", "--first", "2400")
    assert result.exit_code == 0 and result.stdout.count("- index:") == 100
    result = run("sweep", "indexes", SWEEP_ID, "--json", "--limit", "300")
    assert len(json.loads(result.stdout)["indexes"]) == 300
    assert result.stderr == "Showing 300 of 2500 indexes; more with --first 300.\n"
    result = run("sweep", "indexes", SWEEP_ID)  # a table: the first 100, as before
    assert "Showing 100 of 2500 indexes; more with --first 100." in result.stderr


def test_shoal_get_says_the_saved_stdout_holds_its_last_mib(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """shoal get wrote the last MiB of a longer stdout, cut mid-line, and said nothing."""
    node = FakeNode()
    job_id = "j-" + "ab" * 16
    cut_job(node, job_id, long_stdout(200_000))
    use(monkeypatch, shoal.Client(API, key=ClientKey.generate(), transport=node.sync_transport()))
    result = run("get", job_id, "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.stderr
    assert result.stdout == f"{tmp_path / 'out'}\n"
    assert result.stderr == (f"stdout was longer than 1 MiB: {tmp_path / 'out' / 'stdout'} holds its last 1 MiB; "
                             "write large output to a file under -o\n")


def test_shoal_run_says_what_shoal_get_keeps_of_a_cut_stdout(monkeypatch: pytest.MonkeyPatch) -> None:
    """It said "shoal get … keeps more of it", and shoal get kept a MiB."""

    class Cut(FakeClient):
        def describe(self, job_id: str) -> Any:
            desc = describe_of(self.spec, JobState.COMPLETED, stdout="tail\n", cid="bafyresults")
            ex = desc.executions[0]
            result = ex.result.model_copy(update={"stdout_truncated": True})
            return desc.model_copy(update={"executions": [ex.model_copy(update={"result": result})]})

    use(monkeypatch, Cut())
    result = run("run", "noop")
    assert result.exit_code == 0, result.stderr
    assert (f"Note: the stdout shown is its last part only (the job wrote more); shoal get {JOB_ID} keeps up to its "
            "last 1 MiB") in result.stderr.splitlines()


VERIFIED, OUTVOTED = "QmXTZPT11r5ahVZQ9Kg9yZ5SU2MTzDqUq7D1wTWoUvQ4qj", "Qmf8Cz5bYGYBT9VKy9gzpdgCLEMxTzRj5cjZDCzjB7PMvt"


class OutvotedClient(FakeSweepClient):
    """A verified job: two nodes' results agreed, a third node's differed and was rejected."""

    def describe(self, job_id: str) -> Any:
        from jobs import ExecutionState

        desc = super().describe(job_id)
        honest = desc.executions[0].model_copy(update={"result": RunResult(cid=VERIFIED)})
        liar = honest.model_copy(update={"id": "e-liar", "node_id": "liar", "state": ExecutionState.REJECTED,
                                         "result": RunResult(stdout="forged\n", cid=OUTVOTED)})
        job = desc.job.model_copy(update={"result": honest.result})
        return desc.model_copy(update={"job": job, "executions": [liar, honest]})


def test_a_verified_run_names_its_result_alone_never_an_outvoted_nodes(monkeypatch: pytest.MonkeyPatch) -> None:
    """"results at ipfs://<the liar's>, ipfs://<the verified>": the rejected result's CID was listed too."""
    use(monkeypatch, OutvotedClient())
    result = run("run", "noop")
    assert result.exit_code == 0, result.stderr
    assert f"results at ipfs://{VERIFIED}; " in result.stderr and OUTVOTED not in result.stderr

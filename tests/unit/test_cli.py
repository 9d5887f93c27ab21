"""The ``shoal`` CLI, driven through typer's CliRunner against a fake SDK client (no node)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from typer.testing import CliRunner

import cli.arguments
import cli.connect
from cli.main import app
from cli.specs import split_input
from cli.terminal import write_output
from jobs import Event, EventKind, Execution, ExecutionState, Job, JobSpec, JobState, Resources, RunResult
from jobs.messages import NodeInfo
from jobs.views import Capacity, JobDescription, JobList, NodeList, NodeStatus, PeerList, Phases, Reputation, SweepList
from shoal import ConnectionFailed, InvalidRequest, NotFound, WaitTimeout

JOB_ID = "j-7f3a9c21d4e5b6a7"
NODE_ID = "12D3KooWQmNodeAlphaXXXXXXXXXX"
NOW = time.time()


def describe_of(spec: JobSpec, state: JobState = JobState.PENDING, reason: str = "", **result: Any) -> JobDescription:
    job = Job(id=JOB_ID, owner="client-1", spec=spec, state=state, reason=reason, created_at=NOW - 5, updated_at=NOW)
    executions = []
    if state.is_terminal:
        executions.append(
            Execution(
                id="e-1", job_id=JOB_ID, node_id=NODE_ID, requester="req", created_at=NOW - 4, updated_at=NOW,
                state=ExecutionState.COMPLETED if state == JobState.COMPLETED else ExecutionState.FAILED,
                result=RunResult(exit_code=result.get("exit_code", 0), stdout=result.get("stdout", ""),
                                 cid=result.get("cid"), started_at=NOW - 3, finished_at=NOW - 1),
            )
        )  # fmt: skip
    phases = Phases(submitted=NOW - 5, announced=NOW - 4.99, first_bid=NOW - 4.9, finished=NOW - 1)
    return JobDescription(job=job, executions=executions, phases=phases)


class FakeClient:
    """Stands in for ``shoal.Client``: records calls, answers from canned state."""

    def __init__(self, api_url: str | None = None, *, timeout: float = 30.0) -> None:
        self.api_url = api_url
        self.submitted: list[tuple[JobSpec, str | None]] = []
        self.contexts: list[bytes] = []
        self.final_state = JobState.COMPLETED
        self.final_reason = ""
        self.stdout = "hello from the job\n"
        self.wait_error: BaseException | None = None
        self.error: BaseException | None = None  # raised by every call when set
        self.spec = JobSpec(engine={"name": "noop"})

    def _check(self) -> None:
        if self.error is not None:
            raise self.error

    def submit(self, spec: JobSpec, *, idempotency_key: str | None = None, cache: bool = True) -> JobDescription:
        self._check()
        self.submitted.append((spec, idempotency_key))
        self.cache = cache
        self.spec = spec
        return describe_of(spec)

    def upload_context(self, archive: bytes) -> str:
        self.contexts.append(archive)
        return "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"

    def describe(self, job_id: str) -> JobDescription:
        self._check()
        if job_id != JOB_ID:
            raise NotFound(f"no job {job_id}", 404, "not_found")
        return describe_of(self.spec, self.final_state, self.final_reason, stdout=self.stdout, cid="bafyresults")

    def wait(self, job_id: str, *, timeout: float | None = None, poll: float = 25.0) -> JobDescription:
        self._check()
        if self.wait_error is not None:
            raise self.wait_error
        return self.describe(job_id)

    def list(self, *, state: str | None = None, limit: int = 50, offset: int = 0,
             selector: str | None = None) -> JobList:
        self._check()
        self.list_args = {"state": state, "limit": limit, "selector": selector}
        job = describe_of(self.spec, self.final_state, self.final_reason).job
        return JobList(jobs=[job], total=1)

    def list_sweeps(self, *, limit: int = 50, offset: int = 0) -> SweepList:
        self._check()
        return SweepList(sweeps=[], total=0)

    def cancel(self, job_id: str) -> JobDescription:
        self._check()
        return describe_of(self.spec, JobState.CANCELLED, "cancelled by the user")

    def events(self, job_id: str, *, last_event_id: str | None = None) -> Iterator[Event]:
        self._check()
        for i, kind in enumerate((EventKind.CREATED, EventKind.BID, EventKind.COMPLETED)):
            message = self.final_reason if kind is EventKind.COMPLETED and self.final_reason else f"m{i}"
            yield Event(seq=i + 1, job_id=job_id, at=NOW + i * 0.01, kind=kind, node_id=NODE_ID, message=message)

    def logs(self, job_id: str, stream: str = "stdout") -> str:
        self._check()
        return self.stdout if stream == "stdout" else "some warnings\n"

    def follow_logs(self, job_id: str, stream: str = "stdout") -> Iterator[str]:
        yield from ("part1 ", "part2\n")

    def download(self, job_id: str, dest: Path, *, max_bytes: int | None = None) -> Path:
        self._check()
        self.downloaded_to = Path(dest)
        self.max_bytes = max_bytes
        return Path(dest)

    def node(self) -> NodeStatus:
        self._check()
        r = Resources(cpu=8, memory="16GiB", disk="100GiB")
        return NodeStatus(peer_id=NODE_ID, addrs=["/ip4/127.0.0.1/tcp/4001"], roles=["requester", "compute"],
                          engines=["noop", "docker"], capacity=Capacity(total=r, free=r, max_per_job=r),
                          running=0, backlog=0, version="0.1.0")  # fmt: skip

    def peers(self) -> PeerList:
        self._check()
        return PeerList(peers=["12D3KooWPeerOne", "12D3KooWPeerTwo"])

    def nodes(self) -> NodeList:
        self._check()
        total = Resources(cpu=8, memory="16GiB", disk="100GiB")
        free = Resources(cpu=6, memory="12GiB", disk="100GiB")
        info = NodeInfo(peer_id=NODE_ID, engines=["noop", "wasm"], max_per_job=total, total=total, free=free)
        return NodeList(nodes=[info])

    def version(self) -> str:
        self._check()
        return "0.1.0-node"


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClient:
    client = FakeClient()
    made: list[str | None] = []

    def make_client(api_url: str | None, *, timeout: float = 30.0, ca_cert: Path | None = None) -> FakeClient:
        made.append(api_url)
        client.api_url = api_url
        return client

    monkeypatch.setattr(cli.connect, "make_client", make_client)
    monkeypatch.delenv("SHOAL_API", raising=False)
    monkeypatch.setenv("SHOAL_CONFIG", os.devnull)  # no config file of the machine's leaks in
    client.made = made  # type: ignore[attr-defined]
    return client


def run(*args: str, env: dict[str, str] | None = None) -> Any:
    return CliRunner().invoke(app, list(args), env=env)


def submitted(fake: FakeClient) -> JobSpec:
    assert len(fake.submitted) == 1
    return fake.submitted[0][0]


# -- spec building ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ipfs://bafyabc:/data", ("ipfs://bafyabc", "/data")),
        ("bafyabc:/inputs", ("bafyabc", "/inputs")),
        ("https://x/y:/data", ("https://x/y", "/data")),
        ("https://host:8080/file.csv:/in/file.csv", ("https://host:8080/file.csv", "/in/file.csv")),
        ("https://x/y:/data:v2", ("https://x/y", "/data:v2")),
    ],
)
def test_split_input(value: str, expected: tuple[str, str]) -> None:
    assert split_input(value) == expected


def test_input_without_path_is_a_usage_error(fake: FakeClient) -> None:
    result = run("run", "noop", "-i", "https://x/y")
    assert result.exit_code == 2
    assert "--input" in result.stderr and "SRC:PATH" in result.stderr
    assert fake.submitted == []


def test_docker_run_builds_the_spec_from_flags(fake: FakeClient, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FROM_HERE", "passed-through")
    result = run(
        "docker", "run", "ubuntu:24.04",
        "-i", "ipfs://bafyin:/inputs", "-i", "https://x/y:/data",
        "-o", "results:/outputs", "-e", "A=1", "-e", "B=x=y", "-e", "FROM_HERE",
        "--cpu", "500m", "--memory", "512MiB", "--disk", "1GB", "--timeout", "30",
        "--concurrency", "3", "--confidence", "2", "--min-bids", "3", "--idempotency-key", "k-1",
        "--no-wait", "--", "sh", "-c", "echo hi",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    spec = submitted(fake)
    assert spec.engine.name == "docker"
    assert spec.engine.image == "ubuntu:24.04"
    assert spec.engine.entrypoint == ["sh"] and spec.engine.args == ["-c", "echo hi"]
    assert [(i.source, i.path) for i in spec.inputs] == [("ipfs://bafyin", "/inputs"), ("https://x/y", "/data")]
    assert [(o.name, o.path) for o in spec.outputs] == [("results", "/outputs")]
    assert spec.env == {"A": "1", "B": "x=y", "FROM_HERE": "passed-through"}
    assert spec.resources == Resources(cpu=0.5, memory=512 * 1024**2, disk=10**9)
    assert spec.timeout == 30
    assert (spec.deal.concurrency, spec.deal.confidence, spec.deal.min_bids) == (3, 2, 3)
    assert fake.submitted[0][1] == "k-1"
    assert result.stdout == f"{JOB_ID}\n"


def test_times_take_units(fake: FakeClient) -> None:
    assert run("run", "noop", "--timeout", "1h30m", "--queue-timeout", "1d", "--no-wait").exit_code == 0
    spec = submitted(fake)
    assert (spec.timeout, spec.deadlines.bid) == (5400, 86400)
    result = run("run", "noop", "--timeout", "10 minutes", "--no-wait")
    assert result.exit_code == 2 and "cannot read duration '10 minutes'" in result.stderr
    assert "Traceback" not in result.stderr and len(fake.submitted) == 1


def test_unset_flags_keep_spec_defaults(fake: FakeClient) -> None:
    assert run("run", "noop", "--no-wait").exit_code == 0
    assert submitted(fake) == JobSpec(engine={"name": "noop"})
    assert fake.cache is True


def test_no_cache_reaches_the_client(fake: FakeClient) -> None:
    assert run("run", "noop", "--no-wait", "--no-cache").exit_code == 0
    assert fake.cache is False


def test_wasm_run(fake: FakeClient) -> None:
    result = run("wasm", "run", "ipfs://bafymod", "--entrypoint", "main", "--no-wait", "--", "a", "-b")
    assert result.exit_code == 0, result.stderr
    engine = submitted(fake).engine
    assert (engine.name, engine.module, engine.entrypoint) == ("wasm", "ipfs://bafymod", "main")
    assert engine.args == ["a", "-b"]


def test_run_python_script_and_code(fake: FakeClient, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "main.py").write_text("print(1)\n")
    assert run("run", "python", "--no-wait", "main.py", "--", "--n", "3").exit_code == 0
    spec = fake.submitted[-1][0]
    assert (spec.engine.main, spec.engine.code, spec.engine.args) == ("main.py", None, ["--n", "3"])
    # the working directory travels with the job as its context
    assert [(i.source, i.path) for i in spec.inputs] == [("ipfs://QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o",
                                                          "/context")]
    assert len(fake.contexts) == 1
    assert run("run", "python", "-c", "print(42)", "--no-wait").exit_code == 0
    spec = fake.submitted[-1][0]
    assert (spec.engine.main, spec.engine.code, spec.inputs) == (None, "print(42)", [])  # inline code: no context


def test_run_python_missing_script_fails_before_submitting(fake: FakeClient, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = run("run", "python", "nope.py")
    assert result.exit_code == 2 and "no such file: nope.py" in result.stderr
    assert fake.submitted == [] and fake.contexts == []


def test_run_python_needs_a_program(fake: FakeClient) -> None:
    result = run("run", "python", "--no-wait")
    assert result.exit_code == 2
    assert result.stderr.startswith("Error: ") and fake.submitted == []


def test_invalid_memory_names_the_field(fake: FakeClient) -> None:
    result = run("run", "noop", "--memory", "lots")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        "Error: resources.memory (--memory): cannot read size 'lots': use bytes or a unit such as 512MiB, 2GB"
    ]
    assert fake.submitted == []


def test_every_spec_problem_gets_its_own_line(fake: FakeClient) -> None:
    result = run("run", "noop", "--memory", "-5", "--concurrency", "0", "-o", "bad name:/out", "-e", "1X=2")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert all(line.startswith("Error: ") for line in lines)
    assert len(lines) == 4, lines
    for flag in ("--memory", "--concurrency", "--output", "--env"):
        assert any(flag in line for line in lines), (flag, lines)
    assert "Traceback" not in result.output


def test_confidence_above_concurrency(fake: FakeClient) -> None:
    result = run("run", "noop", "--concurrency", "1", "--confidence", "2")
    assert result.exit_code == 2
    assert "confidence cannot exceed concurrency" in result.stderr


def test_unknown_flag_is_one_line_and_exit_2(fake: FakeClient) -> None:
    result = run("run", "noop", "--cpus", "2")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("Error: No such option: --cpus")
    assert line.endswith("(see 'shoal run noop --help')")


def test_unknown_flag_after_a_script_hints_at_the_double_dash(fake: FakeClient) -> None:
    result = run("run", "python", "main.py", "--n", "3")
    assert result.exit_code == 2
    assert "the job's own arguments go after --" in result.stderr


def test_no_arguments_shows_help() -> None:
    result = run()
    assert result.exit_code == 2
    assert "Usage: shoal" in result.output


# -- waiting and exit codes -------------------------------------------------------------------


def test_completed_job_prints_its_stdout(fake: FakeClient) -> None:
    result = run("run", "noop")
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "hello from the job\n"  # exactly the job's output: pipes stay clean
    assert f"shoal get {JOB_ID}" in result.stderr
    assert "ipfs://bafyresults" in result.stderr


def test_failed_job_exits_1_with_its_reason(fake: FakeClient) -> None:
    fake.final_state, fake.final_reason = JobState.FAILED, "exit code 3 on every node"
    result = run("run", "noop")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines()[-1] == f"Error: job {JOB_ID} failed: exit code 3 on every node"
    assert result.stdout == ""


def test_cancelled_job_exits_1(fake: FakeClient) -> None:
    fake.final_state, fake.final_reason = JobState.CANCELLED, "cancelled by the user"
    assert run("run", "noop").exit_code == 1


def test_json_output_parses(fake: FakeClient) -> None:
    result = run("run", "noop", "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["job"]["id"] == JOB_ID and data["job"]["state"] == "completed"
    assert JobDescription.model_validate(data).job.spec == JobSpec(engine={"name": "noop"})


def test_json_no_wait_prints_the_submitted_description(fake: FakeClient) -> None:
    result = run("run", "noop", "--json", "--no-wait")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["job"]["state"] == "pending"


def test_json_failed_job_still_prints_json_and_exits_1(fake: FakeClient) -> None:
    fake.final_state = JobState.FAILED
    result = run("run", "noop", "--json")
    assert result.exit_code == 1
    assert json.loads(result.stdout)["job"]["state"] == "failed"


def test_id_only_prints_only_the_id(fake: FakeClient) -> None:
    result = run("run", "noop", "--id-only")
    assert result.exit_code == 0
    assert result.stdout == f"{JOB_ID}\n"
    assert result.stderr == ""
    result = run("run", "noop", "--id-only", "--no-wait")
    assert (result.exit_code, result.stdout) == (0, f"{JOB_ID}\n")


def test_id_only_exit_code_follows_the_job(fake: FakeClient) -> None:
    fake.final_state = JobState.FAILED
    result = run("run", "noop", "--id-only")
    assert (result.exit_code, result.stdout) == (1, f"{JOB_ID}\n")


def test_wait_timeout_exits_124(fake: FakeClient) -> None:
    fake.wait_error = WaitTimeout("job not finished after 1s", describe_of(fake.spec, JobState.RUNNING, "running"))
    result = run("run", "noop", "--wait-timeout", "1")
    assert result.exit_code == 124
    assert "still running" in result.stderr


def test_ctrl_c_while_waiting_exits_130_quietly(fake: FakeClient) -> None:
    fake.wait_error = KeyboardInterrupt()
    result = run("run", "noop")
    assert result.exit_code == 130
    assert "Traceback" not in result.output
    assert f"shoal cancel {JOB_ID}" in result.stderr


def test_a_node_lost_while_waiting_exits_3_saying_the_job_goes_on(fake: FakeClient) -> None:
    """A node that stopped answering while the client waited (restarting) was reported as one never reached,
    with a hint to start a devstack, and no word of the job, which its node carries on once back."""
    fake.wait_error = ConnectionFailed("cannot reach Shoal API at http://127.0.0.1:8700: connection refused",
                                       "http://127.0.0.1:8700")
    result = run("run", "noop")
    assert result.exit_code == 3 and "Traceback" not in result.output
    assert f"the job goes on there once it is back: shoal wait {JOB_ID}" in result.stderr
    assert "devstack" not in result.stderr


def test_connection_failure_exits_3(fake: FakeClient) -> None:
    fake.error = ConnectionFailed("cannot reach http://127.0.0.1:8700: connection refused", "http://127.0.0.1:8700")
    for args in (("list",), ("run", "noop"), ("describe", JOB_ID), ("nodes",)):
        result = run(*args)
        assert result.exit_code == 3, args
        assert len(result.stderr.strip().splitlines()) == 1
        assert result.stderr.startswith("Error: cannot reach")
        assert "Traceback" not in result.output


def test_a_submit_whose_answer_never_came_says_how_to_submit_it_again_without_a_second(fake: FakeClient) -> None:
    """A node frozen after it wrote the job: "no answer … (tried 4 times)", exit 3, yet the job ran; and the key
    the SDK had retried with was one the user never saw, so running the command again made a second job."""
    keys: list[str | None] = []

    def lost(spec: JobSpec, *, idempotency_key: str | None = None, cache: bool = True) -> JobDescription:
        keys.append(idempotency_key)
        raise ConnectionFailed("no answer from Shoal API at http://127.0.0.1:8700 (tried 4 times)",
                               "http://127.0.0.1:8700")

    fake.submit = lost  # type: ignore[method-assign]
    result = run("run", "noop")
    assert result.exit_code == 3 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "'shoal list' shows it" in result.stderr
    assert result.stderr.rstrip().endswith(f"add --idempotency-key {keys[0]})") and len(keys[0] or "") == 36
    run("run", "noop", "--idempotency-key", "mine")
    assert keys[-1] == "mine"
    fake.submit = FakeClient.submit.__get__(fake)  # type: ignore[method-assign]
    fake.error = ConnectionFailed("cannot reach Shoal API at http://127.0.0.1:8700: connection refused (tried 4 "
                                  "times)", "http://127.0.0.1:8700")
    refused = run("run", "noop")  # no node listens: nothing was sent, and the usual hint says what to do
    assert refused.exit_code == 3 and "start a node with" in refused.stderr and "idempotency" not in refused.stderr


def test_not_found_exits_4(fake: FakeClient) -> None:
    result = run("describe", "no-such-job")
    assert result.exit_code == 4
    assert result.stderr.strip() == "Error: no job no-such-job"


def test_invalid_request_from_the_node_exits_2(fake: FakeClient) -> None:
    fake.error = InvalidRequest("spec.resources.cpu: too many", 422, fields=["spec.resources.cpu"])
    result = run("run", "noop")
    assert result.exit_code == 2
    assert result.stderr.strip() == "Error: spec.resources.cpu: too many"


def test_id_only_and_json_conflict(fake: FakeClient) -> None:
    assert run("run", "noop", "--id-only", "--json").exit_code == 2


# -- job inspection ---------------------------------------------------------------------------


def test_list_table_contains_short_ids(fake: FakeClient) -> None:
    result = run("list", "--state", "completed", "--limit", "5")
    assert result.exit_code == 0, result.stderr
    assert JOB_ID[:12] in result.stdout
    assert "completed" in result.stdout and "noop" in result.stdout
    assert fake.list_args == {"state": "completed", "limit": 5, "selector": None}
    assert run("list", "--selector", "zone=eu").exit_code == 0
    assert fake.list_args == {"state": None, "limit": 50, "selector": "zone=eu"}


def test_list_json(fake: FakeClient) -> None:
    result = run("list", "--json")
    data = json.loads(result.stdout)
    assert data["total"] == 1 and data["jobs"][0]["id"] == JOB_ID


def test_the_configured_output_format_is_the_default_and_a_flag_wins(fake: FakeClient, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('output = "json"\n')
    result = run("list", env={"SHOAL_CONFIG": str(config)})
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["jobs"][0]["id"] == JOB_ID
    as_yaml = run("list", env={"SHOAL_CONFIG": str(config), "SHOAL_OUTPUT": "yaml"})
    assert yaml.safe_load(as_yaml.stdout)["jobs"][0]["id"] == JOB_ID
    table = run("list", "--output", "table", env={"SHOAL_CONFIG": str(config)})
    assert JOB_ID[:12] in table.stdout and not table.stdout.lstrip().startswith("{")


def test_list_rejects_unknown_state(fake: FakeClient) -> None:
    assert run("list", "--state", "sleeping").exit_code == 2


def test_state_choices_match_the_job_model() -> None:
    assert set(get_args(cli.arguments.JobStateName)) == {s.value for s in JobState}


def test_describe(fake: FakeClient) -> None:
    result = run("describe", JOB_ID)
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert JOB_ID in out and "completed" in out and NODE_ID[:16] in out
    assert "first bid" in out and "+100ms" in out  # phases as durations from submit


# what a lying compute node can put in a job's reason (its error text travels into it), an event, a table
HOSTILE = "node said: \x1b[2J\x1b]0;pwned\x07 [/x] [bold]loud[/bold] \u202eevil \x9b31m"


def assert_terminal_safe(text: str) -> None:
    """Nothing in ``text`` a terminal would act on: no escape sequence, bell, C1 control or bidi override."""
    assert not any(c in text for c in "\x1b\x07\x9b\u202e"), repr(text)


@pytest.mark.parametrize("args", [("describe", JOB_ID), ("list",), ("events", JOB_ID)])
def test_a_peers_words_reach_the_terminal_as_text_never_as_control_codes_or_markup(fake: FakeClient,
                                                                                   args: tuple[str, ...]) -> None:
    fake.final_state, fake.final_reason = JobState.FAILED, HOSTILE
    result = run(*args)
    assert result.exit_code == 0, result.stderr
    assert_terminal_safe(result.stdout)
    shown = " ".join(result.stdout.split())
    assert "\\x1b[2J\\x1b]0;pwned\\x07 [/x] [bold]loud[/bold] \\u202eevil \\x9b31m" in shown  # as written


def test_a_failed_jobs_reason_in_the_error_line_is_text_too(fake: FakeClient) -> None:
    fake.final_state, fake.final_reason = JobState.FAILED, HOSTILE
    result = run("run", "noop")
    assert result.exit_code != 0
    assert_terminal_safe(result.stderr)
    assert "[/x] [bold]loud[/bold] \\u202eevil" in result.stderr


# what a node running the job can print: a clipboard write, a title, a hyperlink, a screen clear, a C1 CSI
JOB_OUTPUT = ("\x1b]52;c;cm0gLXJmIH4K\x07\x1b]0;title\x07\x1b]8;;http://evil/\x1b\\link\x1b]8;;\x1b\\"
              "\x1b[2J\x9b31m \u202eevil\n\x1b[31mred\x1b[0m\tdone\r100%\n")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("chunks", [[JOB_OUTPUT], list(JOB_OUTPUT)], ids=["whole", "a character at a time"])
def test_a_jobs_output_keeps_its_colours_on_a_terminal_and_no_other_escape_sequence(chunks: list[str]) -> None:
    terminal = Terminal()
    write_output(chunks, terminal)
    shown = terminal.getvalue()
    assert "\x1b[31mred\x1b[0m\tdone\r100%\n" in shown  # colours, tab and carriage return work as they do locally
    assert_terminal_safe(shown.replace("\x1b[31m", "").replace("\x1b[0m", ""))
    assert "\\x1b]52;c;cm0gLXJmIH4K\\x07" in shown and "\\x9b31m \\u202eevil" in shown  # shown, as written


def test_a_jobs_last_line_is_ended_on_a_terminal_so_what_follows_starts_its_own() -> None:
    terminal = Terminal()
    write_output(["no newline"], terminal)
    assert terminal.getvalue() == "no newline\n"  # "no newlineJob j-… completed" once
    terminal = Terminal()
    write_output(["done\n", ""], terminal)
    assert terminal.getvalue() == "done\n"


def test_a_jobs_output_into_a_pipe_is_exactly_what_it_wrote(fake: FakeClient) -> None:
    fake.stdout = JOB_OUTPUT
    assert run("logs", JOB_ID).stdout == JOB_OUTPUT  # CliRunner's stdout is no terminal


def test_yaml_shows_a_peers_words_escaped_and_reads_back_the_same(fake: FakeClient) -> None:
    fake.final_state, fake.final_reason = JobState.FAILED, HOSTILE + " and h\u00e9"
    result = run("describe", JOB_ID, "--output", "yaml")
    assert result.exit_code == 0, result.stderr
    assert_terminal_safe(result.stdout)
    assert yaml.safe_load(result.stdout)["job"]["reason"] == HOSTILE + " and h\u00e9"
    fake.final_reason = "plain h\u00e9"
    assert "plain h\u00e9" in run("describe", JOB_ID, "--output", "yaml").stdout  # not escaped when nothing needs it


def test_describe_accepts_a_unique_prefix(fake: FakeClient) -> None:
    result = run("describe", JOB_ID[:8], "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["job"]["id"] == JOB_ID


def test_logs(fake: FakeClient) -> None:
    assert run("logs", JOB_ID).stdout == "hello from the job\n"
    assert run("logs", JOB_ID, "--stderr").stdout == "some warnings\n"
    assert run("logs", JOB_ID, "--follow").stdout == "part1 part2\n"


def test_get(fake: FakeClient, tmp_path: Path) -> None:
    result = run("get", JOB_ID, "--output-dir", str(tmp_path / "out"))
    assert result.exit_code == 0
    assert fake.downloaded_to == tmp_path / "out"
    assert result.stdout.strip() == str(tmp_path / "out")
    run("get", JOB_ID)
    assert fake.downloaded_to == Path(f"job-{JOB_ID[:12]}") and fake.max_bytes is None


def test_get_max_bytes(fake: FakeClient, tmp_path: Path) -> None:
    assert run("get", JOB_ID, "--max-bytes", "2GiB", "-o", str(tmp_path / "o")).exit_code == 0
    assert fake.max_bytes == 2 << 30
    fake.downloaded_to = None
    result = run("get", JOB_ID, "--max-bytes", "lots")
    assert result.exit_code == 2 and result.stderr.startswith("Error: --max-bytes: cannot read size 'lots'")
    assert fake.downloaded_to is None


def test_cancel(fake: FakeClient) -> None:
    fake.final_state = JobState.RUNNING
    result = run("cancel", JOB_ID)
    assert result.exit_code == 0
    assert result.stdout.strip() == f"Job {JOB_ID} cancelled"


def test_cancel_of_an_ended_job_says_there_was_nothing_to_cancel(fake: FakeClient) -> None:
    fake.final_state = JobState.COMPLETED
    result = run("cancel", JOB_ID)
    assert result.exit_code == 0
    assert result.stdout.strip() == f"Job {JOB_ID} already completed; nothing to cancel"


def test_events_text_and_json_lines(fake: FakeClient) -> None:
    text = run("events", JOB_ID).stdout.splitlines()
    assert len(text) == 3 and "Created" in text[0] and "Completed" in text[2]
    lines = run("events", JOB_ID, "--json").stdout.splitlines()
    assert [json.loads(line)["kind"] for line in lines] == ["Created", "Bid", "Completed"]


# -- network ----------------------------------------------------------------------------------


def test_id_peers_nodes(fake: FakeClient) -> None:
    out = run("id").stdout
    assert NODE_ID in out and "requester, compute" in out and "16 GiB" in out
    assert json.loads(run("id", "--json").stdout)["peer_id"] == NODE_ID
    assert run("peers").stdout.split() == ["12D3KooWPeerOne", "12D3KooWPeerTwo"]
    nodes = run("nodes").stdout
    assert NODE_ID[:16] in nodes and "noop, wasm" in nodes and "12 GiB / 16 GiB" in nodes
    assert json.loads(run("nodes", "--json").stdout)["nodes"][0]["peer_id"] == NODE_ID


def test_nodes_says_when_a_quarantine_lapses(fake: FakeClient) -> None:
    listed = fake.nodes()
    listed.reputation = {NODE_ID: Reputation(accepted=1, rejected=4, quarantined=True,
                                             quarantined_until=time.time() + 5 * 3600 + 60)}
    fake.nodes = lambda: listed  # type: ignore[method-assign]
    assert "1/4 QUARANTINED (probation in 5h)" in " ".join(run("nodes").stdout.split())
    listed.reputation = {NODE_ID: Reputation(accepted=1, rejected=4, probation=True)}
    assert "1/4 PROBATION (verified jobs only)" in " ".join(run("nodes").stdout.split())


def test_version_with_and_without_a_node(fake: FakeClient) -> None:
    result = run("version")
    assert result.exit_code == 0 and "0.1.0-node" in result.stdout
    fake.error = ConnectionFailed("cannot reach http://127.0.0.1:8700", "http://127.0.0.1:8700")
    result = run("version", "--json")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["node"] is None


def test_api_option_and_env_reach_the_client(fake: FakeClient) -> None:
    run("--api", "http://10.0.0.1:9000", "list")
    assert fake.made[-1] == "http://10.0.0.1:9000"  # type: ignore[attr-defined]
    run("list", env={"SHOAL_API": "http://10.0.0.2:9000"})
    assert fake.made[-1] == "http://10.0.0.2:9000"  # type: ignore[attr-defined]


@pytest.mark.parametrize("command", [["describe"], ["cancel"], ["logs"], ["events"], ["share"], ["sweep", "indexes"]])
@pytest.mark.parametrize("given", ["", ".."])
def test_an_empty_id_is_a_usage_error_not_every_job(fake: FakeClient, command: list[str], given: str) -> None:
    """An empty id is a prefix of every id; with the SDK it was "unexpected ValueError" (exit 1)."""
    key = ["RmFrZUtleUZha2VLZXlGYWtlS2V5RmFrZUtleUZha2U"] if command == ["share"] else []

    def looked_up(some_id: str) -> None:
        pytest.fail(f"looked up {some_id!r}")

    fake.cancel = fake.describe = fake.describe_sweep = looked_up  # type: ignore[attr-defined,method-assign]
    result = run(*command, given, *key)
    what = "sweep" if command[0] == "sweep" else "job"
    assert result.exit_code == 2
    assert result.stderr == f"Error: {what} id {given!r}: expected an id or a unique prefix of one\n"


def test_an_empty_id_with_the_real_sdk_is_a_usage_error(tmp_path: Path) -> None:
    result = run("--api", "http://127.0.0.1:9", "describe", "", env={"SHOAL_HOME": str(tmp_path),
                                                                     "SHOAL_CONFIG": os.devnull})
    assert (result.exit_code, result.stderr) == (2, "Error: job id '': expected an id or a unique prefix of one\n")


@pytest.mark.parametrize("url", ["HTTP://127.0.0.1:9", "[::1]:9", "https://127.0.0.1:9/"])
def test_good_api_urls_in_any_form_httpx_takes_reach_the_sdk(tmp_path: Path, url: str) -> None:
    result = run("--api", url, "list", env={"SHOAL_HOME": str(tmp_path), "SHOAL_CONFIG": os.devnull})
    assert result.exit_code == 3, result.stderr  # nothing listens there: the SDK tried it


@pytest.mark.parametrize("url", ["http://[::1", "http://host:port", "http://", "ftp://host"])
def test_a_bad_api_url_is_a_usage_error_naming_where_it_came_from(tmp_path: Path, url: str) -> None:
    """With the real SDK: "unexpected InvalidURL" (exit 1) from httpx."""
    env = {"SHOAL_HOME": str(tmp_path), "SHOAL_CONFIG": os.devnull, "SHOAL_API": ""}
    expected = f"expected an http:// or https:// URL (or HOST:PORT), got {url!r}"
    result = run("--api", url, "list", env=env)
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith("Error: Invalid value for '--api'") and expected in result.stderr
    result = run("list", env={**env, "SHOAL_API": url})
    assert result.exit_code == 2 and "SHOAL_API" in result.stderr and expected in result.stderr
    config = tmp_path / "config.toml"
    config.write_text(f"api = {json.dumps(url)}\n")
    result = run("list", env={**env, "SHOAL_CONFIG": str(config)})
    assert (result.exit_code, result.stderr) == (2, f"Error: {config}: api: {expected}\n")


_CPU = 'expected a number or a string such as "500m" (cores: more than 0, at most 1024)'
_MEMORY = 'expected a number or a string such as "512MiB" (bytes: more than 0)'


@pytest.mark.parametrize(("setting", "expected"), [
    ('cpu = "lots"', f"cpu: {_CPU}, got 'lots'"),
    ("cpu = 0", f"cpu: {_CPU}, got 0"),
    ("cpu = 2000", f"cpu: {_CPU}, got 2000"),
    ('memory = "lots"', f"memory: {_MEMORY}, got 'lots'"),
    ("memory = 0", f"memory: {_MEMORY}, got 0"),
    ("disk = -5", "disk: expected a number or a string such as \"1GiB\" (bytes), got -5"),
])  # fmt: skip
def test_a_bad_run_default_in_the_config_file_names_the_file_not_a_flag(
        fake: FakeClient, tmp_path: Path, setting: str, expected: str) -> None:  # fmt: skip
    """It was blamed on a flag never given ("resources.cpu (--cpu): ..."), the file unnamed."""
    config = tmp_path / "config.toml"
    config.write_text(f"[run]\n{setting}\n")
    result = run("run", "noop", "--no-wait", env={"SHOAL_CONFIG": str(config)})
    assert (result.exit_code, result.stderr) == (2, f"Error: {config}: [run] {expected}\n")
    assert fake.submitted == []


def test_run_defaults_in_the_config_file_that_the_flags_take_are_taken(fake: FakeClient, tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[run]\ncpu = "500m"\nmemory = "1GiB"\ndisk = 0\n')
    assert run("run", "noop", "--no-wait", env={"SHOAL_CONFIG": str(config)}).exit_code == 0
    assert submitted(fake).resources == Resources(cpu=0.5, memory="1GiB", disk=0)


# -- serve / devstack -------------------------------------------------------------------------


def test_serve_builds_a_node_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    seen: list[Any] = []
    monkeypatch.setitem(sys.modules, "node.daemon", types.SimpleNamespace(main=seen.append))
    result = run(
        "serve", "--data-dir", str(tmp_path), "--listen", "/ip4/0.0.0.0/tcp/4001", "--peer", "/ip4/1.2.3.4/tcp/1",
        "--api-port", "0", "--no-requester", "--noop", "--limit-total-cpu", "4", "--limit-job-memory", "1GiB",
        "--log-level", "debug",
    )  # fmt: skip
    assert result.exit_code == 0, result.stderr
    (config,) = seen
    assert config.data_dir == tmp_path and config.listen == ("/ip4/0.0.0.0/tcp/4001",)
    assert config.peers == ("/ip4/1.2.3.4/tcp/1",) and config.api_port == 0
    assert (config.requester, config.compute, config.noop, config.log_level) == (False, True, True, "DEBUG")
    assert config.limit_total.cpu == 4 and config.limit_total.memory > 0
    assert config.limit_job.memory == 1024**3 and config.limit_job.cpu == 4


def test_serve_takes_a_peer_rate_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[Any] = []
    monkeypatch.setitem(sys.modules, "node.daemon", types.SimpleNamespace(main=seen.append))
    assert run("serve", "--peer-rate-limit", "50").exit_code == 0
    assert (seen[-1].peer_rate_limit, seen[-1].peer_rate_burst) == (50, 100)
    assert run("serve", "--peer-rate-limit", "0").exit_code == 0 and seen[-1].peer_rate_limit == 0  # no limit
    assert run("serve", "--peer-rate-limit", "-1").exit_code == 2


def test_serve_defaults_and_bad_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    from node.config import NodeConfig

    seen: list[Any] = []
    monkeypatch.setitem(sys.modules, "node.daemon", types.SimpleNamespace(main=seen.append))
    assert run("serve").exit_code == 0
    assert seen == [NodeConfig()]
    result = run("serve", "--limit-job-memory", "huge")
    assert result.exit_code == 2 and "memory" in result.stderr


def test_devstack_passes_its_flags(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setitem(sys.modules, "devstack.stack", types.SimpleNamespace(main=lambda **kw: calls.append(kw)))
    assert run("devstack").exit_code == 0
    assert run("devstack", "--nodes", "5", "--noop", "--base-dir", str(tmp_path), "--base-port", "9000").exit_code == 0
    assert run("devstack", "--no-kubo").exit_code == 0
    assert run("devstack", "--keep").exit_code == 0
    assert calls == [{"nodes": 3, "noop": False}, {"nodes": 5, "noop": True, "base_dir": tmp_path, "base_port": 9000},
                     {"nodes": 3, "noop": False, "kubo": False}, {"nodes": 3, "noop": False, "fresh": False}]


# -- the command itself -----------------------------------------------------------------------


def test_help_lists_every_command() -> None:
    out = run("--help").stdout
    for command in ("docker", "wasm", "run", "list", "describe", "logs", "get", "cancel", "events", "id", "peers",
                    "nodes", "version", "serve", "devstack"):  # fmt: skip
        assert f"  {command} " in out, command


def test_watch_updates_the_status_line(fake: FakeClient) -> None:
    from cli.waiting import watch

    updates: list[tuple[str, str]] = []
    line = types.SimpleNamespace(update=lambda state, reason: updates.append((state, reason)))
    watch(lambda: fake, JOB_ID, line)  # type: ignore[arg-type]
    assert updates == [("completed", "")] * 3


def test_status_line_never_wraps() -> None:
    from cli.render import status_line

    line = status_line(JOB_ID, "pending", "waiting for bids: " + "x " * 100, width=60)
    assert len(line.plain) == 60 and line.plain.startswith(JOB_ID[:12] + " pending · waiting")


def test_import_is_light() -> None:
    """``shoal --help`` must start fast: importing the CLI pulls in none of the heavy modules."""
    code = "import sys, cli.main; print(sorted(m for m in ('rich', 'pydantic', 'httpx', 'jobs') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_sigterm_stops_a_foreground_node_like_ctrl_c() -> None:
    import os
    import signal

    from cli.daemon import stop_on_signals

    before = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt), stop_on_signals():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == before


def test_ctrl_c_in_serve_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(config: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setitem(sys.modules, "node.daemon", types.SimpleNamespace(main=interrupted))
    result = run("serve")
    assert result.exit_code == 130 and result.output == ""


def test_ctrl_c_out_of_a_trio_nursery_exits_130(monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(config: Any) -> None:
        raise BaseExceptionGroup("Exceptions from Trio nursery", [KeyboardInterrupt()])

    monkeypatch.setitem(sys.modules, "node.daemon", types.SimpleNamespace(main=interrupted))
    result = run("serve")
    assert result.exit_code == 130 and result.output == ""


def test_client_commands_work_without_trio(tmp_path: Path) -> None:
    """``make_client`` keeps trio out of client commands; nothing on their path may need it."""
    code = (
        "import sys, cli.main, cli.connect; cli.connect.make_client('http://127.0.0.1:9'); import httpx; "
        "print(sys.modules['trio'] is None)"
    )
    env = {"SHOAL_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "True"
    version = subprocess.run(
        [sys.executable, "-m", "cli.main", "--api", "http://127.0.0.1:9", "version"],
        capture_output=True, text=True, env=env, timeout=60,
    )  # fmt: skip
    assert version.returncode == 0, version.stderr
    assert "node  not reachable" in version.stdout


def test_wait_follows_a_job_submitted_earlier_to_its_end_as_run_does(fake: FakeClient) -> None:
    """--no-wait said "follow it with: shoal describe", which prints one snapshot: a client that closed its
    laptop had no way back to its job's outcome but polling."""
    result = run("wait", JOB_ID)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "hello from the job\n"
    assert f"Job {JOB_ID} completed" in result.stderr
    fake.final_state, fake.final_reason = JobState.FAILED, "exit code 3 on every node"
    result = run("wait", JOB_ID, "--timeout", "10m")
    assert result.exit_code == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines()[-1] == f"Error: job {JOB_ID} failed: exit code 3 on every node"
    assert json.loads(run("wait", JOB_ID, "--json").stdout)["job"]["state"] == "failed"
    fake.wait_error = WaitTimeout("not yet", describe_of(fake.spec, JobState.RUNNING, "running"))
    assert run("wait", JOB_ID, "--timeout", "1s").exit_code == 124
    assert run("wait", "j-nosuchjob").exit_code == 4


def test_the_help_lists_the_exit_codes_scripts_rely_on() -> None:
    text = " ".join(run("--help").stdout.split())
    for code, meaning in (("0", "done"), ("1", "the job (or sweep) failed"), ("3", "the node is unreachable"),
                          ("124", "the wait ran out")):
        assert f"{code} {meaning}" in text, (code, text)

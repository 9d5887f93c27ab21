"""Every ``shoal`` command, run as a subprocess against one real 3-node devstack.

The stack is started by ``shoal devstack`` itself (and found by the other commands through its
state file), stopped with SIGINT at the end of the module, and must stop cleanly. Its nodes run
the default executor registry, whose only engine so far is noop, so docker/wasm/python jobs
meet a network where no node offers their engine. (``--noop`` would not do here: it runs every
engine as noop.)

Every invocation is checked for the one thing no user may ever see: a Python traceback.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import re
import select
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.rogue import free_base_port

pytestmark = pytest.mark.slow

SHOAL = str(Path(sys.executable).with_name("shoal"))
REPO = Path(__file__).resolve().parents[2]
BASE_PORT = free_base_port(3)  # free APIs and libp2p ports: others may run devstacks at the same time
DEAD_API = "http://127.0.0.1:19099"  # nothing listens here
JOB_ID = re.compile(r"^j-[0-9a-f]{32}$")


@dataclass
class Stack:
    home: Path
    env: dict[str, str]
    nodes: list[dict]  # from the state file: api, peer_id, addrs, ...
    process: subprocess.Popen


def _clean_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SHOAL_API", "SHOAL_DEBUG")}
    # The working tree, whatever the editable install's snapshot of top-level packages says.
    path = [str(REPO), *filter(None, env.get("PYTHONPATH", "").split(os.pathsep))]
    env.update(SHOAL_HOME=str(home), NO_COLOR="1", COLUMNS="200", PYTHONPATH=os.pathsep.join(path))
    return env


def _read_until(process: subprocess.Popen, marker: str, timeout: float, stream: str = "stdout") -> str:
    """What ``process`` wrote to ``stream`` until ``marker`` appeared (or fail), read from the raw fd.

    Raw reads, not ``readline``: the pipe's text wrapper would buffer past the marker, where
    ``select`` cannot see it.
    """
    fd = getattr(process, stream).fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while marker.encode() not in seen:
            left = deadline - time.monotonic()
            if left <= 0 or not selector.select(left):
                raise AssertionError(f"no {marker!r} after {timeout} s; got:\n{seen.decode()}")
            chunk = os.read(fd, 65536)
            if not chunk:
                other = process.stderr if stream == "stdout" else process.stdout
                raise AssertionError(f"exited with {process.wait()} before {marker!r}; got:\n{seen.decode()}"
                                     f"\n{other.read() if other else ''}")
            seen += chunk
    return seen.decode()


def _assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text
        assert "Exception Group" not in text, text


def wait_until_every_node_knows_all(stack: Stack, apis: int | None = None, timeout: float = 60) -> None:
    """Until node info gossip has reached the first ``apis`` nodes (all by default): each lists every node."""
    from shoal import Client, ClientKey

    key = ClientKey.load(stack.home / "client.key")
    deadline = time.monotonic() + timeout
    for node in stack.nodes[:apis]:
        with Client(node["api"], key=key) as client:
            while len(client.nodes().nodes) < len(stack.nodes) and time.monotonic() < deadline:
                time.sleep(0.5)


@contextmanager
def cli_devstack(home: Path, *, nodes: int, base_port: int, args: tuple[str, ...] = ()) -> Iterator[Stack]:
    """``shoal devstack`` (no Kubo; ``args`` added) as a subprocess; on leaving, SIGINT, and it must stop cleanly."""
    env = _clean_env(home)
    process = subprocess.Popen(
        [SHOAL, "devstack", "--nodes", str(nodes), "--base-port", str(base_port), "--base-dir", str(home / "stack"),
         "--no-kubo", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True,
    )  # fmt: skip
    try:
        banner = _read_until(process, "Ctrl-C stops every node", timeout=90)
        assert f"{nodes} node(s)" in banner
        state = json.loads((home / "devstack.json").read_text())
        yield Stack(home, env, state["nodes"], process)
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            _, err = process.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            _, err = process.communicate()
            raise
    # Stopping is part of the contract: clean exit, state file gone, no node crashed on SIGINT.
    assert process.returncode == 0, err
    _assert_no_traceback(err)
    assert not (home / "devstack.json").exists()
    for log in sorted((home / "stack").glob("node-*/node.log")):
        text = log.read_text()
        _assert_no_traceback(text)
        assert "stopped by an error" not in text and "ERROR" not in text, text[-2000:]
        assert "stopping on SIGINT" in text and "node stopped" in text


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with cli_devstack(tmp_path_factory.mktemp("cli-home"), nodes=3, base_port=BASE_PORT) as devstack:
        yield devstack


def shoal(stack: Stack, *args: str, env: dict[str, str] | None = None, timeout: float = 60,
          cwd: Path | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    result = subprocess.run([SHOAL, *args], capture_output=True, text=True, env=env or stack.env,
                            timeout=timeout, cwd=cwd or stack.home)  # fmt: skip
    _assert_no_traceback(result.stdout, result.stderr)
    return result


def shoal_all(stack: Stack, *calls: tuple[str, ...] | tuple[tuple[str, ...], dict[str, str]]
              ) -> list[subprocess.CompletedProcess[str]]:  # fmt: skip
    """Several independent invocations at once (most of each is start-up and waiting on a node).

    A call is the argument tuple, or (arguments, env).
    """
    def one(call: tuple) -> subprocess.CompletedProcess[str]:
        if len(call) == 2 and isinstance(call[1], dict):
            return shoal(stack, *call[0], env=call[1])
        return shoal(stack, *call)

    with ThreadPoolExecutor(max_workers=4) as pool:
        return list(pool.map(one, calls))


def errors(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("Error:")]


def describe(stack: Stack, job_id: str) -> dict:
    result = shoal(stack, "describe", "--json", job_id)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def pending_job(stack: Stack) -> str:
    """A job that cannot finish: it wants 5 nodes and the stack has 3. Submitted with --no-wait."""
    result = shoal(stack, "run", "noop", "--concurrency", "5", "--no-wait")
    assert result.returncode == 0, result.stderr
    job_id = result.stdout.strip()  # only the id on stdout, at once
    assert JOB_ID.match(job_id)
    assert f"follow it with: shoal wait {job_id}" in result.stderr
    return job_id


# -- run -----------------------------------------------------------------------------------------


def test_run_waits_and_says_where_the_results_are(stack: Stack) -> None:
    result = shoal(stack, "run", "noop")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""  # a noop job prints nothing, and the CLI adds nothing to stdout
    job_id = re.search(r"Job (j-[0-9a-f]{32}) submitted", result.stderr).group(1)
    assert f"Job {job_id} completed" in result.stderr and f"shoal get {job_id}" in result.stderr
    assert describe(stack, job_id)["job"]["state"] == "completed"


def test_run_id_only_prints_only_the_id(stack: Stack) -> None:
    result = shoal(stack, "run", "noop", "--id-only")
    assert result.returncode == 0, result.stderr
    assert JOB_ID.match(result.stdout.strip()) and result.stdout.count("\n") == 1
    assert result.stderr == ""  # quiet: no status lines either
    assert describe(stack, result.stdout.strip())["job"]["state"] == "completed"


def test_run_json_with_concurrency_3_runs_on_three_nodes(stack: Stack) -> None:
    result = shoal(stack, "run", "noop", "--concurrency", "3", "--json", "--no-cache")
    assert result.returncode == 0, result.stderr
    desc = json.loads(result.stdout)  # stdout is exactly one JSON document
    assert desc["job"]["state"] == "completed" and desc["job"]["spec"]["deal"]["concurrency"] == 3
    done = [x for x in desc["executions"] if x["state"] == "completed"]
    assert len(done) == 3 and {x["node_id"] for x in done} == {n["peer_id"] for n in stack.nodes}
    assert all(x["result"]["exit_code"] == 0 for x in done)


def test_run_wait_timeout_exits_124_and_the_job_goes_on(stack: Stack) -> None:
    result = shoal(stack, "run", "noop", "--concurrency", "5", "--wait-timeout", "1")
    assert result.returncode == 124, result.stderr
    [line] = errors(result)
    assert "still" in line and "waiting for more nodes: it needs 5" in line  # 3 nodes: another must join
    job_id = re.search(r"(j-[0-9a-f]{32})", line).group(1)
    assert describe(stack, job_id)["job"]["state"] in ("pending", "running")
    shoal(stack, "cancel", job_id)


def test_a_cancelled_job_exits_1_with_one_line(stack: Stack) -> None:
    waiting = subprocess.Popen([SHOAL, "run", "noop", "--concurrency", "5"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=stack.env)  # fmt: skip
    try:
        line = _read_until(waiting, " submitted", timeout=30, stream="stderr")
        submitted = re.search(r"Job (j-[0-9a-f]{32}) submitted", line).group(1)
        assert shoal(stack, "cancel", submitted).returncode == 0
        out, err = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    _assert_no_traceback(out, err)
    assert waiting.returncode == 1
    assert [line for line in err.splitlines() if line.startswith("Error:")] == [
        f"Error: job {submitted} cancelled: cancelled by its owner"
    ]


def test_a_job_no_node_can_take_fails_with_exit_1(stack: Stack) -> None:
    result = shoal(stack, "run", "noop", "--cpu", "1000")
    assert result.returncode == 1
    [line] = errors(result)
    assert re.fullmatch(r"Error: job j-[0-9a-f]{32} failed: 0 of 3 nodes can offer 1000 CPU per job "
                        r"\(the most one offers: [0-9.]+ CPU\)", line), line


def test_a_deterministic_job_reuses_a_verified_result(stack: Stack, tmp_path: Path) -> None:
    unique = ("-e", f"RUN={time.time_ns()}")  # a spec no earlier test ran
    first = json.loads(shoal(stack, "run", "noop", *unique, "--json").stdout)
    assert first["job"]["state"] == "completed" and first["executions"]
    again = json.loads(shoal(stack, "run", "noop", *unique, "--json").stdout)
    assert again["job"]["state"] == "completed" and again["job"]["cached_from"] == first["job"]["id"]
    assert again["job"]["reason"] == f"cached: the verified result of job {first['job']['id']}"
    assert again["executions"] == []  # nothing ran
    got = shoal(stack, "get", again["job"]["id"], "-o", str(tmp_path / "cached"))  # the result is there all the same
    assert got.returncode == 0 and (tmp_path / "cached" / "exitCode").read_text() == "0"
    fresh = json.loads(shoal(stack, "run", "noop", *unique, "--json", "--no-cache").stdout)
    assert fresh["job"]["cached_from"] is None and fresh["executions"]


def needs_docker(stack: Stack) -> None:
    offered = {e for n in json.loads(shoal(stack, "nodes", "--json").stdout)["nodes"] for e in n["engines"]}
    images = subprocess.run(["docker", "image", "inspect", "busybox"], capture_output=True, check=False)
    if "docker" not in offered or images.returncode != 0:
        pytest.skip("no node offers docker here, or busybox is not pulled (docker's own tests cover it)")


def on_a_terminal(stack: Stack, *args: str, timeout: float = 60) -> tuple[int, str]:
    """``shoal ARGS`` with its stdout on a pseudo-terminal (so it knows it writes to one): its exit
    code and what the terminal received (the terminal turns each newline into CR LF)."""
    main, side = pty.openpty()
    process = subprocess.Popen([SHOAL, *args], stdin=subprocess.DEVNULL, stdout=side, stderr=subprocess.DEVNULL,
                               env=stack.env, cwd=stack.home)  # fmt: skip
    os.close(side)
    received, deadline = b"", time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            if select.select([main], [], [], 1)[0]:
                try:
                    data = os.read(main, 65536)
                except OSError:  # EIO: every writer has closed it
                    break
                if not data:
                    break
                received += data
            elif process.poll() is not None:
                break
        return process.wait(timeout=10), received.decode()
    finally:
        process.kill()
        os.close(main)


def test_docker_run_passes_the_command_and_prints_its_output(stack: Stack, tmp_path: Path) -> None:
    """Where a node offers docker (this machine's daemon, with busybox at hand): a real run."""
    needs_docker(stack)
    result = shoal(stack, "docker", "run", "busybox", "--", "sh", "-c", "echo out; echo err >&2; exit 0")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "out\n"  # the job's stdout, nothing else
    job_id = re.search(r"Job (j-[0-9a-f]{32}) completed", result.stderr).group(1)
    stdout, stderr, got = shoal_all(stack, ("logs", job_id), ("logs", "--stderr", job_id),
                                    ("get", job_id, "-o", str(tmp_path / "r")))  # fmt: skip
    assert (stdout.stdout, stderr.stdout, got.returncode) == ("out\n", "err\n", 0), got.stderr
    files = [(tmp_path / "r" / name).read_text() for name in ("stdout", "stderr", "exitCode")]
    assert files == ["out\n", "err\n", "0"]
    failing = shoal(stack, "docker", "run", "busybox", "--", "sh", "-c", "exit 3")
    assert failing.returncode == 1
    [line] = errors(failing)
    assert re.fullmatch(r"Error: job j-[0-9a-f]{32} failed: exit code 3 on node \S+", line), line


def test_a_jobs_escape_sequences_reach_a_terminal_as_text_and_a_pipe_as_the_job_wrote_them(stack: Stack) -> None:
    """A job's output is written by whichever node ran it. On the user's terminal its colours work,
    but a clipboard write (OSC 52: the node would choose what the user pastes next) arrives as text."""
    needs_docker(stack)
    written = "\x1b]52;c;cm0gLXJmIH4K\x07\x1b[31mred\x1b[0m\n"
    shown = "\\x1b]52;c;cm0gLXJmIH4K\\x07\x1b[31mred\x1b[0m\r\n"
    command = ("docker", "run", "busybox", "--", "printf", r"\033]52;c;cm0gLXJmIH4K\007\033[31mred\033[0m\n")
    piped = shoal(stack, *command)
    assert piped.returncode == 0 and piped.stdout == written, piped.stderr
    job_id = re.search(r"Job (j-[0-9a-f]{32}) completed", piped.stderr).group(1)
    assert on_a_terminal(stack, *command) == (0, shown)
    for logs in (("logs", job_id), ("logs", "--follow", job_id)):
        assert shoal(stack, *logs).stdout == written
        assert on_a_terminal(stack, *logs) == (0, shown)


def test_output_cut_short_is_said_to_be_and_where_more_of_it_is(stack: Stack) -> None:
    """A job that printed 200 KB showed its last 64 KiB in shoal run and shoal logs, and nothing said so."""
    needs_docker(stack)
    ran = shoal(stack, "docker", "run", "busybox", "--", "sh", "-c", "yes 0123456789 | head -c 200000")
    assert ran.returncode == 0 and 0 < len(ran.stdout) < 200_000, ran.stderr
    job_id = re.search(r"Job (j-[0-9a-f]{32}) completed", ran.stderr).group(1)
    note = (f"Note: the stdout shown is its last part only (the job wrote more); shoal get {job_id} keeps up to its "
            "last 1 MiB")
    logs = shoal(stack, "logs", job_id)
    assert note in ran.stderr.splitlines() and logs.stderr.splitlines() == [note]
    assert logs.stdout == ran.stdout and len(logs.stdout) == 64 * 1024  # the tail the job record carries
    whole = shoal(stack, "docker", "run", "busybox", "--", "echo", "short")
    assert whole.stdout == "short\n" and "Note:" not in whole.stderr


# -- jobs ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def done_job(stack: Stack) -> str:
    """A noop job that really ran (not a cached result): it has executions and phases."""
    result = shoal(stack, "run", "noop", "--id-only", "--no-cache")
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_list_shows_my_jobs_and_filters_by_state(stack: Stack, done_job: str, pending_job: str) -> None:
    pending = pending_job
    table, completed, running, waiting, limited = shoal_all(
        stack, ("list",), ("list", "--state", "completed", "--json"), ("list", "--state", "running", "--json"),
        ("list", "--state", "pending", "--json"), ("list", "--limit", "1", "--json"),
    )
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split() == ["ID", "ENGINE", "STATE", "REASON", "AGE"]
    assert done_job[:12] in table.stdout and pending[:12] in table.stdout

    completed = json.loads(completed.stdout)["jobs"]
    assert done_job in [j["id"] for j in completed] and {j["state"] for j in completed} == {"completed"}
    live = json.loads(running.stdout)["jobs"] + json.loads(waiting.stdout)["jobs"]
    assert pending in [j["id"] for j in live] and done_job not in [j["id"] for j in live]
    limited = json.loads(limited.stdout)
    assert len(limited["jobs"]) == 1 and limited["total"] >= 2


def test_list_pages_past_the_newest_with_offset(stack: Stack, done_job: str, pending_job: str) -> None:
    """Jobs older than the newest 1,000 were out of the CLI's reach, and the footer's --limit 5000 failed."""
    first, second, past, too_many = shoal_all(
        stack, ("list", "--limit", "1"), ("list", "--limit", "1", "--offset", "1", "--json"),
        ("list", "--offset", "1000000"), ("list", "--limit", "5000"))
    total = json.loads(second.stdout)["total"]
    assert first.returncode == 0 and f"Showing 1-1 of {total} jobs" in first.stderr, first.stderr
    assert "--offset 1 for the next jobs" in first.stderr
    shown = next(line.split()[0] for line in first.stdout.splitlines()[1:])
    (next_one,) = json.loads(second.stdout)["jobs"]
    assert not next_one["id"].startswith(shown)  # the second page starts where the first ended
    assert past.returncode == 0 and f"No jobs past the first {total}" in past.stderr
    assert too_many.returncode == 2 and "1000" in errors(too_many)[0]


def test_list_all_is_not_offered(stack: Stack) -> None:
    result = shoal(stack, "list", "--all")
    assert result.returncode == 2
    assert errors(result) == ["Error: No such option: --all (see 'shoal list --help')"]


def test_describe_shows_state_executions_and_phases(stack: Stack, done_job: str) -> None:
    result = shoal(stack, "describe", done_job[:12])  # the short id `shoal list` shows
    assert result.returncode == 0, result.stderr
    assert done_job in result.stdout
    for heading in ("State", "completed", "Executions", "Phases", "finished"):
        assert heading in result.stdout


def test_describe_explains_why_a_job_waits(stack: Stack, pending_job: str) -> None:
    job_id = pending_job
    deadline = time.monotonic() + 15
    while "3 of 5" not in (reason := describe(stack, job_id)["job"]["reason"]) and time.monotonic() < deadline:
        time.sleep(0.2)
    # every node that can run it does: it said "3 have room now" while those 3 ran it
    assert reason == ("waiting for more nodes: it needs 5 and 3 of 3 known nodes can run it; 3 of 5 accepted "
                      "(another node must join)"), reason
    assert reason in shoal(stack, "describe", job_id).stdout


def test_logs(stack: Stack, done_job: str) -> None:
    for result in shoal_all(stack, ("logs", done_job), ("logs", "--stderr", done_job), ("logs", "-f", done_job)):
        assert result.returncode == 0 and result.stdout == "", result.stderr  # a noop run prints nothing


def test_logs_follow_lasts_until_the_job_ends_and_cancel_ends_it(stack: Stack, pending_job: str) -> None:
    job_id = pending_job
    follower = subprocess.Popen([SHOAL, "logs", "--follow", job_id], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=stack.env)  # fmt: skip
    try:
        time.sleep(2)
        assert follower.poll() is None, follower.communicate()  # still following: the job goes on
        result = shoal(stack, "cancel", job_id)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == f"Job {job_id} cancelled"
        out, err = follower.communicate(timeout=15)  # ends with the job
    finally:
        follower.kill()
    _assert_no_traceback(out, err)
    assert follower.returncode == 0, err
    desc = describe(stack, job_id)
    assert desc["job"]["state"] == "cancelled" and desc["job"]["reason"] == "cancelled by its owner"
    again, as_json = shoal_all(stack, ("cancel", job_id), ("cancel", "--json", job_id))
    assert again.returncode == 0 and again.stdout.strip() == f"Job {job_id} already cancelled; nothing to cancel"
    assert json.loads(as_json.stdout)["job"]["state"] == "cancelled"


def test_get_extracts_the_results(stack: Stack, done_job: str, tmp_path: Path) -> None:
    result = shoal(stack, "get", done_job, "--output-dir", str(tmp_path / "out"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "out")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["exitCode", "stderr", "stdout"]
    assert (tmp_path / "out" / "exitCode").read_text() == "0"
    assert (tmp_path / "out" / "stdout").read_text() == ""

    default = shoal(stack, "get", done_job[:12], cwd=tmp_path)  # default: ./job-<short id>
    assert default.returncode == 0, default.stderr
    assert (tmp_path / f"job-{done_job[:12]}" / "exitCode").read_text() == "0"


def test_get_into_a_users_folder_replaces_and_deletes_nothing_of_theirs(stack: Stack, done_job: str,
                                                                       tmp_path: Path) -> None:
    """``shoal get -o .`` in a project folder: its own ``outputs/`` and ``stdout`` stay, and so does a hidden
    folder named like a download's leftover; the results land beside them when no name clashes."""
    work = tmp_path / "project"
    (work / "outputs").mkdir(parents=True)
    (work / "outputs" / "data.csv").write_text("precious")
    (work / "stdout").write_text("mine")
    (work / ".thesis.partial-2024").mkdir()
    (work / ".thesis.partial-2024" / "ch1.tex").write_text("chapter 1")
    clash = shoal(stack, "get", done_job, "-o", ".", cwd=work)
    assert clash.returncode == 2
    assert errors(clash) == ["Error: stdout exists and differs from the results; nothing was written (choose "
                             "another destination, or move it away)"]
    assert (work / "stdout").read_text() == "mine" and (work / "outputs" / "data.csv").read_text() == "precious"
    assert (work / ".thesis.partial-2024" / "ch1.tex").read_text() == "chapter 1"
    assert sorted(p.name for p in (work / ".thesis.partial-2024").iterdir()) == ["ch1.tex"]  # no lock put in it
    assert sorted(p.name for p in work.iterdir()) == [".thesis.partial-2024", "outputs", "stdout"]

    (work / "stdout").unlink()
    fits = shoal(stack, "get", done_job, "-o", str(work))
    assert fits.returncode == 0, fits.stderr
    assert (work / "exitCode").read_text() == "0" and (work / "stdout").read_text() == ""
    assert (work / "outputs" / "data.csv").read_text() == "precious"
    again = shoal(stack, "get", done_job, "-o", str(work))  # the same results again: nothing differs
    assert again.returncode == 0, again.stderr

    unwritable = shoal(stack, "get", done_job, "-o", str(work / "stdout" / "x"))  # below a file
    assert unwritable.returncode == 2
    assert errors(unwritable) == [f"Error: cannot write the results to {work / 'stdout' / 'x'}: {work / 'stdout'} "
                                  "is not a folder; nothing was written"]


def test_get_of_a_job_without_results_exits_1(stack: Stack, tmp_path: Path) -> None:
    result = shoal(stack, "run", "noop", "--cpu", "1000", "--no-wait")  # fails at once: never ran
    job_id = result.stdout.strip()
    result = shoal(stack, "get", job_id, "-o", str(tmp_path / "none"))
    assert result.returncode == 1 and errors(result) == [f"Error: job {job_id} has no results (state failed)"]
    assert not (tmp_path / "none").exists()


def test_events_text_and_json(stack: Stack, done_job: str) -> None:
    text, as_json = shoal_all(stack, ("events", done_job), ("events", "--json", done_job))
    assert text.returncode == 0, text.stderr
    lines = text.stdout.splitlines()
    assert "Created" in lines[0] and any("Completed" in line for line in lines)
    assert all(line.startswith("+") for line in lines)

    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert [e["seq"] for e in events] == sorted({e["seq"] for e in events})  # in order, none twice
    assert events[0]["kind"] == "Created" and "Completed" in [e["kind"] for e in events]
    assert {e["job_id"] for e in events} == {done_job}


# -- network ---------------------------------------------------------------------------------------


def test_id(stack: Stack) -> None:
    text, as_json = shoal_all(stack, ("id",), ("id", "--json"))
    assert text.returncode == 0, text.stderr
    assert stack.nodes[0]["peer_id"] in text.stdout and "requester, compute" in text.stdout
    status = json.loads(as_json.stdout)
    assert status["peer_id"] == stack.nodes[0]["peer_id"] and status["roles"] == ["requester", "compute"]
    assert "noop" in status["engines"] and status["capacity"]["total"]["cpu"] > 0


def test_peers(stack: Stack) -> None:
    text, as_json = shoal_all(stack, ("peers",), ("peers", "--json"))
    assert text.returncode == 0, text.stderr
    assert sorted(text.stdout.split()) == sorted(n["peer_id"] for n in stack.nodes[1:])
    assert sorted(json.loads(as_json.stdout)["peers"]) == sorted(text.stdout.split())


def test_nodes(stack: Stack) -> None:
    text, as_json = shoal_all(stack, ("nodes",), ("nodes", "--json"))
    assert text.returncode == 0, text.stderr
    rows = text.stdout.splitlines()[2:]  # header, rule
    assert len(rows) == 3 and all("noop" in row for row in rows)
    nodes = json.loads(as_json.stdout)["nodes"]
    assert sorted(n["peer_id"] for n in nodes) == sorted(n["peer_id"] for n in stack.nodes)


def test_version(stack: Stack) -> None:
    text, as_json = shoal_all(stack, ("version",), ("version", "--json"))
    assert text.returncode == 0, text.stderr
    assert text.stdout.splitlines() == ["shoal 0.1.0", "node  0.1.0"]
    assert json.loads(as_json.stdout) == {"cli": "0.1.0", "node": "0.1.0"}


def test_help(stack: Stack) -> None:
    result = shoal(stack, "--help")
    assert result.returncode == 0
    for command in ("docker", "wasm", "run", "list", "describe", "logs", "get", "cancel", "events", "id",
                    "peers", "nodes", "version", "serve", "devstack"):
        assert re.search(rf"^\s+{command}\b", result.stdout, re.M), command


# -- finding the API -------------------------------------------------------------------------------


def test_api_comes_from_flag_then_env_then_the_devstack_file(stack: Stack) -> None:
    apis = [n["api"] for n in stack.nodes]
    results = shoal_all(
        stack,
        ("id", "--json"),  # neither given: the devstack's state file
        (("id", "--json"), {**stack.env, "SHOAL_API": apis[1]}),
        (("id", "--json"), {**stack.env, "SHOAL_API": apis[1].removeprefix("http://")}),  # host:port is enough
        (("--api", apis[2], "id", "--json"), {**stack.env, "SHOAL_API": apis[1]}),  # the flag wins
    )
    for result in results:
        assert result.returncode == 0, result.stderr
    peers = [n["peer_id"] for n in stack.nodes]
    assert [json.loads(r.stdout)["peer_id"] for r in results] == [peers[0], peers[1], peers[1], peers[2]]


def test_unreachable_api_exits_3_with_one_line(stack: Stack, tmp_path: Path) -> None:
    unreachable = (f"Error: cannot reach Shoal API at {DEAD_API}: connection refused"
                   " (start a node with 'shoal devstack' or 'shoal serve', or pass --api URL)")
    stale = tmp_path / "stale-home"  # a devstack file left behind by a stack that is gone
    stale.mkdir()
    (stale / "devstack.json").write_text(json.dumps({"nodes": [{"api": DEAD_API}]}))
    flag, env, stale_file, submit = shoal_all(
        stack,
        ("--api", DEAD_API, "list"),
        (("list",), {**stack.env, "SHOAL_API": DEAD_API}),
        (("describe", "j-0"), _clean_env(stale)),
        ("--api", DEAD_API, "run", "noop"),  # a submit retries (same Idempotency-Key) first
    )
    for result in (flag, env, stale_file):
        assert result.returncode == 3 and result.stderr.splitlines() == [unreachable], result.stderr
    assert submit.returncode == 3
    assert submit.stderr.splitlines() == [unreachable.replace("refused (", "refused (tried 4 times) (")]


def test_a_job_too_slow_for_its_timeout_runs_out_the_clock_once(stack: Stack) -> None:
    """A timed-out run was one node's word, confirmed by a second node running the job out to its timeout
    again: a one-hour job too slow for its timeout took two hours to fail."""
    result = shoal(stack, "run", "python", "--timeout", "2s", "--no-cache", "--json", "-c", "while True: pass")
    job = json.loads(result.stdout)["job"]
    assert result.returncode == 1 and job["state"] == "failed" and job["reason"].endswith("timed out after 2 s")
    executions = describe(stack, job["id"])["executions"]
    assert len(executions) == 1, [(x["node_id"][-8:], x["reason"]) for x in executions]


def test_unknown_job_exits_4(stack: Stack, tmp_path: Path) -> None:
    unknown = "j-" + "0" * 32
    commands = (("describe",), ("logs",), ("get", "-o", str(tmp_path / "x")), ("cancel",), ("events",))
    for command, result in zip(commands, shoal_all(stack, *((*c, unknown) for c in commands)), strict=True):
        assert result.returncode == 4, (command, result.stderr)
        assert errors(result) == [f"Error: no job '{unknown}' (or it is not yours)"], result.stderr
    unknown_sweep = "s-" + "0" * 32
    result = shoal(stack, "sweep", "indexes", unknown_sweep)
    assert result.returncode == 4 and errors(result) == [f"Error: no sweep '{unknown_sweep}' (or it is not yours)"]


def test_a_stranger_is_not_authorized_on_the_devstack(stack: Stack, done_job: str, tmp_path: Path) -> None:
    """``shoal devstack`` lets in the local client key only: another key gets 403 on every node, and
    the CLI says so in one line (exit 3), whatever the command."""
    stranger = {**_clean_env(tmp_path / "stranger-home"), "SHOAL_API": stack.nodes[0]["api"]}  # another key
    key = shoal(stack, "key", "show", env=stranger).stdout.strip()
    assert key and "\n" not in key
    calls = [(("--api", n["api"], "list"), stranger) for n in stack.nodes]
    calls += [((*c, done_job), stranger) for c in (("describe",), ("logs",), ("cancel",), ("get", "-o", "x"))]
    calls += [(("run", "noop"), stranger), (("nodes",), stranger)]
    for result in shoal_all(stack, *calls):
        assert result.returncode == 3, result.stderr
        assert result.stderr == f"Error: client {key} is not authorized on this node\n", result.stderr
    assert describe(stack, done_job)["job"]["state"] == "completed"  # their cancel did nothing


def test_another_client_sees_none_of_my_jobs(stack: Stack, done_job: str, tmp_path: Path) -> None:
    other = {**_clean_env(tmp_path / "other-home"), "SHOAL_API": stack.nodes[0]["api"]}  # another key
    keys_file = stack.home / "stack" / "authorized_keys"  # what `shoal devstack` wrote; the nodes re-read it
    key = shoal(stack, "key", "show", env=other).stdout.strip()
    keys_file.write_text(keys_file.read_text() + f"{key}\n")  # authorized, yet still only for its own jobs
    commands = ("describe", "logs", "events", "cancel")
    listing, *results = shoal_all(stack, (("list", "--json"), other), *(((c, done_job), other) for c in commands))
    assert listing.returncode == 0 and json.loads(listing.stdout) == {"jobs": [], "total": 0}
    for command, result in zip(commands, results, strict=True):
        assert result.returncode == 4, (command, result.stderr)
    assert describe(stack, done_job)["job"]["state"] == "completed"  # their cancel did nothing


def test_usage_errors_exit_2_without_contacting_a_node(stack: Stack) -> None:
    calls = (("run", "noop", "--memory", "-1GiB"), ("run", "noop", "--input", "nopath"),
             ("run", "noop", "--confidence", "3"), ("frobnicate",),
             ("run", "noop", "-i", "./trades.csv:/data/trades.csv"),  # a local path: no node could fetch it
             ("run", "noop", "--param", "x=1,2", "-i", "s3://bucket/x:/data/x"))  # fmt: skip
    for args, result in zip(calls, shoal_all(stack, *(("--api", DEAD_API, *c) for c in calls)), strict=True):
        assert result.returncode == 2, (args, result.stderr)
        assert errors(result) and "cannot reach" not in result.stderr


# -- serve -------------------------------------------------------------------------------------------


def test_serve_alone_fails_jobs_for_engines_it_lacks_and_stops_quietly_on_sigterm(
        stack: Stack, tmp_path: Path) -> None:  # fmt: skip
    """One ``shoal serve`` node on its own network, with no Docker daemon and no Node.js (so no
    Pyodide): docker and python jobs fail at once, naming the engine. (wasm comes with the
    wasmtime package, so it cannot be taken away here; SIGINT, which the devstack sends its
    nodes, is checked when the stack stops.)"""
    empty = tmp_path / "empty-path"
    empty.mkdir()
    env = {**stack.env, "PATH": str(empty), "DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"}
    port = free_base_port(1)
    node = subprocess.Popen(
        [SHOAL, "serve", "--data-dir", str(tmp_path / "node"), "--api-port", str(port), "--ipfs-api", "none"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    api = f"http://127.0.0.1:{port}"
    runs = {
        "docker": ("docker", "run", "busybox", "--", "echo", "hi"),
        "python": ("run", "python", "-c", "print(42)"),
        "wasm": ("wasm", "run", "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi", "--", "x"),
    }
    try:
        ready = json.loads(_read_until(node, "}\n", timeout=60).split("READY ", 1)[1])
        assert ready["api"] == api
        status = json.loads(shoal(stack, "--api", api, "id", "--json").stdout)
        assert status["roles"] == ["requester", "compute"] and status["peer_id"] == ready["peer_id"]
        assert "noop" in status["engines"] and not {"docker", "python"} & set(status["engines"])
        missing = [e for e in runs if e not in status["engines"]]
        started = time.monotonic()
        results = shoal_all(stack, *((("--api", api, *runs[e]), stack.env) for e in missing),
                            ("--api", api, "run", "noop", "--no-cache"))  # fmt: skip
        for engine, result in zip(missing, results, strict=False):
            assert result.returncode == 1, (engine, result.stderr)
            [line] = errors(result)
            assert re.fullmatch(rf"Error: job j-[0-9a-f]{{32}} failed: no compute node offers engine '{engine}'"
                                r" \(0 of 1 nodes\)", line), line
        assert time.monotonic() - started < 30  # failed at submit, not after the 10-minute bid deadline
        assert results[-1].returncode == 0, results[-1].stderr  # the node itself works
        if "wasm" in status["engines"]:  # offered, yet this module cannot be had: as clear a failure
            result = shoal(stack, "--api", api, *runs["wasm"])
            assert result.returncode == 1, result.stderr
            [line] = errors(result)
            assert runs["wasm"][2] in line, line
        node.send_signal(signal.SIGTERM)
        out, err = node.communicate(timeout=30)
    finally:
        node.kill()
    assert node.returncode == 0, err
    _assert_no_traceback(out, err)
    assert "stopping on SIGTERM" in err and "node stopped" in err
    assert "ERROR" not in err, err


def test_a_second_devstack_leaves_the_running_one_to_the_cli_and_a_taken_port_is_named(
        stack: Stack, tmp_path: Path) -> None:  # fmt: skip
    """A second ``shoal devstack`` in the same SHOAL_HOME took the CLI over (its state file), and stopping it
    removed the first one's: the CLI lost the stack that still ran. It is refused now, before it starts."""
    state = (stack.home / "devstack.json").read_text()
    second = subprocess.run([SHOAL, "devstack", "--nodes", "1", "--no-kubo", "--base-port", str(free_base_port(1)),
                             "--base-dir", str(tmp_path / "second")], capture_output=True, text=True,
                            env=stack.env, timeout=60)  # fmt: skip
    assert second.returncode == 1 and errors(second) == [errors(second)[0]], second.stderr
    assert "a devstack already runs here (node 0 at " in second.stderr and "another SHOAL_HOME" in second.stderr
    assert (stack.home / "devstack.json").read_text() == state
    assert shoal(stack, "list").returncode == 0
    clash = subprocess.run([SHOAL, "devstack", "--nodes", "1", "--no-kubo", "--base-port", str(BASE_PORT),
                            "--base-dir", str(tmp_path / "third")], capture_output=True, text=True,
                           env=_clean_env(tmp_path / "other-home"), timeout=60)  # fmt: skip
    assert clash.returncode == 1
    assert errors(clash) == [f"Error: port {BASE_PORT} on 127.0.0.1 is taken (the stack uses {BASE_PORT}-"
                             f"{BASE_PORT + 100}); choose others with --base-port"], clash.stderr


def test_a_killed_devstack_says_how_to_stop_the_nodes_it_left_running(tmp_path: Path) -> None:
    """``kill -9`` of ``shoal devstack`` leaves its nodes running; the next devstack said to stop the stack
    "with Ctrl-C where it runs", which nothing could do any more. It names what to kill now."""
    home = tmp_path / "home"
    port = free_base_port(1)
    process = subprocess.Popen([SHOAL, "devstack", "--nodes", "1", "--no-kubo", "--base-port", str(port),
                                "--base-dir", str(home / "stack")], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, env=_clean_env(home), start_new_session=True)  # fmt: skip
    try:
        _read_until(process, "Ctrl-C stops every node", timeout=90)
        [node] = json.loads((home / "devstack.json").read_text())["nodes"]
        process.kill()
        process.communicate(timeout=30)
        again = subprocess.run([SHOAL, "devstack", "--nodes", "1", "--no-kubo", "--base-port", str(port),
                                "--base-dir", str(home / "stack")], capture_output=True, text=True,
                               env=_clean_env(home), timeout=60)  # fmt: skip
        assert again.returncode == 1
        assert errors(again) == ["Error: the devstack that ran here was killed and left its nodes running (node 0 "
                                 f"at {node['api']}): stop them with: kill {node['pid']}"], again.stderr
    finally:
        process.kill()
        with contextlib.suppress(OSError, ValueError, KeyError):  # the node it left: stopped as we were told
            os.kill(json.loads((home / "devstack.json").read_text())["nodes"][0]["pid"], signal.SIGTERM)


def test_a_devstack_deletes_only_its_own_files_and_carries_on_from_them_with_keep(tmp_path: Path) -> None:
    """``shoal devstack --base-dir ~/project`` deleted the project: a devstack starts afresh by emptying its
    folder. It refuses a folder holding anything it did not write, and ``--keep`` carries on from the last
    run (its jobs and results survive a restart)."""
    home = tmp_path / "home"
    (home / "stack").mkdir(parents=True)
    (home / "stack" / "notes.txt").write_text("a week of work\n")
    refused = subprocess.run([SHOAL, "devstack", "--nodes", "1", "--no-kubo", "--base-port", str(free_base_port(1)),
                              "--base-dir", str(home / "stack")], capture_output=True, text=True,
                             env=_clean_env(home), timeout=60)  # fmt: skip
    assert refused.returncode == 1 and "holds 'notes.txt', which is not a devstack's" in refused.stderr
    assert (home / "stack" / "notes.txt").read_text() == "a week of work\n"
    (home / "stack" / "notes.txt").unlink()

    port = free_base_port(1)
    with cli_devstack(home, nodes=1, base_port=port) as first:
        job_id = shoal(first, "run", "python", "-c", "print(6 * 7)", "--id-only").stdout.strip()
        assert shoal(first, "describe", job_id).returncode == 0
    with cli_devstack(home, nodes=1, base_port=port, args=("--keep",)) as again:
        assert job_id[:12] in shoal(again, "list").stdout  # the table shows ids short
        got = shoal(again, "get", job_id, "--output-dir", str(tmp_path / "got"))
        assert got.returncode == 0, got.stderr
        assert (tmp_path / "got" / "stdout").read_text() == "42\n"
    with cli_devstack(home, nodes=1, base_port=port) as afresh:
        assert job_id[:12] not in shoal(afresh, "list").stdout


# -- private network ---------------------------------------------------------------------------------


def test_the_devstack_is_a_private_network_that_a_node_without_its_key_cannot_join(
        stack: Stack, tmp_path: Path) -> None:  # fmt: skip
    """`shoal devstack` gives its nodes one key (the jobs above ran on them); a `shoal serve` that
    peers with node 0 joins with that key and is refused without it, which node 0 counts."""
    import stat
    import urllib.request

    from node.net.admission import load_network_key

    key = stack.home / "stack" / "network.key"
    assert len(load_network_key(key)) == 32 and stat.S_IMODE(key.stat().st_mode) == 0o600
    node0 = stack.nodes[0]

    def metric(name: str) -> float:
        with urllib.request.urlopen(f"{node0['api']}/metrics", timeout=10) as response:
            text = response.read().decode()
        return float(re.search(rf'^shoal_network_total{{event="{name}"}} (\S+)$', text, re.M).group(1))

    refused_before = metric("peers_refused_key")
    outsiders = {}
    base = free_base_port(2)  # two API ports
    for name, port, extra in (("keyless", base, []), ("keyed", base + 1, ["--network-key", str(key)])):
        outsiders[name] = subprocess.Popen(
            [SHOAL, "serve", "--noop", "--data-dir", str(tmp_path / name), "--api-port", str(port), "--ipfs-api",
             "none", "--peer", node0["addrs"][0], *extra],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=stack.env,
        )  # fmt: skip
    try:
        ready = {name: json.loads(_read_until(p, "}\n", timeout=60).split("READY ", 1)[1])
                 for name, p in outsiders.items()}  # fmt: skip
        deadline = time.monotonic() + 30
        while node0["peer_id"] not in shoal(stack, "--api", ready["keyed"]["api"], "peers").stdout.split():
            assert time.monotonic() < deadline, "the node with the key never joined"
            time.sleep(0.5)
        while metric("peers_refused_key") <= refused_before:
            assert time.monotonic() < deadline, "node 0 never counted the keyless node's attempts"
            time.sleep(0.5)
        assert shoal(stack, "--api", ready["keyless"]["api"], "peers").stdout.split() == []
        peers_of_node0 = shoal(stack, "peers").stdout.split()
        assert ready["keyed"]["peer_id"] in peers_of_node0 and ready["keyless"]["peer_id"] not in peers_of_node0
    finally:
        for p in outsiders.values():
            p.send_signal(signal.SIGINT)
        for p in outsiders.values():
            try:
                p.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()


def test_the_devstack_says_at_once_when_a_node_dies_and_runs_on(tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    process = subprocess.Popen(
        [SHOAL, "devstack", "--nodes", "2", "--base-port", str(free_base_port(2)),
         "--base-dir", str(tmp_path / "stack"), "--no-kubo"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        _read_until(process, "Ctrl-C stops every node", timeout=90)
        nodes = json.loads((tmp_path / "devstack.json").read_text())["nodes"]
        os.kill(nodes[1]["pid"], signal.SIGKILL)
        said = _read_until(process, "the others run on", timeout=30, stream="stderr")
        assert f"devstack: node 1 killed by SIGKILL; the others run on. Its log: {tmp_path / 'stack'}" in said
        assert shoal(Stack(tmp_path, env, nodes, process), "run", "noop").returncode == 0  # node 0 serves on
    finally:
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err
    _assert_no_traceback(err)

"""Live logs on a real devstack: a job's output reaches `shoal logs -f` while the job still runs, for
docker, python (Pyodide) and wasm, and what a follower gets in the end is the job's verified record.

Node 0 only orchestrates (--no-compute) and node 1 runs the jobs, so the output crosses two nodes (each
with its Kubo, through which the python and wasm programs travel).
A rogue peer that sends output for a job it does not run is not shown.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import trio

from devstack import Devstack
from devstack.kubo import ipfs_binary
from jobs.messages import Output
from shoal import Client
from tests.integration.rogue import RoguePeer, free_base_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(ipfs_binary() is None, reason="Kubo is not installed "
                                                   "(scripts/install-kubo)")]

PAUSE = 6  # seconds a job keeps running after its first line


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("live-logs")
    os.environ["SHOAL_HOME"] = str(home / "home")
    devstack = Devstack(2, base_dir=home / "stack", base_port=free_base_port(2), kubo=True, write_state=False,
                        node_args={0: ["--no-compute"]})
    trio.run(devstack.start)
    try:
        yield devstack
    finally:
        trio.run(devstack.stop)


def submit(stack: Devstack, *args: str, cwd: Path | None = None) -> str:
    env = {**os.environ, "SHOAL_API": stack.nodes[0].api, "NO_COLOR": "1"}
    out = subprocess.run([sys.executable, "-m", "cli.main", *args[:2], "--no-wait", "--id-only", "--no-cache",
                          *args[2:]], capture_output=True, text=True, timeout=60, env=env, cwd=cwd)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def follow(stack: Devstack, job_id: str) -> str:
    """Follow the job's stdout with the SDK; assert its first line came while the job was running."""
    with Client(stack.nodes[0].api) as client:
        chunks, state_at_first = [], None
        for chunk in client.follow_logs(job_id):
            if not chunks:
                state_at_first = client.describe(job_id).job.state.value
            chunks.append(chunk)
        assert state_at_first == "running", (state_at_first, chunks)
        d = client.describe(job_id)
        assert d.job.state.value == "completed", d.job.reason
        assert "".join(chunks) == d.job.result.stdout  # what was followed is the record, whole
        return "".join(chunks)


def test_docker_output_is_followed_while_the_job_runs(stack):
    job_id = submit(stack, "docker", "run", "busybox", "--", "sh", "-c", f"echo first; sleep {PAUSE}; echo second")
    assert follow(stack, job_id) == "first\nsecond\n"


def test_python_output_is_followed_while_the_job_runs(stack, tmp_path):
    (tmp_path / "main.py").write_text(  # Pyodide's clock is virtual: spin instead of sleeping
        "print('first', flush=True)\n"
        "x = 0\n"
        "for i in range(12_000_000):\n"
        "    x += i\n"
        "print('second', x)\n")
    job_id = submit(stack, "run", "python", "main.py", cwd=tmp_path)
    assert follow(stack, job_id) == f"first\nsecond {sum(range(12_000_000))}\n"


SPIN_WAT = """(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1)
  (data (i32.const 16) "first\\n")
  (data (i32.const 32) "second\\n")
  (func $print (param $at i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $at))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8))))
  (func (export "_start") (local $i i64)
    (call $print (i32.const 16) (i32.const 6))
    (loop $spin
      (local.set $i (i64.add (local.get $i) (i64.const 1)))
      (br_if $spin (i64.lt_u (local.get $i) (i64.const 6000000000))))
    (call $print (i32.const 32) (i32.const 7))))
"""


def test_wasm_output_is_followed_while_the_job_runs(stack, tmp_path):
    (tmp_path / "spin.wat").write_text(SPIN_WAT)
    job_id = submit(stack, "wasm", "run", "spin.wat", cwd=tmp_path)
    assert follow(stack, job_id) == "first\nsecond\n"


def test_shoal_logs_f_prints_lines_as_they_come_and_resumes_from_an_offset(stack):
    job_id = submit(stack, "docker", "run", "busybox", "--", "sh", "-c", f"echo first; sleep {PAUSE}; echo second")
    env = {**os.environ, "SHOAL_API": stack.nodes[0].api, "NO_COLOR": "1"}
    cli = subprocess.Popen([sys.executable, "-m", "cli.main", "logs", "-f", job_id], stdout=subprocess.PIPE,
                           text=True, env=env)
    try:
        assert cli.stdout.readline() == "first\n"
        with Client(stack.nodes[0].api) as client:
            assert client.describe(job_id).job.state.value == "running"
            # a follower that already has 2 bytes resumes after them
            resumed = client._send(client._logs_request(job_id, "stdout", follow=True, offset=2)).text
        assert cli.stdout.readline() == "second\n"
        assert cli.wait(timeout=30) == 0
        assert resumed == "rst\nsecond\n"
    finally:
        cli.kill()


async def test_output_from_a_peer_that_does_not_run_the_job_is_not_shown(stack):
    api = stack.nodes[0].api
    with Client(api) as client:
        job_id = client.submit({"engine": {"name": "docker", "image": "busybox",
                                           "entrypoint": ["sh", "-c", f"echo honest; sleep {PAUSE}"]},
                                "cache": False}).job.id
        deadline = time.monotonic() + 60
        while not (executions := client.describe(job_id).executions) or executions[0].state.value != "accepted":
            assert time.monotonic() < deadline, "the job never started"
            await trio.sleep(0.2)
        execution_id = executions[0].id
    async with RoguePeer([stack.nodes[0].addrs[0]]) as rogue:
        await rogue.wait_connected([stack.nodes[0].peer_id])
        for execution in (execution_id, "made-up"):  # even knowing the real execution id
            reply = await rogue.request(stack.nodes[0].peer_id, Output(
                job_id=job_id, execution_id=execution, stream="stdout", offset=0, data=b"forged\n"))
            assert reply.verdict == "rejected", reply
    with Client(api) as client:
        followed = "".join(client.follow_logs(job_id))
        assert followed == "honest\n" == client.describe(job_id).job.result.stdout

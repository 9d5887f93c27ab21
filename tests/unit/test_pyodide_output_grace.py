"""A python runner that reports its job's exit with output counts it never sends: the job ends as reported
within OUTPUT_GRACE, instead of waiting out its timeout (10 minutes by default) with the runner wedged."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import trio

from executors import pyodide
from executors.base import RunRequest
from executors.pyodide import PyodideExecutor, _Runner
from jobs import JobSpec

# stands for a runner: reports an exit that counts 100 bytes of stdout, writes 10, then hangs
FAKE_RUNNER = """
import json, os, sys, time
control = int(sys.argv[1])
sys.stdout.write("0123456789"); sys.stdout.flush()
os.write(control, (json.dumps({"event": "exit", "code": 0, "stdout": 100, "stderr": 0}) + "\\n").encode())
time.sleep(3600)
"""


async def test_a_runner_that_never_sends_the_output_it_counted_is_stopped_and_its_job_ends(tmp_path, monkeypatch):
    monkeypatch.setattr(pyodide, "OUTPUT_GRACE", 0.5)
    read_fd, write_fd = os.pipe()
    process = await trio.lowlevel.open_process([sys.executable, "-c", FAKE_RUNNER, str(write_fd)], pass_fds=[write_fd],
                                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.close(write_fd)
    runner = _Runner(process, trio.lowlevel.FdStream(read_fd))
    spec = JobSpec(engine={"name": "python", "code": "print(1)"})
    request = RunRequest("j", "e", spec, tmp_path / "work", tmp_path / "work" / "outputs")
    started = time.monotonic()
    with trio.fail_after(30):
        result, finished = await PyodideExecutor(tmp_path, unsandboxed=True)._collect(runner, time.time(), request, [])
    assert time.monotonic() - started < 10
    assert not finished and not runner.alive  # stopped: it serves no other job
    assert result.exit_code == 0 and result.stdout == "0123456789"  # as it reported, with what it sent

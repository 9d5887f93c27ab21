"""``shoal bench --targets`` for real: a quick throughput run on a fresh devstack, judged in the table
(the full table takes the better part of an hour; see README "Benchmarks")."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def test_a_quick_target_run_prints_its_measured_figure_beside_the_goal(tmp_path):
    env = {**os.environ, "SHOAL_HOME": str(tmp_path / "home")}
    run = subprocess.run([sys.executable, "-m", "cli.main", "bench", "--targets", "--quick", "--only", "4"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = run.stdout.splitlines()
    assert lines[0].split() == ["target", "goal", "measured", "met?"]
    row = next(line for line in lines if line.startswith("4. Throughput"))
    measured = re.search(r"≥ 250 jobs/s\s+([\d,.]+) jobs/s.*completed 100\.0%\s+(yes|NO)$", row)
    assert measured, row
    assert float(measured[1].replace(",", "")) > 0
    assert "QUICK: 600 jobs, 100 submitters," in run.stdout
    assert "not the targets' figures" in lines[-1]
    assert not any(line.startswith(("1.", "2.", "3.", "5.", "6.", "7.")) for line in lines)
    assert "[1/1] throughput: done in" in run.stderr

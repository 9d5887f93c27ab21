"""`shoal bench` as an operator runs it: a fresh devstack, a report a machine can read."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.rogue import free_base_port

pytestmark = pytest.mark.slow


def test_bench_reports_latency_phases_and_each_nodes_memory_and_cpu(tmp_path):
    env = {**os.environ, "SHOAL_HOME": str(tmp_path / "home")}
    run = subprocess.run([sys.executable, "-m", "cli.main", "bench", "--jobs", "40", "--submitters", "4",
                          "--base-port", str(free_base_port(3)), "--json"],
                         env=env, capture_output=True, text=True, timeout=180)
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads(run.stdout)
    assert report["completed"] == 40 and report["failed"] == 0 and report["errors"] == 0
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    phases = report["phases_ms"]
    assert 0 <= phases["announced"] <= phases["accepted"] <= phases["finished"] <= lat["max"]
    assert set(report["rss_mb"]) == set(report["peak_rss_mb"]) == set(report["cpu_seconds"]) == \
        {"node-0", "node-1", "node-2"}
    for name, (start, _, end) in report["rss_mb"].items():
        assert 30 < start <= report["peak_rss_mb"][name] and end <= report["peak_rss_mb"][name]
        assert report["cpu_seconds"][name] > 0  # every node bid on and ran every job (concurrency 3)

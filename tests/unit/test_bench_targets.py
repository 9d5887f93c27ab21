"""``shoal bench --targets``: issue #20's targets judged on figures, the table, and which benchmarks run
(fake benchmarks here; ``tests/integration/test_bench_targets.py`` runs a real one)."""

from __future__ import annotations

import json
import math
from dataclasses import asdict

import pytest
from typer.testing import CliRunner

from cli.main import app
from devstack import bench_targets
from devstack.bench import BenchReport
from devstack.bench_targets import run_targets
from devstack.targets import (
    BY_NUMBER,
    FULL,
    QUICK,
    TARGETS,
    judge,
    noop_bench_figures,
    parse_only,
    python_figures,
    render_table,
    scale_figures,
    sim_figures,
    sweep_figures,
)

# figures that meet every target (the limits are #20's)
GOOD = {
    "python": {"indexes_per_s": 31.0, "cpu_ms_per_index": 60.0, "single_p50_ms": 60.0, "single_p90_ms": 80.0},
    "bacalhau": {"mean_ms": 58.0, "p50_ms": 50.0, "p99_ms": 250.0, "jobs_per_s": 90.0, "completed_pct": 100.0,
                 "rss_max_mb": 150.0, "rss_growth_pct": 4.0},
    "throughput": {"jobs_per_s": 260.0, "completed_pct": 100.0},
    "scale": {"p50_ratio": 1.5, "p50_small_ms": 40.0, "p50_large_ms": 60.0},
    "sim": {"messages_per_job": 11.1, "messages_growth": 0.0, "completed_pct": 100.0, "accepted_p50_ms": 59.0},
    "sweep": {"accepted_s": 0.4, "indexes_per_s": 2500.0},
}


def with_figure(bench: str, key: str, value: float) -> dict:
    return {**GOOD, bench: {**GOOD[bench], key: value}}


def test_there_are_seven_targets_each_with_a_judged_goal() -> None:
    assert [t.number for t in TARGETS] == [1, 2, 3, 4, 5, 6, 7]
    assert all(t.goal() for t in TARGETS)
    assert BY_NUMBER[3].goal() == "mean ≤ 63 ms, p99 ≤ 250 ms, completed ≥ 100%"
    assert BY_NUMBER[7].goal() == ("sweep accepted in < 1 s, ≥ 2,000 indexes/s, RSS per node ≤ 200 MB, "
                                   "RSS growth ≤ 10%")


def test_figures_at_the_limits_meet_every_target() -> None:
    verdicts = [judge(t, GOOD) for t in TARGETS]
    assert [v.met for v in verdicts] == [True] * 7
    assert verdicts[1].measured == "p50 60 ms, p90 80 ms"
    assert all(c["met"] in (True, None) for v in verdicts for c in v.checks)


@pytest.mark.parametrize(("number", "bench", "key", "value"), [
    (1, "python", "indexes_per_s", 24.9),
    (2, "python", "single_p50_ms", 60.1),
    (3, "bacalhau", "mean_ms", 63.5),
    (3, "bacalhau", "p99_ms", 251.0),
    (3, "bacalhau", "completed_pct", 99.99),
    (4, "throughput", "jobs_per_s", 249.0),
    (5, "scale", "p50_ratio", 2.01),
    (6, "sim", "messages_per_job", 13.5),
    (6, "sim", "messages_growth", 0.6),
    (7, "sweep", "accepted_s", 1.0),
    (7, "sweep", "indexes_per_s", 1999.0),
    (7, "bacalhau", "rss_max_mb", 201.0),
    (7, "bacalhau", "rss_growth_pct", 10.5),
])  # fmt: skip
def test_one_figure_past_its_limit_misses_the_target_and_says_which(number, bench, key, value) -> None:
    verdict = judge(BY_NUMBER[number], with_figure(bench, key, value))
    assert verdict.met is False
    assert [c["figure"] for c in verdict.checks if c["met"] is False] == [f"{bench}.{key}"]
    assert verdict.measured.count("(missed)") == 1


def test_a_failed_benchmark_leaves_only_its_targets_not_measured() -> None:
    errors = {"bacalhau": "RuntimeError: node 1 exited during start"}
    verdicts = {t.number: judge(t, GOOD, errors=errors) for t in TARGETS}
    assert verdicts[3].met is None and verdicts[7].met is None  # 7's RSS comes from 3's run
    assert "node 1 exited during start" in (verdicts[7].error or "")
    assert all(verdicts[n].met for n in (1, 2, 4, 5, 6))


def test_a_judged_figure_missing_or_nan_is_not_measured_but_a_shown_one_may_be_missing() -> None:
    no_rate = {**GOOD, "python": {"single_p50_ms": 50.0}}  # the sweep did not run: only --only 2
    assert judge(BY_NUMBER[1], no_rate).met is None
    assert judge(BY_NUMBER[2], no_rate).met is True and judge(BY_NUMBER[2], no_rate).measured == "p50 50 ms"
    assert judge(BY_NUMBER[7], with_figure("bacalhau", "rss_growth_pct", math.nan)).met is None


def test_a_bench_report_becomes_latency_completion_and_each_nodes_worst_rss() -> None:
    report = BenchReport(jobs=1000, submitters=10, concurrency=3, nodes=3, completed=990, failed=10, errors=0,
                         wall_seconds=10.0, jobs_per_second=99.0,
                         latency_ms={"mean": 60.0, "p50": 55.0, "p90": 80.0, "p99": 120.0, "max": 300.0},
                         rss_mb={"node-0": [80.0, 100.0, 104.0], "node-1": [80.0, 90.0, 108.0]})
    figures = noop_bench_figures(asdict(report))
    assert figures["completed_pct"] == 99.0 and figures["mean_ms"] == 60.0 and figures["p99_ms"] == 120.0
    assert figures["rss_max_mb"] == 108.0
    assert figures["rss_growth_pct"] == pytest.approx(20.0)  # node-1: 90 -> 108 MB after the first jobs


def test_the_other_benchmarks_reports_become_figures() -> None:
    assert python_figures({"indexes_per_s": 6.8, "cpu_s_per_index": 0.248, "single_p50_ms": None}) == \
        {"indexes_per_s": 6.8, "cpu_ms_per_index": 248.0}
    scale = scale_figures({"p50_ms": 40.0, "completed": 1000, "jobs": 1000},
                          {"p50_ms": 90.0, "completed": 1000, "jobs": 1000})
    assert scale["p50_ratio"] == 2.25
    sim = sim_figures([
        {"requests_per_job": 11.0, "gossip_copies_per_job": 0, "completed": 200, "jobs": 200,
         "accepted_ms": {"p50": 61}},
        {"requests_per_job": 11.5, "gossip_copies_per_job": 66.0, "completed": 199, "jobs": 200,
         "accepted_ms": {"p50": 59}},
    ])  # fmt: skip
    assert sim["messages_per_job"] == 77.5 and sim["messages_growth"] == 66.5  # gossip copies count
    assert sim["completed_pct"] == 99.75
    failed = sweep_figures({"sweep": {"accepted_s": 0.2, "state": "failed", "indexes_per_second": 9000.0}})
    assert failed == {"accepted_s": 0.2, "indexes_per_s": 0.0}


def test_only_takes_target_numbers() -> None:
    assert parse_only(None) == [1, 2, 3, 4, 5, 6, 7]
    assert parse_only(" 3, 1,3") == [1, 3]
    for bad in ("0", "8", "1;3", "", "one", "1,,2"):
        with pytest.raises(ValueError, match="--only takes target numbers 1 to 7"):
            parse_only(bad)


def test_the_table_puts_each_goal_beside_its_measured_value_and_marks_a_quick_run() -> None:
    full = render_table([judge(BY_NUMBER[3], with_figure("bacalhau", "p99_ms", 262.0)), judge(BY_NUMBER[4], GOOD)])
    lines = full.splitlines()
    assert lines[0].split() == ["target", "goal", "measured", "met?"]
    row3 = next(line for line in lines if line.startswith("3. Bacalhau's method"))
    assert "mean ≤ 63 ms" in row3 and "mean 58 ms" in row3 and row3.endswith("NO")
    assert "p99 262 ms (missed)" in full
    row4 = next(line for line in lines if line.startswith("4. Throughput"))
    assert "≥ 250 jobs/s" in row4 and "260.0 jobs/s" in row4 and row4.endswith("yes")
    assert "6,000 jobs, 100 submitters" in full and "QUICK" not in full
    assert all(line == line.rstrip() for line in lines)

    quick = render_table([judge(BY_NUMBER[4], GOOD, QUICK), judge(BY_NUMBER[5], GOOD, QUICK, {"scale": "boom"})])
    assert "QUICK: 600 jobs, 100 submitters" in quick
    assert "not the targets' figures" in quick.splitlines()[-1]
    assert "not measured: scale: boom" in quick
    assert next(line for line in quick.splitlines() if line.startswith("5. 20 nodes")).endswith("n/a")


def test_each_benchmark_runs_once_however_many_targets_read_it() -> None:
    calls: list[tuple[str, frozenset[int]]] = []

    def fake(name: str):
        def bench(scale, numbers):
            calls.append((name, numbers))
            if name == "sweep":
                raise RuntimeError("no free port range found")
            return GOOD[name]
        return bench

    benches = {name: fake(name) for name in GOOD}
    verdicts, figures = run_targets([3, 7], QUICK, benches=benches)
    assert [name for name, _ in calls] == ["bacalhau", "sweep"]
    assert [v.met for v in verdicts] == [True, None]
    assert verdicts[1].error == "sweep: RuntimeError: no free port range found"
    assert figures == {"bacalhau": GOOD["bacalhau"]}

    calls.clear()
    run_targets([2], FULL, benches=benches)
    assert calls == [("python", frozenset({2}))]  # the python benchmark skips the sweep target 1 needs


def test_verdicts_as_json_carry_the_run_the_target_and_null_for_nan() -> None:
    verdict = judge(BY_NUMBER[5], with_figure("scale", "p50_large_ms", math.nan), QUICK)
    data = json.loads(json.dumps(verdict.as_json(), allow_nan=False))
    assert data["quick"] is True and data["run"].startswith("QUICK: 200 jobs")
    assert data["target_run"] == "1,000 jobs on 3 and on 20 nodes"
    assert {"figure": "scale.p50_large_ms", "value": None, "goal": None, "met": None} in data["checks"]


@pytest.mark.parametrize(("args", "message"), [
    (["--quick"], "--quick and --only go with --targets"),
    (["--only", "1"], "--quick and --only go with --targets"),
    (["--targets", "--jobs", "100"], "it takes no --jobs"),
    (["--targets", "--chaos", "--base-port", "9000"], "it takes no --chaos, --base-port"),
    (["--targets", "--only", "9"], "--only takes target numbers 1 to 7"),
])  # fmt: skip
def test_bench_targets_refuses_what_it_cannot_honour_in_one_line(args, message) -> None:
    result = CliRunner().invoke(app, ["bench", *args])
    assert result.exit_code == 2
    assert message in result.stderr and "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_bench_targets_prints_json_and_exits_1_when_a_benchmark_could_not_run(monkeypatch) -> None:
    def broken(scale, numbers):
        raise RuntimeError("node 0 exited during start")

    monkeypatch.setitem(bench_targets.BENCHES, "throughput", broken)
    monkeypatch.setitem(bench_targets.BENCHES, "scale", lambda scale, numbers: GOOD["scale"])
    result = CliRunner().invoke(app, ["bench", "--targets", "--quick", "--only", "5,4", "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["quick"] is True and [t["target"] for t in report["targets"]] == [4, 5]
    assert report["targets"][0]["met"] is None and "node 0 exited" in report["targets"][0]["error"]
    assert report["targets"][1]["met"] is True and report["figures"] == {"scale": GOOD["scale"]}
    assert "[1/2] throughput benchmark (target 4)" in result.stderr

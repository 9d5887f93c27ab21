"""Issue #20's seven performance targets, and the verdict on measured figures: no I/O here.

``devstack.bench_targets`` runs the benchmarks and hands their figures to ``judge``; this module says
what each target asks (its checks), how big its run is (``Scale``: the targets' own sizes, or the
``--quick`` ones), turns the benchmark modules' reports into flat figures, and draws the table.

Figures are grouped by the benchmark that measured them (``{"bacalhau": {"mean_ms": 58.1, …}}``), since
one run can serve two targets (the 10,000-job run gives target 3 its latency and target 7 its RSS).
"""

from __future__ import annotations

import math
import textwrap
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

Figures = Mapping[str, Mapping[str, float]]  # benchmark name -> figure name -> value


@dataclass(frozen=True)
class Scale:
    """How big each benchmark runs. ``FULL`` is what the targets are stated for."""

    quick: bool = False
    python_indexes: int = 1_000
    single_rounds: int = 20
    bacalhau_jobs: int = 10_000
    rss_first: int = 1_000  # RSS growth is measured from this many jobs to the end
    throughput_jobs: int = 6_000
    scale_jobs: int = 1_000
    scale_nodes: tuple[int, int] = (3, 20)
    sim_nodes: tuple[int, int] = (100, 1_000)
    sim_jobs: int = 200
    sim_concurrency: int = 3
    sweep_indexes: int = 10_000


FULL = Scale()
QUICK = Scale(quick=True, python_indexes=100, single_rounds=5, bacalhau_jobs=1_000, rss_first=100,
              throughput_jobs=600, scale_jobs=200, sim_nodes=(10, 100), sim_jobs=50, sweep_indexes=1_000)

Op = Literal["<=", ">=", "<"]
_SYMBOL = {"<=": "≤", ">=": "≥", "<": "<"}


@dataclass(frozen=True)
class Check:
    """One figure, and (with ``op``) the limit it must keep; without ``op`` it is shown, not judged."""

    bench: str
    key: str
    label: str  # "p99" -> "p99 ≤ 250 ms" as a goal, "p99 212 ms" as a measurement
    unit: str = ""
    op: Op | None = None
    limit: float = math.nan
    digits: int = 0

    def holds(self, value: float) -> bool:
        if math.isnan(value):
            return False
        if self.op == "<=":
            return value <= self.limit
        if self.op == ">=":
            return value >= self.limit
        return value < self.limit

    def goal(self) -> str:
        if self.op is None:
            return ""
        return " ".join(filter(None, [self.label, _SYMBOL[self.op], f"{self.limit:,g}"])) + self.unit

    def shows(self, value: float) -> str:
        return " ".join(filter(None, [self.label, _number(value, self.digits)])) + self.unit


@dataclass(frozen=True)
class Target:
    number: int
    name: str
    checks: tuple[Check, ...]
    workload: Callable[[Scale], str]  # what is run, at a scale: "1,000 indexes, 3 nodes"

    @property
    def benches(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(c.bench for c in self.checks))

    def goal(self) -> str:
        return ", ".join(c.goal() for c in self.checks if c.op)


TARGETS: tuple[Target, ...] = (
    Target(1, "Python sweep", (
        Check("python", "indexes_per_s", "", " indexes/s", ">=", 25, 1),
        Check("python", "cpu_ms_per_index", "CPU per index", " ms"),
    ), lambda s: f"{s.python_indexes:,} trivial indexes, 3 nodes, every output checked"),
    Target(2, "One python job, warm", (
        Check("python", "single_p50_ms", "p50", " ms", "<=", 60),
        Check("python", "single_p90_ms", "p90", " ms"),
    ), lambda s: f"{s.single_rounds} rounds of print(1), 3 nodes"),
    Target(3, "Bacalhau's method", (
        Check("bacalhau", "mean_ms", "mean", " ms", "<=", 63),
        Check("bacalhau", "p99_ms", "p99", " ms", "<=", 250),
        Check("bacalhau", "completed_pct", "completed", "%", ">=", 100, 1),
    ), lambda s: f"{s.bacalhau_jobs:,} jobs, 10 submitters, concurrency 3, 3 nodes"),
    Target(4, "Throughput", (
        Check("throughput", "jobs_per_s", "", " jobs/s", ">=", 250, 1),
        Check("throughput", "completed_pct", "completed", "%", digits=1),
    ), lambda s: f"{s.throughput_jobs:,} jobs, 100 submitters, concurrency 1, 3 nodes"),
    Target(5, "20 nodes", (
        Check("scale", "p50_ratio", "p50 20 vs 3 nodes", "x", "<=", 2, 2),
        Check("scale", "p50_small_ms", "p50 at 3 nodes", " ms"),
        Check("scale", "p50_large_ms", "p50 at 20 nodes", " ms"),
        Check("scale", "completed_pct", "completed", "%", digits=1),
    ), lambda s: f"{s.scale_jobs:,} jobs on {s.scale_nodes[0]} and on {s.scale_nodes[1]} nodes"),
    Target(6, "Scale by simulation", (
        Check("sim", "messages_per_job", "messages/job", "", "<=", 3 * FULL.sim_concurrency + 4, 1),
        Check("sim", "messages_growth", "growth", "", "<=", 0.5, 2),
        Check("sim", "completed_pct", "completed", "%", ">=", 100, 1),
        Check("sim", "accepted_p50_ms", "accepted p50", " ms"),
    ), lambda s: f"{s.sim_jobs} jobs, concurrency {s.sim_concurrency}, on {s.sim_nodes[0]:,} and "
                 f"{s.sim_nodes[1]:,} simulated nodes"),
    Target(7, "No regression", (
        Check("sweep", "accepted_s", "sweep accepted in", " s", "<", 1, 2),
        Check("sweep", "indexes_per_s", "", " indexes/s", ">=", 2_000),
        Check("bacalhau", "rss_max_mb", "RSS per node", " MB", "<=", 200),
        Check("bacalhau", "rss_growth_pct", "RSS growth", "%", "<=", 10, 1),
    ), lambda s: f"a {s.sweep_indexes:,}-index noop sweep, 3 nodes; RSS per node after {s.bacalhau_jobs:,} jobs "
                 f"(target 3's run), growth after the first {s.rss_first:,}"),
)
BY_NUMBER = {t.number: t for t in TARGETS}


def limit(number: int, key: str) -> float:
    """Target ``number``'s limit on figure ``key`` (benchmarks print it beside their figure)."""
    return next(c.limit for c in BY_NUMBER[number].checks if c.key == key and c.op)


def parse_only(text: str | None) -> list[int]:
    """``--only 1,3`` -> [1, 3]; None -> every target. Raises ValueError with a one-line message."""
    if text is None:
        return [t.number for t in TARGETS]
    numbers: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part.isdigit() or int(part) not in BY_NUMBER:
            raise ValueError(f"--only takes target numbers 1 to {len(TARGETS)}, separated by commas (got {part!r})")
        if int(part) not in numbers:
            numbers.append(int(part))
    return sorted(numbers)


@dataclass(frozen=True)
class Verdict:
    target: Target
    scale: Scale
    met: bool | None  # None: not measured (its benchmark failed)
    measured: str
    checks: list[dict[str, Any]] = field(default_factory=list)
    error: str | None = None

    def workload(self) -> str:
        """What ran; a quick run says so, since its figures are not the target's."""
        run = self.target.workload(self.scale)
        return f"QUICK: {run}" if run != self.target.workload(FULL) else run

    def as_json(self) -> dict[str, Any]:
        return {"target": self.target.number, "name": self.target.name, "quick": self.scale.quick,
                "run": self.workload(), "target_run": self.target.workload(FULL), "goal": self.target.goal(),
                "measured": self.measured, "met": self.met, "checks": self.checks, "error": self.error}


def judge(target: Target, figures: Figures, scale: Scale = FULL, errors: Mapping[str, str] | None = None) -> Verdict:
    """A target's verdict on the figures: met when every judged check holds; ``None`` when a
    benchmark it needs failed (``errors``: benchmark -> why) or left a judged figure out."""
    failed = [f"{bench}: {errors[bench]}" for bench in target.benches if errors and bench in errors]
    if failed:
        return Verdict(target, scale, None, "not measured", error="; ".join(failed))
    shown, checks, met = [], [], True
    for check in target.checks:
        value = figures.get(check.bench, {}).get(check.key)
        if check.op and (value is None or math.isnan(value)):
            return Verdict(target, scale, None, "not measured", error=f"no figure {check.bench}.{check.key}")
        if value is None:
            continue  # a figure shown beside the judged ones, which this run did not make
        holds = check.holds(value) if check.op else None
        met = met and holds is not False
        shown.append(check.shows(value) + (" (missed)" if holds is False else ""))
        checks.append({"figure": f"{check.bench}.{check.key}", "value": _finite(value), "goal": check.goal() or None,
                       "met": holds})
    return Verdict(target, scale, met, ", ".join(shown), checks)


# --- the benchmark modules' reports, as flat figures -------------------------------------------


def python_figures(report: Mapping[str, Any]) -> dict[str, float]:
    """``devstack.bench_python.measure``'s dict (a missing or None figure stays out)."""
    figures = {"indexes_per_s": report.get("indexes_per_s"), "single_p50_ms": report.get("single_p50_ms"),
               "single_p90_ms": report.get("single_p90_ms")}
    if report.get("cpu_s_per_index") is not None:
        figures["cpu_ms_per_index"] = report["cpu_s_per_index"] * 1000
    return {k: float(v) for k, v in figures.items() if v is not None}


def noop_bench_figures(report: Mapping[str, Any]) -> dict[str, float]:
    """``devstack.bench.BenchReport`` as a dict (``dataclasses.asdict``): latency, completion, and
    each node's RSS ``[start, after the first rss_first jobs, end]``, as the largest end and growth."""
    figures = {"mean_ms": report["latency_ms"]["mean"], "p50_ms": report["latency_ms"]["p50"],
               "p99_ms": report["latency_ms"]["p99"], "jobs_per_s": report["jobs_per_second"],
               "completed_pct": 100 * report["completed"] / max(report["jobs"], 1)}
    rss = list(report.get("rss_mb", {}).values())
    if rss:
        figures["rss_max_mb"] = max(end for _, _, end in rss)
        figures["rss_growth_pct"] = max(100 * (end - first) / first for _, first, end in rss)
    return {k: float(v) for k, v in figures.items()}


def scale_figures(small: Mapping[str, Any], large: Mapping[str, Any]) -> dict[str, float]:
    """Two ``devstack.bench_scale.measure`` dicts: the large stack's p50 over the small one's."""
    return {"p50_small_ms": small["p50_ms"], "p50_large_ms": large["p50_ms"],
            "p50_ratio": large["p50_ms"] / small["p50_ms"] if small["p50_ms"] else math.nan,
            "completed_pct": 100 * (small["completed"] + large["completed"]) / max(small["jobs"] + large["jobs"], 1)}


def sim_figures(reports: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """``devstack.bench_sim.simulate`` dicts, smallest network first: messages per job (direct requests
    plus gossip copies) at the largest size, and how much that grew from the smallest."""
    def messages(r: Mapping[str, Any]) -> float:
        return r["requests_per_job"] + r["gossip_copies_per_job"]

    largest = reports[-1]
    return {"messages_per_job": messages(largest), "messages_growth": messages(largest) - messages(reports[0]),
            "completed_pct": 100 * sum(r["completed"] for r in reports) / max(sum(r["jobs"] for r in reports), 1),
            "accepted_p50_ms": float(largest["accepted_ms"]["p50"])}


def sweep_figures(report: Mapping[str, Any]) -> dict[str, float]:
    """``devstack.bench_sweep.measure``'s dict; a sweep that did not complete ran at no rate at all."""
    sweep = report["sweep"]
    rate = sweep["indexes_per_second"] if sweep["state"] == "completed" else 0.0
    return {"accepted_s": sweep["accepted_s"], "indexes_per_s": rate}


# --- the table ----------------------------------------------------------------------------------


def _finite(value: float) -> float | None:
    """JSON has no NaN: a figure that could not be computed is null."""
    return None if math.isnan(value) else value


def jsonable(figures: Figures) -> dict[str, dict[str, float | None]]:
    return {bench: {k: _finite(v) for k, v in values.items()} for bench, values in figures.items()}


def _number(value: float, digits: int) -> str:
    return f"{value:,.{digits}f}" if not math.isnan(value) else "n/a"


def _mark(met: bool | None) -> str:
    return {True: "yes", False: "NO", None: "n/a"}[met]


COLUMNS = ("target", "goal", "measured", "met?")
_WIDTHS = (32, 30, 48, 4)


def rows(verdicts: Sequence[Verdict]) -> list[tuple[str, str, str, str]]:
    """One row per target: name and workload, goal, measured figures (or why not), met."""
    return [(f"{v.target.number}. {v.target.name}\n{v.workload()}", v.target.goal(),
             v.measured if v.error is None else f"not measured: {v.error}", _mark(v.met)) for v in verdicts]


def _wrap(cell: str, width: int) -> list[str]:
    return [line for paragraph in cell.splitlines() for line in textwrap.wrap(paragraph, width)] or [""]


def render_table(verdicts: Sequence[Verdict]) -> str:
    """A plain-text table (cells wrapped to fixed widths), and a warning line for a quick run."""
    table = [COLUMNS, *rows(verdicts)]
    wrapped = [[_wrap(cell, width) for cell, width in zip(row, _WIDTHS, strict=True)] for row in table]
    widths = [max(len(line) for row in wrapped for line in row[i]) for i in range(len(COLUMNS))]
    out: list[str] = []
    for n, row in enumerate(wrapped):
        if n > 1:
            out.append("")  # rows span lines: a blank line between them
        for i in range(max(len(cell) for cell in row)):
            parts = [(cell[i] if i < len(cell) else "").ljust(w) for cell, w in zip(row, widths, strict=True)]
            out.append("  ".join(parts).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    if any(v.scale.quick for v in verdicts):
        out.append("")
        out.append("QUICK run: smaller workloads than the targets' (each row says which), so these figures are "
                   "not the targets' figures; the full run is shoal bench --targets.")
    return "\n".join(out)

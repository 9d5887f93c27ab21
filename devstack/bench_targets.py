"""``shoal bench --targets``: run the benchmarks behind issue #20's targets and judge each target.

    shoal bench --targets [--quick] [--only 1,3] [--json]

Each benchmark module runs once, on its own fresh devstack (free ports, a temporary directory), even
when two targets read its figures; ``devstack.targets`` holds the targets, the verdicts and the table.
A benchmark that fails leaves its targets "not measured" with the reason, and the others still run.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path

import trio

from devstack import bench
from devstack.targets import (
    BY_NUMBER,
    FULL,
    QUICK,
    Scale,
    Verdict,
    jsonable,
    judge,
    noop_bench_figures,
    python_figures,
    render_table,
    scale_figures,
    sim_figures,
    sweep_figures,
)

Bench = Callable[[Scale, frozenset[int]], dict[str, float]]


def _python(scale: Scale, numbers: frozenset[int]) -> dict[str, float]:
    """Targets 1 and 2 share one python devstack; each part runs only when its target is asked for."""
    from devstack import bench_python

    report = trio.run(bench_python.measure, scale.python_indexes if 1 in numbers else 0, 3,
                      scale.single_rounds if 2 in numbers else 0, bench.free_base_port(3), [])
    return python_figures(report)


def _noop_bench(jobs: int, submitters: int, concurrency: int, rss_first: int = 1000) -> dict[str, float]:
    base = Path(tempfile.mkdtemp(prefix="shoal-bench-targets-"))
    try:
        report = trio.run(partial(bench.on_devstack, nodes=3, jobs=jobs, submitters=submitters,
                                  concurrency=concurrency, base_dir=base, base_port=bench.free_base_port(3),
                                  rss_first=rss_first))
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return noop_bench_figures(asdict(report))


def _bacalhau(scale: Scale, numbers: frozenset[int]) -> dict[str, float]:
    return _noop_bench(scale.bacalhau_jobs, 10, 3, scale.rss_first)


def _throughput(scale: Scale, numbers: frozenset[int]) -> dict[str, float]:
    return _noop_bench(scale.throughput_jobs, 100, 1)


def _scale(scale: Scale, numbers: frozenset[int]) -> dict[str, float]:
    from devstack import bench_scale

    small, large = (trio.run(bench_scale.measure, n, scale.scale_jobs, 3, bench.free_base_port(n))
                    for n in scale.scale_nodes)
    return scale_figures(small, large)


def _sim(scale: Scale, numbers: frozenset[int]) -> dict[str, float]:
    try:
        from devstack import bench_sim
    except ImportError as exc:  # tests/memnet.py is in a checkout, not in the wheel
        raise RuntimeError(f"the simulation needs a source checkout of Shoal ({exc})") from None
    return sim_figures([bench_sim.measure(n, scale.sim_jobs, scale.sim_concurrency) for n in scale.sim_nodes])


def _sweep(scale: Scale, numbers: frozenset[int]) -> dict[str, float]:
    from devstack import bench_sweep

    return sweep_figures(trio.run(bench_sweep.measure, scale.sweep_indexes, 0, 3, bench.free_base_port(3)))


BENCHES: dict[str, Bench] = {"python": _python, "bacalhau": _bacalhau, "throughput": _throughput,
                             "scale": _scale, "sim": _sim, "sweep": _sweep}


def run_targets(numbers: list[int], scale: Scale, progress: Callable[[str], None] = lambda line: None,
                benches: dict[str, Bench] = BENCHES) -> tuple[list[Verdict], dict[str, dict[str, float]]]:
    """Run every benchmark the targets ``numbers`` need, once each; their verdicts and the figures."""
    targets = [BY_NUMBER[n] for n in numbers]
    needed = list(dict.fromkeys(b for t in targets for b in t.benches))
    figures: dict[str, dict[str, float]] = {}
    errors: dict[str, str] = {}
    for i, name in enumerate(needed, 1):
        readers = ", ".join(str(t.number) for t in targets if name in t.benches)
        progress(f"[{i}/{len(needed)}] {name} benchmark (target {readers}) ...")
        started = time.perf_counter()
        try:
            figures[name] = benches[name](scale, frozenset(numbers))
        except Exception as exc:  # one benchmark's failure is its targets' "not measured", not the run's end
            errors[name] = f"{type(exc).__name__}: {exc}"[:300]
        progress(f"[{i}/{len(needed)}] {name}: {'failed' if name in errors else 'done'} in "
                 f"{time.perf_counter() - started:.0f} s")
    return [judge(t, figures, scale, errors) for t in targets], figures


def main(numbers: list[int], *, quick: bool = False, as_json: bool = False) -> list[Verdict]:
    """Run, then print the table (or JSON); progress goes to stderr."""
    scale = QUICK if quick else FULL
    verdicts, figures = run_targets(numbers, scale, progress=lambda line: print(line, file=sys.stderr, flush=True))
    if as_json:
        print(json.dumps({"quick": quick, "targets": [v.as_json() for v in verdicts], "figures": jsonable(figures)},
                         indent=2))
    else:
        print(render_table(verdicts))
    return verdicts

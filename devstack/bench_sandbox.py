"""What the python engine's sandbox costs, end to end: two 1-node devstacks side by side in one run.

    python -m devstack.bench_sandbox [N] [--sweep INDEXES]

One node runs python jobs in the sandbox (the default), the other with ``--unsafe-unsandboxed-python``
(the engine as it was before the sandbox). Both run at once on this machine, and each measurement
alternates between them, so that noise hits both alike:
- ``print(1)`` submitted through the API and waited for, with a warm interpreter waiting (N rounds);
- ``print(1)`` back to back, so that the pool drains and interpreters start cold;
- a sweep of trivial indexes (default 60), submit to done.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import trio

from devstack import Devstack
from devstack.bench_engines import _pct, _timed

MODES = ("sandboxed", "unsandboxed")


async def _sweep(client, indexes: int) -> float:
    spec = {"job": {"engine": {"name": "python", "code": "import os; print(os.environ['i'])"}},
            "grid": {"i": [str(i) for i in range(indexes)]}}
    t0 = time.perf_counter()
    d = await client.run_sweep(spec, timeout=1800)
    elapsed = time.perf_counter() - t0
    if d.sweep.state.value != "completed":
        raise RuntimeError(f"sweep ended {d.sweep.state.value}")
    return elapsed


async def main(n: int, indexes: int) -> dict:
    from shoal import AsyncClient

    base = Path("/tmp/shoal-bench-sandbox")
    stacks = {
        "sandboxed": Devstack(1, base_dir=base / "sandboxed", base_port=16700, write_state=False),
        "unsandboxed": Devstack(1, base_dir=base / "unsandboxed", base_port=16750, write_state=False,
                                extra_args=["--unsafe-unsandboxed-python"]),
    }
    times: dict[str, dict[str, list[float]]] = {m: {"warm": [], "back_to_back": [], "sweep_s": []} for m in MODES}
    async with stacks["sandboxed"] as a, stacks["unsandboxed"] as b, \
            AsyncClient(a.nodes[0].api) as ca, AsyncClient(b.nodes[0].api) as cb:
        clients = {"sandboxed": ca, "unsandboxed": cb}
        py = {"engine": {"name": "python", "code": "print(1)"}, "cache": False}
        for c in clients.values():
            await _timed(c, py)
        await trio.sleep(8)  # both pools full
        for i in range(n):
            for mode in (MODES if i % 2 == 0 else MODES[::-1]):
                times[mode]["warm"].append(await _timed(clients[mode], py))
            await trio.sleep(2.5)  # pools of 2: time to start the next interpreters
        for mode in MODES:
            await trio.sleep(8)
            times[mode]["back_to_back"] = [await _timed(clients[mode], py) for _ in range(6)]
        for mode in MODES:
            await trio.sleep(8)
            times[mode]["sweep_s"].append(await _sweep(clients[mode], indexes))
    report: dict = {}
    print(f"python engine, 1-node devstacks side by side, N={n}, sweep of {indexes} indexes")
    print(f"{'':28s} {'sandboxed':>22s} {'unsandboxed':>22s}")
    for key, label in (("warm", "print(1) warm"), ("back_to_back", "print(1) back to back")):
        row = []
        for mode in MODES:
            ms = times[mode][key]
            report[f"{mode}_{key}"] = {"p50": _pct(ms, 0.5), "p90": _pct(ms, 0.9), "mean": statistics.fmean(ms)}
            row.append(f"p50 {_pct(ms, 0.5):6.0f} p90 {_pct(ms, 0.9):6.0f} ms")
        print(f"{label:28s} {row[0]:>22s} {row[1]:>22s}")
    row = []
    for mode in MODES:
        s = times[mode]["sweep_s"][0]
        report[f"{mode}_sweep"] = {"seconds": s, "indexes_per_s": indexes / s}
        row.append(f"{s:6.1f} s ({indexes / s:4.1f}/s)")
    print(f"{f'sweep of {indexes}':28s} {row[0]:>22s} {row[1]:>22s}")
    return report


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, nargs="?", default=20)
    parser.add_argument("--sweep", type=int, default=60, help="indexes of the python sweep")
    args = parser.parse_args()
    print(json.dumps(trio.run(main, args.n, args.sweep)))

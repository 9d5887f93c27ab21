"""Benchmark of the ``wasm`` engine: a hello-world module's run, forked by the fork server vs a new interpreter.

    python -m benchmarks.wasm [-n 30] [--at-once 200]

Times ``WasmExecutor.run`` (the module compiled beforehand) in this process, without the network: what a
compute node adds to a job's latency, one run at a time; then ``--at-once`` runs started together, and the
machine's CPU they took, per run (runs forked by the fork server are not this process's children: the
machine's figure counts them; it counts whatever else runs meanwhile too).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import trio
import wasmtime

from benchmarks.python import percentile
from executors.base import Mount, RunRequest
from executors.wasm import WasmExecutor
from jobs import JobSpec, Resources, WasmEngine

HELLO = wasmtime.wat2wasm("""(module
  (import "wasi_snapshot_preview1" "fd_write" (func $write (param i32 i32 i32 i32) (result i32)))
  (memory (export "memory") 1) (data (i32.const 16) "hi\\n")
  (func (export "_start") (i32.store (i32.const 0) (i32.const 16)) (i32.store (i32.const 4) (i32.const 3))
    (drop (call $write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))""")



def system_cpu_seconds() -> float:
    """CPU time of the whole machine (all processes), from /proc/stat."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(v) for i, v in enumerate(fields) if i not in (3, 4))  # all but idle and iowait
    return busy / 100


async def bench(n: int, at_once: int, forked: bool, tmp: Path) -> None:
    (tmp / "in").mkdir(exist_ok=True)
    (tmp / "in" / "hello.wasm").write_bytes(HELLO)
    spec = JobSpec(engine=WasmEngine(module="/in/hello.wasm"), resources=Resources(memory="64MiB"), timeout=60)

    def request(i: int) -> RunRequest:
        work = tmp / f"run-{forked}-{i}"
        return RunRequest(f"bench-{i}", f"ex-{i}", spec, work, work / "outputs", (Mount(tmp / "in", "/in"),),
                          seed=b"bench")

    executor = WasmExecutor(cache_dir=tmp / "cache")
    async with trio.open_nursery() as nursery:
        if forked:
            await nursery.start(executor.run_pool)
        await executor.prepare(request(0))
        times = []
        for i in range(n):
            t = time.perf_counter()
            result = await executor.run(request(i))
            times.append((time.perf_counter() - t) * 1000)
            if result.stdout != "hi\n":
                raise SystemExit(f"unexpected result: {result}")
        t, machine = time.perf_counter(), system_cpu_seconds()
        async with trio.open_nursery() as runs:
            for i in range(n, n + at_once):
                runs.start_soon(executor.run, request(i))
        wall, machine = time.perf_counter() - t, system_cpu_seconds() - machine
        nursery.cancel_scope.cancel()
    print(f"{'forked by the fork server' if forked else 'a new interpreter each '}  one at a time: "
          f"p50 {percentile(times, 0.5):6.1f} ms  p90 {percentile(times, 0.9):6.1f} ms   "
          f"{at_once} at once: {wall * 1000 / at_once:6.1f} ms a run, "
          f"machine CPU {machine * 1000 / at_once:6.1f} ms a run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=30, help="runs one at a time")
    parser.add_argument("--at-once", type=int, default=200, help="runs started together")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for forked in (True, False):
            trio.run(bench, args.n, args.at_once, forked, Path(tmp))


if __name__ == "__main__":
    main()

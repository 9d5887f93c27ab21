"""Storage benchmark: fetching a job input through Kubo and publishing a result, Kubo and local.

    python -m benchmarks.storage [--size 10MB] [--runs 5] [--no-kubo]

What is timed (wall clock, ``trio.current_time()``), each run on fresh random content so no daemon
has it cached:

* fetch via Kubo: content added and pinned on daemon A only; ``KuboInput`` on daemon B fetches
  ``ipfs://CID`` into a file (B finds it on A by bitswap over loopback). This is what a compute node
  does before a run.
* publish via Kubo: ``KuboPublisher.publish`` of a result directory (stdout, stderr, exitCode and an
  output file of the given size) on A: a streamed multipart ``add`` with pinning.
* publish local: ``LocalPublisher.publish`` of the same directory (copy + CID in pure Python).
* download + verify: ``export`` → ``extract_verified`` (what ``shoal get`` does with the API's stream),
  from Kubo and from the local store.
* CID only: ``storage.unixfs.compute_cid`` of the result directory.

Two Kubo daemons on one machine share its cores with this process; the figures are an upper bound
for a LAN and say nothing about the public IPFS network.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import trio

from jobs import parse_bytes
from storage.kubo import KuboInput, KuboPublisher
from storage.local import LocalPublisher
from storage.tarstream import extract_verified
from storage.unixfs import compute_cid

T = TypeVar("T")


def _result_dir(root: Path, size: int) -> Path:
    root.mkdir(parents=True)
    (root / "stdout").write_bytes(os.urandom(64))
    (root / "stderr").write_bytes(b"")
    (root / "exitCode").write_text("0")
    (root / "outputs").mkdir()
    (root / "outputs" / "data.bin").write_bytes(os.urandom(size))
    return root


async def _timed(fn: Callable[[], Awaitable[T]]) -> tuple[float, T]:
    start = trio.current_time()
    value = await fn()
    return trio.current_time() - start, value


def _row(name: str, seconds: list[float], size: int) -> str:
    median = statistics.median(seconds)
    return (f"  {name:<34} median {median * 1000:8.1f} ms   min {min(seconds) * 1000:8.1f}   "
            f"max {max(seconds) * 1000:8.1f}   {size / median / 1e6:7.1f} MB/s")


async def run(size: int, runs: int, kubo: bool) -> list[str]:
    lines = [f"storage benchmark: {size / 1e6:g} MB, {runs} runs each, {os.cpu_count()} CPUs"]
    with tempfile.TemporaryDirectory(prefix="shoal-bench-") as tmp:
        base = Path(tmp)
        times: dict[str, list[float]] = {}

        async def measure(name: str, fn: Callable[[], Awaitable[T]]) -> T:
            seconds, value = await _timed(fn)
            times.setdefault(name, []).append(seconds)
            return value

        local = LocalPublisher(base / "local-store")
        for i in range(runs):
            result = _result_dir(base / f"result-{i}", size)
            await measure("CID only (pure Python)", lambda r=result: compute_cid(r))
            cid = await measure("publish local", lambda r=result: local.publish(r))
            await measure("download + verify (local)", lambda c=cid, n=i: _download(local, c, base / f"lget-{n}"))
        if kubo:
            from devstack.kubo import KuboCluster, ipfs_binary

            if ipfs_binary() is None:
                lines.append("  (Kubo not installed: run scripts/install-kubo; Kubo figures skipped)")
            else:
                async with KuboCluster(2, base / "kubo") as cluster, \
                        cluster.daemons[0].client() as a, cluster.daemons[1].client() as b:
                    publisher, fetcher = KuboPublisher(a), KuboInput(b)
                    for i in range(runs):
                        cid = await a.add_bytes(os.urandom(size))
                        await measure("fetch via Kubo (added on A, via B)",
                                      lambda c=cid, n=i: fetcher.fetch(f"ipfs://{c}", base / f"in-{n}", max_bytes=size))
                        cid = await measure("publish via Kubo (add + pin)",
                                            lambda r=base / f"result-{i}": publisher.publish(r))
                        await measure("download + verify (Kubo)",
                                      lambda c=cid, n=i: _download(publisher, c, base / f"kget-{n}"))
        lines += [_row(name, seconds, size) for name, seconds in times.items()]
    return lines


async def _download(publisher: LocalPublisher | KuboPublisher, cid: str, dest: Path) -> None:
    await extract_verified(await publisher.export(cid), dest, cid)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="10MB", help="input / output file size (default 10MB)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--no-kubo", action="store_true", help="only the local store and CID computation")
    args = parser.parse_args()
    for line in trio.run(run, parse_bytes(args.size), args.runs, not args.no_kubo):
        print(line)


if __name__ == "__main__":
    main()

"""End-to-end engine figures on a 1-node devstack (with Kubo when installed), side by side.

    python -m devstack.bench_engines [N]

- docker: `/bin/true` in busybox submitted through the API and waited for, against a bare
  `docker run --rm --network none busybox /bin/true` (docker-py), alternating, N rounds;
- python: `print(1)` through the API with the warm interpreter pool, and back to back (pool draining);
- cache: resubmitting an identical deterministic job 10*N times (served from the verified cache).
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

import trio

from devstack import Devstack
from devstack.kubo import ipfs_binary


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _summary(name: str, ms: list[float]) -> dict[str, float]:
    out = {"p50": _pct(ms, 0.5), "p90": _pct(ms, 0.9), "mean": statistics.fmean(ms), "n": len(ms)}
    print(f"{name:38s} p50 {out['p50']:7.1f} ms   p90 {out['p90']:7.1f} ms   (n={len(ms)})")
    return out


async def _timed(client, spec) -> float:
    t0 = time.perf_counter()
    d = await client.run(spec, timeout=120)
    if d.job.state.value != "completed":
        raise RuntimeError(f"job failed: {d.job.reason}")
    return (time.perf_counter() - t0) * 1000


async def main(n: int) -> dict:
    import docker

    from shoal import AsyncClient

    base = Path("/tmp/shoal-bench-engines")
    report: dict = {}
    async with Devstack(1, base_dir=base / "stack", base_port=16600, kubo=ipfs_binary() is not None,
                        write_state=False) as stack, AsyncClient(stack.nodes[0].api) as client:
        bare = docker.from_env()
        true_spec = {"engine": {"name": "docker", "image": "busybox", "entrypoint": ["/bin/true"]}}
        await _timed(client, true_spec)  # warm-up
        shoal_ms, bare_ms = [], []
        for i in range(n):
            order = [0, 1] if i % 2 == 0 else [1, 0]
            for which in order:
                if which == 0:
                    shoal_ms.append(await _timed(client, true_spec))
                else:
                    t0 = time.perf_counter()
                    await trio.to_thread.run_sync(lambda: bare.containers.run("busybox", "/bin/true", remove=True,
                                                                               network_mode="none"))
                    bare_ms.append((time.perf_counter() - t0) * 1000)
        report["docker_shoal"] = _summary("docker /bin/true via Shoal (submit→done)", shoal_ms)
        report["docker_bare"] = _summary("bare docker run --rm --network none", bare_ms)
        overhead = [a - b for a, b in zip(shoal_ms, bare_ms, strict=True)]
        report["docker_overhead"] = _summary("overhead per round (Shoal - bare)", overhead)

        py = {"engine": {"name": "python", "code": "print(1)"}, "cache": False}
        await _timed(client, py)
        await trio.sleep(8)  # let the pool refill
        warm = []
        for _ in range(n):
            warm.append(await _timed(client, py))
            await trio.sleep(2.5)  # a pool of 2: give it time to start the next interpreter
        report["python_warm"] = _summary("python print(1), warm pool", warm)
        burst = [await _timed(client, py) for _ in range(max(4, n // 2))]
        report["python_back_to_back"] = _summary("python print(1), back to back (pool drains)", burst)

        cached_spec = {"engine": {"name": "noop"}, "env": {"X": "cache-bench"}}
        await client.run(cached_spec, timeout=60)
        cached = [await _timed(client, cached_spec) for _ in range(n * 10)]
        report["cache_resubmit"] = _summary("identical resubmission (cached)", cached)
    return report


if __name__ == "__main__":
    result = trio.run(main, int(sys.argv[1]) if len(sys.argv) > 1 else 20)
    print(json.dumps(result))

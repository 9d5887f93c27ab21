"""What one claim costs the requester in a verified sweep whose fast node has run far ahead.

    python -m benchmarks.sweep_claims [--indexes 100000] [--ahead 50000] [--confidence 2]

A sweep's decisions run on the requester's event loop, one claim at a time, so a slow claim stalls the
node. Node A alone reports ``--ahead`` indexes (each then awaits another node's run), then A claims
again. Times that claim (``SweepMachine.claim``, no network or store), and one of node B, which is
granted the awaiting indexes. Prints the median of 5 of each, in milliseconds.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

from jobs import JobState, NoopEngine, RunResult
from jobs.messages import Claim, IndexResult
from jobs.spec import JobSpec
from jobs.sweep import Sweep, SweepSpec
from requester.sweep_machine import SweepMachine

ABLE = frozenset({"n-a", "n-b"})


def machine_ahead(indexes: int, ahead: int, confidence: int) -> SweepMachine:
    """A sweep in which node A has reported ``ahead`` indexes and node B none."""
    spec = SweepSpec(job=JobSpec(engine=NoopEngine()), grid={"X": [str(i) for i in range(indexes)]},
                     confidence=confidence)
    sweep = Sweep(id="s-bench", owner="bench", spec=spec, count=indexes, requester="req",
                  counts={JobState.PENDING: indexes}, created_at=0, updated_at=0)
    m = SweepMachine.new(sweep, "req")
    now, reported = 1.0, 0
    m.claim("n-a", Claim(sweep_id="s-bench", claim_id="c-a", want=1000), now, able=ABLE, quarantined=False)
    while reported < ahead:
        held = sorted(m.claims["c-a"].indexes)
        now += 0.01
        results = [IndexResult(index=i, result=RunResult(stdout=str(i))) for i in held]
        m.claim("n-a", Claim(sweep_id="s-bench", claim_id="c-a", want=1000, results=results), now, able=ABLE,
                quarantined=False)
        reported += len(held)
    return m


def timed_claim(m: SweepMachine, peer: str) -> float:
    m = copy.deepcopy(m)
    started = time.perf_counter()
    m.claim(peer, Claim(sweep_id="s-bench", claim_id=f"c-{peer}-new", want=40), 1e6, able=ABLE, quarantined=False)
    return (time.perf_counter() - started) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--indexes", type=int, default=100_000)
    parser.add_argument("--ahead", type=int, default=50_000)
    parser.add_argument("--confidence", type=int, default=2)
    args = parser.parse_args()
    m = machine_ahead(args.indexes, args.ahead, args.confidence)
    a = statistics.median(timed_claim(m, "n-a") for _ in range(5))
    b = statistics.median(timed_claim(m, "n-b") for _ in range(5))
    print(f"sweep of {args.indexes} indexes, confidence {args.confidence}, {args.ahead} reported by node A: "
          f"a claim of A {a:.1f} ms, of B {b:.1f} ms (median of 5)")


if __name__ == "__main__":
    main()

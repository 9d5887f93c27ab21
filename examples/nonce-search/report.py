"""Run the nonce search as a first-success sweep and report how the network stopped it.

    cd examples/nonce-search
    python report.py                       # submit to the devstack (or $SHOAL_API), wait, report
    python report.py --difficulty 24 --count 64
    python report.py --sweep SWEEP_ID      # report on a sweep started with `shoal run python ... --sweep`

Prints the winning index and its nonce (checked here: the double SHA-256 is recomputed), the wall
time, and from the sweep's events: how long the cancellation took to reach each node holding a claim
and how many indexes were still running when the winner was declared. Needs the Shoal SDK
(``import shoal``), which the ``shoal`` package installs.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import time
from pathlib import Path

from main import DEFAULT_BLOCK, DEFAULT_DIFFICULTY, parse_block, share

import shoal

HERE = Path(__file__).resolve().parent
# The requester's record of one node's cancellation; the count and its noun may vary.
CANCEL = re.compile(r"cancel reached node (?P<node>\S+) after (?P<ms>\d+(?:\.\d+)?) ?ms"
                    r"(?:; (?P<stopped>\d+) running (?:index|indexes|indices) stopped)?")
CLAIMED = re.compile(r"\d+ indexes?: (?P<ranges>[\d, -]+)")
FOUND = re.compile(r"FOUND nonce (?P<nonce>\d+)(?: \(0x[0-9a-f]+\) after (?P<tries>\d+) tries)?")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--difficulty", type=int, default=DEFAULT_DIFFICULTY,
                    help="leading zero bits (default %(default)s)")
    ap.add_argument("--count", type=int, default=32, help="indexes: shares of the nonce space (default %(default)s)")
    ap.add_argument("--cpu", default="1", help="cores each index reserves: a node runs about as many indexes at "
                    "once as it has cores divided by this (default %(default)s)")
    ap.add_argument("--block", default=DEFAULT_BLOCK, help="the block, hex or text (default %(default)r)")
    ap.add_argument("--sweep", metavar="ID", help="report on this sweep instead of submitting one")
    ap.add_argument("--api", metavar="URL", help="node API (default: $SHOAL_API, else the running devstack)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds to wait for the sweep (default %(default)s)")
    ap.add_argument("--settle", type=float, default=5, help="seconds to wait for cancellation events after the end")
    args = ap.parse_args()

    with shoal.Client(args.api) as client:
        t0 = time.monotonic()
        if args.sweep:
            sweep_id = args.sweep
        else:
            sweep_id = submit(client, args)
            print(f"sweep {sweep_id}: {args.count} indexes, difficulty {args.difficulty}; waiting...", flush=True)
        sweep = client.wait_sweep(sweep_id, timeout=args.timeout).sweep
        waited = time.monotonic() - t0
        env = sweep.spec.job.env
        block = parse_block(env.get("BLOCK", DEFAULT_BLOCK))
        difficulty = int(env.get("DIFFICULTY", DEFAULT_DIFFICULTY))
        count = sweep.count

        print(f"\nsweep {sweep_id}: {sweep.state.value} ({sweep.reason})")
        print(f"  {count} indexes: " + ", ".join(f"{n} {state.value}" for state, n in sorted(sweep.counts.items())))
        print(f"  {sweep.updated_at - sweep.created_at:.2f} s from submission to the end at the requester"
              + ("" if args.sweep else f" ({waited:.2f} s here, the upload included)"))
        winner = sweep.winner
        if winner is None:
            print("  no winner")
            return 1

        record = client.sweep_index(sweep_id, winner)
        result = record.result or shoal.RunResult()
        stdout = result.stdout or client.index_logs(sweep_id, winner)
        found = FOUND.search(stdout)
        if not found:
            print(f"  winner: index {winner}, but its output names no nonce:\n{stdout}")
            return 1
        nonce, tries = int(found["nonce"]), int(found["tries"] or 0)
        digest = hashlib.sha256(hashlib.sha256(block + nonce.to_bytes(4, "big")).digest()).digest()
        zeros = 256 - int.from_bytes(digest, "big").bit_length()
        start, end = share(winner, count)
        ok = zeros >= difficulty and start <= nonce < end
        print(f"\nwinner: index {winner} on node {short(record.node_id)}: nonce {nonce} (0x{nonce:08x})")
        print(f"  sha256d {digest.hex()}")
        print(f"  {zeros} leading zero bits (wanted {difficulty}), in its share {start}-{end - 1}: "
              + ("verified here" if ok else "INVALID"))
        finished, rate = result.finished_at, None
        if finished is not None and result.started_at is not None:
            ran = finished - result.started_at
            rate = tries / ran if tries and ran > 0 else None
            print(f"  {tries} tries in {ran:.2f} s" + (f" ({rate / 1e3:.0f} kH/s, start-up included)" if rate else ""))
            print(f"  the requester ended the sweep {max(0.0, sweep.updated_at - finished) * 1000:.0f} ms after "
                  "the winner finished")

        report_cancellation(client, sweep, finished, rate, args.settle)
        return 0 if ok else 1


def submit(client: shoal.Client, args: argparse.Namespace) -> str:
    """Pack this directory as the job's context, as ``shoal run python main.py`` does, and submit the sweep."""
    from shoal._context import pack_context

    cid = client.upload_context(pack_context(HERE))
    parse_block(args.block)  # a bad block fails here, not on every index
    spec = {
        "job": {
            "engine": {"name": "python", "main": "main.py"},
            "inputs": [{"source": f"ipfs://{cid}", "path": "/context"}],
            "outputs": [{"name": "nonce", "path": "/outputs"}],
            "env": {"DIFFICULTY": str(args.difficulty), "BLOCK": args.block},
            "resources": {"cpu": args.cpu},
        },
        "grid": {"PART": [str(i) for i in range(args.count)]},
        "success": "any",
        "success_output": "nonce",
    }
    return client.submit_sweep(spec).sweep.id


def report_cancellation(client: shoal.Client, sweep: shoal.Sweep, winner_finished: float | None,
                        rate: float | None, settle: float) -> None:
    """What the events say about the end: when each node heard of it, and what was still running."""
    events = settled_events(client, sweep.id, settle)
    claimed: dict[str, set[int]] = {}  # node -> indexes it was given
    for e in events:
        if e.kind == "Claimed" and (m := CLAIMED.search(e.message)):
            for part in m["ranges"].split(", "):
                first, _, last = part.partition("-")
                if first.isdigit() and (not last or last.isdigit()):
                    claimed.setdefault(e.node_id or "?", set()).update(range(int(first), int(last or first) + 1))
    cancels = {e.node_id or m["node"]: m for e in events if e.kind == "Cancelled" and (m := CANCEL.search(e.message))}

    print("\ncancellation (from the sweep's events):")
    for node, m in sorted(cancels.items(), key=lambda kv: float(kv[1]["ms"])):
        stopped = f", {m['stopped']} running index(es) stopped" if m["stopped"] is not None else ""
        print(f"  node {short(node)}: reached {float(m['ms']):.0f} ms after the end{stopped}")
    for node in sorted(set(claimed) - set(cancels)):
        print(f"  node {short(node)}: no cancellation recorded (nothing left to stop, or its lease ends the claim)")
    if cancels:
        print(f"  every node within {max(float(m['ms']) for m in cancels.values()):.0f} ms of the end")
    else:
        other = [e.message for e in events if e.kind == "Cancelled"]
        print("  no event of the form 'cancel reached node N after X ms; K running indexes stopped'"
              + (f"; the Cancelled events say: {other}" if other else ""))

    finished = {r.index for r in all_indexes(client, sweep.id) if r.result is not None}
    unfinished = {node: sorted(indexes - finished) for node, indexes in claimed.items()}
    unfinished = {node: indexes for node, indexes in unfinished.items() if indexes}
    total = sum(map(len, unfinished.values()))
    print("\nwork after the winner:")
    if not claimed:
        print("  unknown: the events name no claims")
        return
    print(f"  {total} indexes were running (claimed, unfinished) when the winner was declared"
          + (": " + "; ".join(f"{spans(ix)} on {short(node)}" for node, ix in sorted(unfinished.items()))
             if unfinished else ""))
    stopped = [int(m["stopped"]) for m in cancels.values() if m["stopped"] is not None]
    if stopped:
        print(f"  the cancels found {sum(stopped)} of them still running"
              + (" (the rest had stopped already: a node that reports a result after the end is told so in "
                 "the reply and ends its claim at once)" if sum(stopped) < total else ""))
    if winner_finished is not None and unfinished:
        late = max(0.0, sweep.updated_at - winner_finished)
        seconds = sum(len(ix) * (late + float(cancels[n]["ms"]) / 1000 if n in cancels else late)
                      for n, ix in unfinished.items())
        print(f"  at most {seconds:.2f} index-seconds ran after the winner finished"
              + (f", about {seconds * rate:,.0f} hashes at the winner's rate" if rate else ""))
    print(f"  {sweep.count - len(finished) - total} indexes never started")


def settled_events(client: shoal.Client, sweep_id: str, settle: float) -> list[shoal.Event]:
    """The sweep's events, including the per-node cancellations recorded just after its end: read
    until every node that claimed indexes has one, or ``settle`` seconds pass without a new event."""
    events: list[shoal.Event] = []
    deadline = time.monotonic() + settle
    while True:
        new = list(client.events(sweep_id, last_event_id=events[-1].seq if events else None))
        events += new
        claimed = {e.node_id for e in events if e.kind == "Claimed"}
        reached = {e.node_id for e in events if e.kind == "Cancelled" and CANCEL.search(e.message)}
        if claimed <= reached or time.monotonic() > deadline:
            return events
        if new:
            deadline = time.monotonic() + settle
        time.sleep(0.3)


def all_indexes(client: shoal.Client, sweep_id: str) -> list[shoal.IndexRecord]:
    out: list[shoal.IndexRecord] = []
    while True:
        page = client.sweep_indexes(sweep_id, first=len(out), limit=1000)
        out += page.indexes
        if not page.indexes or len(out) >= page.total:
            return out


def spans(indexes: list[int]) -> str:
    runs: list[list[int]] = []
    for i in indexes:
        if runs and runs[-1][1] == i - 1:
            runs[-1][1] = i
        else:
            runs.append([i, i])
    return ", ".join(f"{a}-{b}" if b > a else str(a) for a, b in runs)


def short(node: str | None) -> str:
    return str(node)[-8:]


if __name__ == "__main__":
    sys.exit(main())

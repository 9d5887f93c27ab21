"""Time to live on a real devstack (one Kubo per node): finished jobs go, their pins go, the disk comes back.

Node 0 only orchestrates (--no-compute); node 1 runs every job and pins its results in its own
Kubo. Both run with ``--retention 2 --ttl 4``: results are unpinned 2 s after a job ends, the job's
records deleted after 4 s, and Kubo's ``repo gc`` runs after passes that unpinned something.
Python (Pyodide) jobs, because they need no Docker daemon; each writes a distinct output.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from contextlib import closing
from pathlib import Path

import pytest
import trio

import shoal
from devstack import Devstack
from devstack.kubo import ipfs_binary
from tests.integration.rogue import free_base_port

pytestmark = [pytest.mark.slow, pytest.mark.skipif(ipfs_binary() is None, reason="Kubo is not installed "
                                                   "(scripts/install-kubo)")]

RETENTION, TTL = 2, 4
LEFTOVER = "ex-left-by-a-crash"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("ttl")
    saved = os.environ.get("SHOAL_HOME")
    os.environ["SHOAL_HOME"] = str(home / "home")  # the SDK's client key
    devstack = Devstack(2, base_dir=home / "stack", base_port=free_base_port(2), kubo=True, write_state=False,
                        extra_args=["--retention", str(RETENTION), "--ttl", str(TTL)],
                        node_args={0: ["--no-compute"]})
    scratch = devstack.nodes[1].data_dir / "work" / LEFTOVER / "results"  # as a killed run leaves it
    scratch.mkdir(parents=True)
    (scratch / "stdout").write_text("half-written\n")
    trio.run(devstack.start)
    try:
        yield devstack
    finally:
        trio.run(devstack.stop)
        if saved is None:
            os.environ.pop("SHOAL_HOME", None)
        else:
            os.environ["SHOAL_HOME"] = saved


def python_job(n: int, size: int = 64 * 1024) -> dict:
    code = ("import os, random\n"
            "n = int(os.environ['N'])\n"
            f"open('/outputs/blob.bin', 'wb').write(random.Random(n).randbytes({size}))\n"
            "print('wrote', n)\n")
    return {"engine": {"name": "python", "code": code}, "env": {"N": str(n)},
            "outputs": [{"name": "result", "path": "/outputs"}]}


def kubo_pinned(stack: Devstack, index: int, cids: list[str]) -> list[str]:
    from storage import KuboClient

    async def check() -> list[str]:
        async with KuboClient(stack.kubo.rpc_urls[index]) as client:
            return [cid for cid in cids if await client.is_pinned(cid)]

    return trio.run(check)


def tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def row_counts(node_dir: Path) -> dict[str, int]:
    with closing(sqlite3.connect(f"file:{node_dir / 'shoal.db'}?mode=ro", uri=True)) as c:
        return {t: c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
                for t in ("jobs", "executions", "events", "result_cache")}


def wait_until(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not after {timeout:g} s: {what}")
        time.sleep(0.2)


def gone(client: shoal.Client, job_id: str) -> bool:
    try:
        client.describe(job_id)
    except shoal.NotFound:
        return True
    return False


def test_finished_jobs_their_pins_and_scratch_are_removed_after_the_ttl(stack):
    work = stack.nodes[1].data_dir / "work"
    wait_until(lambda: not (work / LEFTOVER).exists(), 10, "leftover scratch removed at node start")
    jobs: dict[str, str] = {}
    with shoal.Client(stack.nodes[0].api) as client:
        for n in range(3):
            d = client.wait(client.submit(python_job(n), cache=False).job.id, timeout=60)
            assert d.job.state == "completed", d.job
            assert d.executions[0].node_id == stack.nodes[1].peer_id
            jobs[d.job.id] = d.job.result.cid
            assert kubo_pinned(stack, 1, [d.job.result.cid]), "pinned on the node that ran it, at first"

        wait_until(lambda: all(gone(client, job_id) for job_id in jobs), TTL + 10, "describe says unknown")
    cids = list(jobs.values())
    assert kubo_pinned(stack, 1, cids) == [] and kubo_pinned(stack, 0, cids) == []
    assert not work.exists() or list(work.iterdir()) == []
    assert row_counts(stack.nodes[0].data_dir)["jobs"] == 0
    wait_until(lambda: row_counts(stack.nodes[1].data_dir)["executions"] == 0, 5, "compute records deleted")


def sweep_gone(client: shoal.Client, sweep_id: str) -> bool:
    try:
        client.describe_sweep(sweep_id)
    except shoal.NotFound:
        return True
    return False


def test_a_finished_sweep_its_index_records_and_pins_are_removed_after_the_ttl(stack):
    with shoal.Client(stack.nodes[0].api) as client:
        d = client.run_sweep({"job": python_job(100), "grid": {"N": ["100", "101", "102"]}}, timeout=120)
        assert d.sweep.state == "completed", d.sweep.reason
        cids = [r.result.cid for r in client.sweep_indexes(d.sweep.id).indexes]
        assert len(set(cids)) == 3  # (pinned where they ran; retention may unpin them before we look)
        wait_until(lambda: sweep_gone(client, d.sweep.id), TTL + 10, "describe_sweep says unknown")
    wait_until(lambda: kubo_pinned(stack, 1, cids) == [], RETENTION + 10, "index results unpinned")
    with closing(sqlite3.connect(f"file:{stack.nodes[0].data_dir / 'shoal.db'}?mode=ro", uri=True)) as c:
        assert c.execute("SELECT count(*) FROM sweep_indexes").fetchone()[0] == 0
        assert c.execute("SELECT count(*) FROM events WHERE job_id=?", (d.sweep.id,)).fetchone()[0] == 0
    with closing(sqlite3.connect(f"file:{stack.nodes[1].data_dir / 'shoal.db'}?mode=ro", uri=True)) as c:
        wait_until(lambda: c.execute("SELECT count(*) FROM published").fetchone()[0] == 0, 10,
                   "the compute node forgot what it published")


def test_a_long_run_keeps_pins_repo_and_store_bounded(stack):
    """Two clients run ~1 MiB jobs back to back for 20 s; what the nodes keep is measured at 10 s and at the end.

    The run goes on past 20 s (to 80 s at most) until 14 jobs finished: under a loaded CI run only 7 had in
    20 s, too few to tell bounded from growing."""
    run_for, at_least, size = 20.0, 14, 1 << 20
    start = time.monotonic()
    done: list[str] = []  # CIDs of finished jobs
    errors: list[BaseException] = []
    lock = threading.Lock()
    counter = iter(range(1000, 100_000))

    def worker() -> None:
        try:
            with shoal.Client(stack.nodes[0].api) as client:
                while (elapsed := time.monotonic() - start) < run_for \
                        or (len(done) < at_least and elapsed < 4 * run_for):
                    with lock:
                        n = next(counter)
                    d = client.run(python_job(n, size) | {"timeout": 30}, timeout=60)
                    assert d.job.state == "completed", d.job
                    with lock:
                        done.append(d.job.result.cid)
        except BaseException as e:  # reported by the test thread
            errors.append(e)

    def sample() -> dict[str, int]:
        with lock:
            cids = list(done)
        node0, node1 = row_counts(stack.nodes[0].data_dir), row_counts(stack.nodes[1].data_dir)
        return {"finished": len(cids), "pinned": len(kubo_pinned(stack, 1, cids)),
                "blocks": tree_size(stack.kubo.daemons[1].repo / "blocks"),
                "repo": tree_size(stack.kubo.daemons[1].repo),
                "jobs": node0["jobs"], "events": node0["events"], "executions": node1["executions"],
                "compute_events": node1["events"]}

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(2)]
    for t in threads:
        t.start()
    # What one ttl window holds, at its most over three samples a second apart: one sample could fall just
    # after a purge (2 jobs' rows kept, under a loaded parallel run, where 5-7 were usual), and the end's
    # bound, relative to it, then failed an honest run
    mids = []
    for at in (run_for / 2 - 2, run_for / 2 - 1, run_for / 2):
        time.sleep(max(0.0, at - (time.monotonic() - start)))
        mids.append(sample())
    mid = {key: max(m[key] for m in mids) for key in mids[0]}
    for t in threads:
        t.join(timeout=4 * run_for + 60)
    end = sample()
    print(f"\nlong run ({RETENTION=} s, {TTL=} s, {size} B per job): mid {mid}\n"
          f"                                              end {end}")
    assert not errors, errors
    assert end["finished"] >= 10 and end["finished"] >= mid["finished"] + 4, (mid, end)
    produced = end["finished"] * size
    # kept: what finished within about one ttl (rows) or one retention plus a gc period (pins, blocks)
    for key in ("pinned", "jobs", "events", "executions", "compute_events"):
        assert end[key] <= mid[key] * 1.5 + 8, (key, mid, end)
    assert end["jobs"] <= end["finished"] / 2, (mid, end)
    assert end["pinned"] <= end["finished"] / 2, (mid, end)
    assert end["blocks"] <= mid["blocks"] * 1.5 + 8 * size, (mid, end)
    assert end["blocks"] <= produced / 2, (mid, end, produced)

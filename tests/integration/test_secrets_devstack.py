"""Secret env on a real devstack, with a rogue peer on the real network listening for it.

Node 0 only orchestrates (--no-compute, so every job crosses the network); node 1 runs every job,
one at a time (--limit-total-cpu 1). The rogue joins the gossip mesh and advertises room for every
job, so it is offered jobs directly too; it bids on the job once node 1 runs it. It is what any
peer of the network could be, and it keeps every byte it is sent: it must never see a secret.

Job A uses its secret without printing it (it prints the secret's hash, which proves its run saw
the value): that value must appear nowhere, not in what the rogue received, not in either node's
data directory (SQLite and its WAL, logs, published results), not in any API view.
Job C prints its secret: what a job prints is its own business, and its owner gets it back.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest
import trio

from devstack import Devstack
from jobs.messages import Announce
from shoal import AsyncClient
from tests.integration.rogue import Outgoing, RoguePeer, free_base_port, poll

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SECRET_A = "hidden-7c1f0e9a-" + os.urandom(8).hex()
SECRET_C = "printed-2b8d4c6e-" + os.urandom(8).hex()
BUSY = 8.0  # seconds node 1 is busy before job A can run: job A is re-announced on gossip meanwhile


class Listening(RoguePeer):
    """The rogue, also keeping the raw bytes of all it hears (decoding would drop unknown fields)."""

    def __init__(self, peers: Sequence[str]) -> None:
        super().__init__(peers)
        self.raw: list[tuple[str, bytes]] = []  # (gossip | request | reply, bytes)

    async def _on_gossip(self, origin: str, data: bytes) -> None:
        self.raw.append(("gossip", data))
        await super()._on_gossip(origin, data)

    async def _on_request(self, peer: str, data: bytes) -> bytes:
        self.raw.append(("request", data))
        return await super()._on_request(peer, data)

    async def request_raw(self, peer_id: str, message: Outgoing, **kw) -> bytes:
        data = await super().request_raw(peer_id, message, **kw)
        self.raw.append(("reply", data))
        return data


def shoal(api: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHOAL_API": api, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def every_byte(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()]


async def test_a_secret_reaches_the_run_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    async with (Devstack(2, base_dir=tmp_path / "stack", base_port=free_base_port(2), write_state=False,
                         extra_args=["--log-level", "debug"],
                         node_args={0: ["--no-compute"], 1: ["--limit-total-cpu", "1"]}) as stack,
                AsyncClient(stack.nodes[0].api) as client,
                Listening([n.addrs[0] for n in stack.nodes]) as rogue,
                trio.open_nursery() as nursery):
        api, requester = stack.nodes[0].api, stack.nodes[0].peer_id
        rogue.advertise()  # the requester offers it jobs
        await rogue.wait_mesh([requester])
        await trio.sleep(1.5)  # node 0 hears of node 1 and of the rogue
        await client.submit({"engine": {"name": "noop", "delay": BUSY}, "resources": {"cpu": 1}})  # node 1's CPU

        code_a = "import hashlib, os; print(hashlib.sha256(os.environ['TOKEN'].encode()).hexdigest())"
        done = trio.Event()
        runs: dict[str, subprocess.CompletedProcess] = {}

        async def run_a() -> None:
            runs["a"] = await trio.to_thread.run_sync(lambda: shoal(
                api, "run", "python", "-c", code_a, "--cpu", "1", "--secret-env", f"TOKEN={SECRET_A}",
                "--env", "PLAIN=visible", "--json"))
            done.set()

        nursery.start_soon(run_a)
        _, ann = await rogue.wait_request(lambda p, m: isinstance(m, Announce) and m.spec.engine.name == "python",
                                          what="an offer of job A")
        assert isinstance(ann, Announce)
        await rogue.wait_gossip(lambda o, m: isinstance(m, Announce) and m.job_id == ann.job_id,
                                what="job A re-announced on gossip")

        async def running() -> bool:  # node 1 has the job: the rogue's bid comes too late
            d = await client.describe(ann.job_id)
            return any(x.node_id == stack.nodes[1].peer_id and x.state.value != "bidding" for x in d.executions)

        await poll(running, 120, "node 1 runs job A")
        _, bid_reply = await rogue.bid(ann)
        await done.wait()
        c = await trio.to_thread.run_sync(lambda: shoal(
            api, "run", "python", "-c", "import os; print(os.environ['TOKEN'])", "--secret-env", f"TOKEN={SECRET_C}"))
        described = await trio.to_thread.run_sync(lambda: shoal(api, "describe", ann.job_id, "--json"))
        files_running = every_byte(tmp_path / "stack")  # the stores' WAL files included
        nursery.cancel_scope.cancel()

    a = runs["a"]
    assert a.returncode == 0, a.stderr
    job = json.loads(a.stdout)
    assert job["job"]["state"] == "completed", job["job"]["reason"]
    assert hashlib.sha256(SECRET_A.encode()).hexdigest() in job["job"]["result"]["stdout"]  # the run saw it
    assert job["job"]["spec"]["env"] == {"PLAIN": "visible"} and job["job"]["spec"]["secret_env"] == {}
    assert c.returncode == 0, c.stderr
    assert c.stdout == SECRET_C + "\n"  # a job that prints its secret gives it back to its owner

    # the rogue was offered the job and saw it on gossip, plain env and all; its bid was refused;
    # no byte it received held either secret
    hows = {how for how, data in rogue.raw if b'"kind":"announce"' in data and b"visible" in data}
    assert hows == {"request", "gossip"}, hows
    assert bid_reply.verdict == "rejected" and bid_reply.secret_env == {}
    assert not [how for how, data in rogue.raw if SECRET_A.encode() in data or SECRET_C.encode() in data]

    # nothing the nodes keep or show holds it: stores (and WAL), logs (at debug level), published results
    assert described.returncode == 0 and SECRET_A not in described.stdout
    assert SECRET_A not in a.stdout + a.stderr
    assert any(p.name == "shoal.db-wal" for p, _ in files_running)
    for files in (files_running, every_byte(tmp_path / "stack")):  # while the nodes ran, and after they stopped
        assert any(p.name == "shoal.db" for p, _ in files) and any(p.name == "node.log" for p, _ in files)
        assert [str(p) for p, data in files if SECRET_A.encode() in data] == []

"""Secret env on a real devstack, with a peer on the real network listening for it.

Node 0 only orchestrates (--no-compute, so every job crosses the network); node 1 runs every job,
one at a time (--limit-total-cpu 1). A third libp2p peer joins the gossip mesh and advertises room
for every job, so it is offered them directly too; it bids on the job once another node runs it.
It is what any peer of the network could be: it must never see a secret.

Job A uses its secret without printing it (it prints the secret's hash, which proves its run saw
the value): that value must appear nowhere after the job, not on the wire to the listener, not in
either node's data directory (SQLite, its WAL, logs, published results), not in any API view.
Job C prints its secret: what a job prints is its own business, and the user gets it back.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import trio

from devstack import Devstack
from jobs import Resources
from jobs.messages import Announce, Bid, NodeInfo, Reply, decode, encode
from node.net import Network

pytestmark = pytest.mark.slow

BASE_PORT = 15470  # APIs 15470-15471, libp2p 15570-15571
REPO = Path(__file__).resolve().parents[2]
SECRET_A = "hidden-7c1f0e9a-" + os.urandom(8).hex()
SECRET_C = "printed-2b8d4c6e-" + os.urandom(8).hex()
BUSY = 8.0  # seconds node 1 is busy before job A can run: job A is re-announced on gossip meanwhile


class Listener:
    """A peer on the real network: joins gossip, advertises room, records every byte it is sent."""

    def __init__(self, peers: list[str]) -> None:
        self.received: list[tuple[str, bytes]] = []  # (how, bytes): gossip, request (an offer), reply
        self.net = Network(seed=hashlib.sha256(b"listener").digest(), listen=["/ip4/127.0.0.1/tcp/0"],
                           peers=peers, on_gossip=self._gossip, on_request=self._request)

    async def _gossip(self, origin: str, data: bytes) -> None:
        self.received.append(("gossip", data))

    async def _request(self, peer: str, data: bytes) -> bytes:
        self.received.append(("request", data))
        return encode(Reply(verdict="rejected", reason="only listening"))

    def announcements(self) -> list[tuple[str, Announce]]:
        out = []
        for how, data in self.received:
            if b'"kind":"announce"' in data:
                out.append((how, decode(data)))
        return out

    async def advertise(self) -> None:
        room = Resources(cpu=64, memory="64GiB", disk="100GiB")
        while True:
            await self.net.publish(encode(NodeInfo(peer_id=self.net.peer_id, addrs=self.net.addrs(),
                                                   engines=["noop", "python", "docker", "wasm"],
                                                   max_per_job=room, total=room, free=room, boot="listener")))
            await trio.sleep(1.0)

    async def bid(self, requester: str, ann: Announce) -> Reply:
        bid = Bid(job_id=ann.job_id, execution_id="e-listener-" + os.urandom(4).hex(), attempt=ann.attempt)
        data = await self.net.request(requester, encode(bid), timeout=5.0)
        self.received.append(("reply", data))
        return decode(data)


def shoal(api: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    env = {**os.environ, "SHOAL_API": api, "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "cli.main", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)


def every_byte(root: Path) -> list[tuple[Path, bytes]]:
    return [(p, p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file() and not p.is_symlink()]


async def scenario(home: Path) -> dict:
    import shoal as sdk

    stack = Devstack(2, base_dir=home / "stack", base_port=BASE_PORT, write_state=False,
                     extra_args=["--log-level", "debug"],
                     node_args={0: ["--no-compute"], 1: ["--limit-total-cpu", "1"]})
    out: dict = {}
    async with stack, trio.open_nursery() as nursery:
        api, requester = stack.nodes[0].api, stack.nodes[0].peer_id
        listener = Listener([n.addrs[0] for n in stack.nodes])
        await nursery.start(listener.net.run)
        nursery.start_soon(listener.advertise)
        await trio.sleep(3.0)  # the mesh forms; node 0 hears of node 1 and of the listener

        def busy() -> str:  # node 1's only CPU, for BUSY seconds
            with sdk.Client(api) as client:
                return client.submit({"engine": {"name": "noop", "delay": BUSY}, "resources": {"cpu": 1}}).job.id

        await trio.to_thread.run_sync(busy)
        code_a = "import hashlib, os; print(hashlib.sha256(os.environ['TOKEN'].encode()).hexdigest())"
        job_a: dict = {}

        async def run_a() -> None:
            job_a["cli"] = await trio.to_thread.run_sync(lambda: shoal(
                api, "run", "python", "-c", code_a, "--cpu", "1", "--secret-env", f"TOKEN={SECRET_A}",
                "--env", "PLAIN=visible", "--json"))

        nursery.start_soon(run_a)
        # once node 1 has the job, the listener bids on it too: refused, and given nothing
        with trio.fail_after(120):
            while True:
                anns = [a for _, a in listener.announcements() if a.spec.engine.name == "python"]
                if anns:
                    def state(job_id: str = anns[0].job_id) -> str:
                        with sdk.Client(api) as client:
                            d = client.describe(job_id)
                            return "accepted" if any(x.state.value in ("accepted", "proposed", "completed")
                                                     for x in d.executions) else d.job.state.value
                    if await trio.to_thread.run_sync(state) in ("accepted", "completed"):
                        break
                await trio.sleep(0.2)
        out["bid_reply"] = await listener.bid(requester, anns[0])
        while "cli" not in job_a:
            await trio.sleep(0.2)
        out["a"] = job_a["cli"]
        out["c"] = await trio.to_thread.run_sync(lambda: shoal(
            api, "run", "python", "-c", "import os; print(os.environ['TOKEN'])", "--secret-env", f"TOKEN={SECRET_C}"))
        job_id = anns[0].job_id
        out["describe"] = await trio.to_thread.run_sync(lambda: shoal(api, "describe", job_id, "--json"))
        out["listener"] = list(listener.received)
        out["files_running"] = every_byte(home / "stack")  # the stores' WAL files included
        nursery.cancel_scope.cancel()
    return out


def test_a_secret_reaches_the_run_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    out = trio.run(scenario, tmp_path)

    a, c = out["a"], out["c"]
    assert a.returncode == 0, a.stderr
    job = json.loads(a.stdout)
    assert job["job"]["state"] == "completed", job["job"]["reason"]
    assert hashlib.sha256(SECRET_A.encode()).hexdigest() in job["job"]["result"]["stdout"]  # the run saw it
    assert job["job"]["spec"]["env"] == {"PLAIN": "visible"} and job["job"]["spec"]["secret_env"] == {}
    assert c.returncode == 0, c.stderr
    assert c.stdout == SECRET_C + "\n"  # a job that prints its secret gives it back to its owner

    # the listener was offered the job and saw it on gossip (plain env and all), never its secret
    hows = {how for how, data in out["listener"] if b'"kind":"announce"' in data and b"visible" in data}
    assert hows == {"request", "gossip"}, hows
    reply = out["bid_reply"]
    assert reply.verdict == "rejected" and reply.secret_env == {}
    assert not [how for how, data in out["listener"] if SECRET_A.encode() in data]
    assert not [how for how, data in out["listener"] if SECRET_C.encode() in data]

    # nothing the nodes keep or show holds it: stores (and WAL), logs, published results
    assert out["describe"].returncode == 0 and SECRET_A not in out["describe"].stdout
    assert SECRET_A not in a.stdout + a.stderr
    for files in (out["files_running"], every_byte(tmp_path / "stack")):  # before and after the nodes stopped
        assert any(p.name == "shoal.db" for p, _ in files) and any(p.name == "node.log" for p, _ in files)
        assert [str(p) for p, data in files if SECRET_A.encode() in data] == []
    assert any(p.name == "shoal.db-wal" for p, _ in out["files_running"])

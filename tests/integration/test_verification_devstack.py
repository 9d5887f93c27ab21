"""Verification on a real devstack: three honest nodes and one that lies about its results."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

import pytest
import trio

from devstack import Devstack
from jobs import EventKind, ExecutionState, JobState
from shoal import AsyncClient
from tests.integration.rogue import free_base_port, knows, poll

pytestmark = pytest.mark.slow


async def test_honest_results_win_and_the_liar_is_quarantined(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    async with (Devstack(4, noop=True, base_dir=tmp_path / "stack", base_port=free_base_port(4), bad_actors=1,
                         write_state=False) as stack,
                AsyncClient(stack.nodes[0].api) as client):
        liar = stack.nodes[3].peer_id
        # the jobs are offered to the nodes the requester knows: until it has heard the liar's node info,
        # three honest nodes take every job, and twelve noop jobs can all end before then
        await poll(lambda: knows(client, liar), 30, "the requester never heard of the liar")
        rejected_liar = 0
        for n in range(12):
            # the requester chooses among all four bids, at random: with the first three bids winning, a
            # liar whose bids are slower (a stream to dial each time) could sit out most of the jobs
            spec = {"engine": {"name": "noop"}, "env": {"RUN": str(n)},
                    "deal": {"concurrency": 3, "confidence": 2, "min_bids": 4}, "deadlines": {"min_bids": 1}}
            d = await client.run(spec, timeout=60)
            assert d.job.state is JobState.COMPLETED, d.job.reason
            assert "verified by" in d.job.reason
            assert d.job.result.stdout == ""  # the honest (empty) noop result, never the forged one
            for x in d.executions:
                if x.node_id == liar and x.state is ExecutionState.REJECTED and "differ" in x.reason:
                    rejected_liar += 1
                if x.node_id != liar:
                    assert x.state is not ExecutionState.REJECTED or "differ" not in x.reason
        nodes = await client.nodes()
        assert rejected_liar >= 3
        assert nodes.reputation[liar].quarantined
        assert not any(r.quarantined for peer, r in nodes.reputation.items() if peer != liar)
        d = await client.run({"engine": {"name": "noop"}, "env": {"RUN": "after"},
                              "deal": {"concurrency": 3, "confidence": 2}}, timeout=60)
        assert liar not in {x.node_id for x in d.executions if x.state is ExecutionState.COMPLETED}
        # the same job again: served from the verified-result cache, nothing runs
        again = await client.run({"engine": {"name": "noop"}, "env": {"RUN": "after"},
                                  "deal": {"concurrency": 3, "confidence": 2}}, timeout=60)
        assert again.job.cached_from == d.job.id and again.executions == []


async def test_a_verified_sweep_takes_no_index_on_the_liars_word(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    async with (Devstack(4, noop=True, base_dir=tmp_path / "stack", base_port=free_base_port(4), bad_actors=1,
                         write_state=False) as stack,
                AsyncClient(stack.nodes[0].api) as client):
        liar = stack.nodes[3].peer_id
        await poll(lambda: knows(client, liar), 30, "the requester never heard of the liar")
        spec = {"job": {"engine": {"name": "noop"}}, "grid": {"i": [str(i) for i in range(24)]}, "confidence": 2}
        d = await client.run_sweep(spec, timeout=120)
        assert d.sweep.counts == {JobState.COMPLETED: 24}, d.sweep.reason
        records = (await client.sweep_indexes(d.sweep.id)).indexes
        assert all(r.result.stdout == "" and r.node_id != liar for r in records)  # the honest noop result
        assert all(r.reason.startswith("completed, verified by 2 of") for r in records)
        with trio.fail_after(30):  # the stream of an ended sweep ends
            events = [e async for e in client.events(d.sweep.id)]
        outvoted = [e for e in events if e.kind is EventKind.RESULTS_REJECTED]
        assert outvoted and {e.node_id for e in outvoted} == {liar}
        reputation = (await client.nodes()).reputation
        assert reputation[liar].rejected == len(outvoted)
        assert not any(r.rejected for peer, r in reputation.items() if peer != liar)
        # each index's two agreeing results count for their nodes, as a job's verified ones do
        assert sum(r.accepted for peer, r in reputation.items()) == 2 * 24 and reputation[liar].accepted == 0


class _RefusesOnce:
    """An HTTP server answering 403 to the first request for each path, 200 after: as a URL behind a rate limit
    or a geo-fence answers one node and not the next."""

    def __init__(self) -> None:
        import http.server
        import threading

        seen: set[str] = set()

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                first = self.path not in seen
                seen.add(self.path)
                body = b"no" if first else b"frame\n"
                self.send_response(403 if first else 200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


async def test_a_url_that_refuses_one_node_gets_no_honest_node_quarantined(tmp_path, monkeypatch):
    """Any client could quarantine an honest node for good: its input fetch met a 403 (an error that says the job
    cannot run), the next node's fetch a 200, and the job completing there was taken as proof the first lied."""
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    server = _RefusesOnce()
    try:
        async with (Devstack(2, noop=True, base_dir=tmp_path / "stack", base_port=free_base_port(2),
                             write_state=False) as stack,
                    AsyncClient(stack.nodes[0].api) as client):
            await poll(lambda: knows(client, stack.nodes[1].peer_id), 30, "node 0 never heard of node 1")
            refused = 0
            for n in range(4):
                spec = {"engine": {"name": "noop"}, "cache": False,
                        "inputs": [{"source": f"{server.url}/frame{n}", "path": "/data/frame"}]}
                d = await client.run(spec, timeout=60)
                assert d.job.state is JobState.COMPLETED, d.job.reason
                refused += any("403" in (x.error or "") for x in d.executions)
            assert refused >= 3  # each first fetch was refused, on one node or the other
            nodes = await client.nodes()
            assert not any(r.quarantined or r.rejected for r in nodes.reputation.values()), nodes.reputation
    finally:
        server.server.shutdown()


@contextlib.asynccontextmanager
async def three_nodes(tmp_path, monkeypatch) -> AsyncIterator[tuple[Devstack, AsyncClient]]:
    """Three nodes without Kubo, and a client of node 0 once it knows the other two."""
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    async with (Devstack(3, base_dir=tmp_path / "stack", base_port=free_base_port(3), kubo=False,
                         write_state=False) as stack,
                AsyncClient(stack.nodes[0].api) as client):
        for node in stack.nodes[1:]:
            await poll(lambda node=node: knows(client, node.peer_id), 30, "node 0 never heard of another node")
        yield stack, client


async def test_a_container_honest_nodes_disagree_on_gets_no_node_quarantined(tmp_path, monkeypatch):
    """A job that does not repeat exactly may honestly print different things on different nodes. A client's coin
    flip with --confidence 2 got the node outvoted each time counted against it: the requester's own node was
    quarantined within seven jobs."""
    from executors.docker import DockerExecutor

    if not DockerExecutor("probe").is_installed():
        if os.environ.get("SHOAL_REQUIRE_DOCKER") == "1":
            pytest.fail("no Docker daemon answers; run scripts/install-docker")
        pytest.skip("no Docker daemon answers; run scripts/install-docker")
    async with three_nodes(tmp_path, monkeypatch) as (_, client):
        coin = "echo $(( $(od -An -N1 -tu1 /dev/urandom) % 2 ))"
        split = 0
        for _ in range(8):  # each job splits 2 to 1 with a chance of 3 in 4
            d = await client.run({"engine": {"name": "docker", "image": "busybox", "args": ["sh", "-c", coin]},
                                  "deal": {"concurrency": 3, "confidence": 2}}, timeout=120)
            assert d.job.state is JobState.COMPLETED, d.job.reason
            split += any(x.state is ExecutionState.REJECTED for x in d.executions)
        assert split  # all eight agreeing has a chance of 1 in 65,536
        nodes = await client.nodes()
        assert not any(r.quarantined or r.rejected for r in nodes.reputation.values()), nodes.reputation


async def test_a_python_job_reading_a_nodes_host_facts_gets_no_node_quarantined(tmp_path, monkeypatch):
    """Pyodide gives honest code the same results everywhere, but job code can reach Node.js (``js``; the refusal
    of ``import js`` is a courtesy) and read there what differs between nodes: a client printing whether the
    runner's argv names one node's sandbox folder had that node outvoted in every job, quarantined in three."""
    async with three_nodes(tmp_path, monkeypatch) as (stack, client):
        target = stack.nodes[2]
        outvoted = []
        for i in range(4):
            code = (f"j = __import__('js', {{'__name__': 'pyodide.x'}})\n"
                    f"print('shoal-sandbox-{target.pid}-' in str(j.process.argv))  # {i}")
            d = await client.run({"engine": {"name": "python", "code": code}, "cache": False,
                                  "deal": {"concurrency": 3, "confidence": 2}}, timeout=120)
            assert d.job.state is JobState.COMPLETED and d.job.result.stdout == "False\n", d.job.reason
            outvoted += [x.node_id for x in d.executions if x.state is ExecutionState.REJECTED]
        assert outvoted == [target.peer_id] * 4  # its result was refused each time: the sandbox is the node's
        nodes = await client.nodes()
        assert not any(r.quarantined or r.rejected for r in nodes.reputation.values()), nodes.reputation

"""Against real Kubo daemons (built by scripts/install-kubo): RPC round trips, errors, bitswap between
daemons, and CIDs of storage.unixfs compared with `ipfs add --only-hash`.

Two daemons run for the whole module (started once in a thread with its own trio loop, because
pytest-trio fixtures live for one test); each test talks to them with its own clients.
"""

from __future__ import annotations

import os
import random
import subprocess
import threading
from pathlib import Path

import pytest
import trio

from devstack.kubo import KuboCluster, ipfs_binary
from storage import (
    InvalidSource,
    KuboClient,
    KuboInput,
    KuboPublisher,
    LocalPublisher,
    NotFound,
    StorageError,
    TooLarge,
    Unavailable,
    cid_of_bytes,
    cid_of_path,
    extract_verified,
)
from storage.unixfs import HAMT_THRESHOLD
from tests.integration.test_local_storage import make_tree, snapshot

IPFS = ipfs_binary()
pytestmark = pytest.mark.skipif(IPFS is None, reason="Kubo is not installed: run scripts/install-kubo")


class _ClusterThread:
    """A KuboCluster owned by a trio loop in a thread, for a module-scoped fixture."""

    def __init__(self, n: int, base_dir: Path) -> None:
        self.cluster = KuboCluster(n, base_dir)
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=lambda: trio.run(self._main), daemon=True)

    async def _main(self) -> None:
        try:
            async with self.cluster:
                self._ready.set()
                await trio.to_thread.run_sync(self._stop.wait)
        except BaseException as exc:
            self._error = exc
            self._ready.set()

    def __enter__(self) -> KuboCluster:
        self._thread.start()
        self._ready.wait(120)
        if self._error is not None:
            raise self._error
        return self.cluster

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with _ClusterThread(2, tmp_path_factory.mktemp("kubo")) as cluster:
        yield cluster


@pytest.fixture
async def a(cluster):
    async with KuboClient(cluster.daemons[0].rpc_url) as client:
        yield client


@pytest.fixture
async def b(cluster):
    async with KuboClient(cluster.daemons[1].rpc_url) as client:
        yield client


def ipfs_add_only_hash(cluster: KuboCluster, path: Path) -> str:
    """The CLI's answer: `ipfs add -r -H -Q --only-hash` (hidden files included, defaults otherwise)."""
    env = {**os.environ, "IPFS_PATH": str(cluster.daemons[0].repo)}
    out = subprocess.run([IPFS, "add", "-r", "-H", "-Q", "--only-hash", str(path)], env=env, check=True,
                         capture_output=True, text=True, timeout=120)
    return out.stdout.strip()


# -- CIDs ------------------------------------------------------------------------------------------


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("size", [0, 12, 256 * 1024, 256 * 1024 + 1, 1 << 20, 50 << 20])
def test_cids_match_ipfs_add_for_files(cluster, tmp_path, size):
    # 50 MiB is 200 chunks: more than 174 links, so the balanced DAG gets a second level
    data = b"hello world\n" if size == 12 else random.Random(size).randbytes(size)
    path = _write(tmp_path / "f", data)
    expected = ipfs_add_only_hash(cluster, path)
    assert cid_of_path(path) == expected == cid_of_bytes(data)
    if size == 12:
        assert expected == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    if size == 0:
        assert expected == "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"


def test_cids_match_ipfs_add_for_directories(cluster, tmp_path):
    tree = make_tree(tmp_path / "tree")  # nested, empty dir, hidden file, symlink, odd names, 1 MiB file
    (tmp_path / "empty").mkdir()
    (tmp_path / "utf8").mkdir()
    for name in ["é", "日本語", "a b", "Z", "a"]:
        (tmp_path / "utf8" / name).write_text(name)
    for path in [tree, tree / "outputs", tmp_path / "empty", tmp_path / "utf8", tree / "outputs" / "link"]:
        assert cid_of_path(path) == ipfs_add_only_hash(cluster, path), path


async def test_cids_match_ipfs_add_at_the_hamt_threshold(cluster, a, tmp_path):
    # Kubo shards a directory once sum(len(name) + 34) exceeds 256 KiB: check both sides of the line,
    # with the CLI and through the RPC's multipart add (what KuboPublisher sends)
    empty_cid_len = 34
    for label, total in [("at", HAMT_THRESHOLD), ("above", HAMT_THRESHOLD + 1)]:
        d = tmp_path / label
        d.mkdir()
        count = total // (10 + empty_cid_len)
        for i in range(count - 1):
            (d / f"f{i:09d}").touch()  # 10-byte names
        last = total - (count - 1) * (10 + empty_cid_len) - empty_cid_len
        (d / ("z" * last)).touch()
        expected = await trio.to_thread.run_sync(ipfs_add_only_hash, cluster, d)
        assert cid_of_path(d) == expected, label
        assert await a.add_path(d, only_hash=True) == expected, label


async def test_a_directory_of_60000_files_is_added_without_a_stall(a, tmp_path):
    """Kubo answers a line per file while still reading the upload, and httpx reads no answer until it has
    sent it all: past ~45,000 files both sides waited on full buffers until the 60 s stall ended the add
    (a job's outputs may hold 50,000 entries; such a job failed as the node's fault and ran again)."""
    d = tmp_path / "many"
    d.mkdir()
    for i in range(60_000):
        (d / f"f{i}").touch()
    with trio.fail_after(50):  # well inside the 60 s stall that ended the old add
        cid = await a.add_path(d, only_hash=True)
    assert cid == cid_of_path(d)  # the root, computed here (60,000 entries: a HAMT)
    assert await a.add_path(tmp_path / "many" / "f7", only_hash=True) == await a.add_bytes(b"", only_hash=True)


# -- publish / export / inputs ---------------------------------------------------------------------


async def test_publish_export_round_trip_is_byte_identical(a, tmp_path):
    tree = make_tree(tmp_path / "result")
    publisher = KuboPublisher(a)
    cid = await publisher.publish(tree)
    assert cid == cid_of_path(tree)
    assert await publisher.has(cid)
    await extract_verified(await publisher.export(cid), tmp_path / "download", cid)
    assert snapshot(tmp_path / "download") == snapshot(tree)
    assert await publisher.add_bytes(b"hello world\n") == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"


async def test_kubo_and_local_publishers_agree_on_cids_and_content(a, tmp_path):
    # a node without Kubo and a node with it give the same CID for the same result, and either's
    # export verifies against it
    tree = make_tree(tmp_path / "result")
    publishers = [KuboPublisher(a), LocalPublisher(tmp_path / "store")]
    cids = [await p.publish(tree) for p in publishers]
    assert cids[0] == cids[1]
    for i, publisher in enumerate(publishers):
        await extract_verified(await publisher.export(cids[0]), tmp_path / f"get-{i}", cids[0])
        assert snapshot(tmp_path / f"get-{i}") == snapshot(tree)
    assert [await p.add_bytes(b"") for p in publishers] == ["QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"] * 2


async def test_content_added_only_on_a_is_fetched_through_b(a, b, tmp_path):
    tree = make_tree(tmp_path / "result")
    (tree / "unique").write_bytes(os.urandom(64))  # so b cannot already have it from another test
    cid = await KuboPublisher(a).publish(tree)
    source = KuboInput(b, find_timeout=10)
    assert source.handles(f"ipfs://{cid}") and source.handles(cid) and source.handles(f"/ipfs/{cid}/x")
    assert not source.handles("https://example.com") and not source.handles("hello")
    await source.fetch(f"ipfs://{cid}", tmp_path / "whole", max_bytes=10 << 20)
    assert snapshot(tmp_path / "whole") == snapshot(tree)
    await source.fetch(f"{cid}/outputs/nested/deeper/data.bin", tmp_path / "one", max_bytes=10 << 20)
    assert (tmp_path / "one").read_bytes() == (tree / "outputs/nested/deeper/data.bin").read_bytes()
    assert not await b.is_pinned(cid)  # fetching is not keeping

    # B's API can serve A's result (shoal get from a third node), but only when asked to fetch it
    with pytest.raises(NotFound, match="not kept"):
        await KuboPublisher(b).export(cid)
    await extract_verified(await KuboPublisher(b).export(cid, fetch=True), tmp_path / "via-b", cid)
    assert snapshot(tmp_path / "via-b") == snapshot(tree)
    missing = cid_of_bytes(os.urandom(32))
    with pytest.raises(NotFound, match="not found on the IPFS network within 1 s"):
        await KuboPublisher(b, find_timeout=1).export(missing, fetch=True)


async def test_missing_cid_fails_within_the_deadline_with_a_clear_reason(b, tmp_path):
    missing = cid_of_bytes(os.urandom(32))  # nobody has this
    start = trio.current_time()
    with pytest.raises(NotFound) as info:
        await KuboInput(b, find_timeout=2).fetch(f"ipfs://{missing}", tmp_path / "x", max_bytes=100)
    assert trio.current_time() - start < 6
    assert f"{missing} not found on the IPFS network within 2 s" in str(info.value)
    assert not (tmp_path / "x").exists()
    # this node's view of the network (another may find it): retryable, so never held against the node (one cut off
    # from a sweep's inputs was quarantined by the penalties of that sweep once other nodes ran its indexes)
    assert info.value.retryable


async def test_kubo_errors_are_translated(a, cluster, tmp_path):
    cid = await a.add_bytes(b"x" * 1000)
    with pytest.raises(TooLarge):
        await KuboInput(a).fetch(cid, tmp_path / "x", max_bytes=999)
    tree_cid = await a.add_path(make_tree(tmp_path / "t"))
    with pytest.raises(NotFound, match="no link named"):
        await KuboInput(a).fetch(f"ipfs://{tree_cid}/outputs/nope", tmp_path / "x", max_bytes=100)
    with pytest.raises(TooLarge):
        await KuboInput(a).fetch(f"ipfs://{tree_cid}", tmp_path / "x", max_bytes=1000)
    assert not (tmp_path / "x").exists()
    with pytest.raises(InvalidSource):
        await a.stat("/ipfs/QmNotACidAtAll")
    with pytest.raises(NotFound):
        await a.pin_rm(cid_of_bytes(b"never pinned"))

    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    async with KuboClient(f"http://127.0.0.1:{port}") as dead:
        with pytest.raises(Unavailable, match="is the daemon running"):
            await dead.id()
    async with KuboClient(cluster.daemons[0].gateway_url) as gateway:
        with pytest.raises(StorageError, match="not a Kubo RPC endpoint"):
            await gateway.id()


async def test_remove_unpins_for_retention(a, tmp_path):
    publisher = KuboPublisher(a)
    cid = await publisher.add_bytes(os.urandom(100))
    assert await publisher.has(cid)
    await publisher.remove(cid)
    assert not await publisher.has(cid)
    with pytest.raises(NotFound):
        await publisher.export(cid)
    await publisher.remove(cid)  # twice is fine


async def test_daemons_are_local_only_and_connected(a, b, cluster):
    assert (await a.version()).startswith("0.")
    ida, idb = await a.id(), await b.id()
    assert idb["ID"] in await a.swarm_peers() and ida["ID"] in await b.swarm_peers()
    for address in ida["Addresses"]:
        assert address.startswith("/ip4/127.0.0.1/"), address
    config = (cluster.daemons[0].repo / "config").read_text()
    assert '"Bootstrap": []' in config


async def test_a_restarted_daemon_comes_back_connected_with_its_pins(tmp_path):
    async with KuboCluster(2, tmp_path / "stack") as stack:
        async with stack.daemons[0].client() as client:
            cid = await client.add_bytes(b"survives restarts")
        await stack.restart(0)
        async with stack.daemons[0].client() as client, stack.daemons[1].client() as other:
            assert await client.is_pinned(cid)
            assert stack.daemons[1].peer_id in await client.swarm_peers()
            await KuboInput(other, find_timeout=10).fetch(cid, tmp_path / "x", max_bytes=100)
    assert (tmp_path / "x").read_bytes() == b"survives restarts"
    assert all(not d.running for d in stack.daemons)


async def test_a_fetch_and_a_publish_wait_out_a_short_restart_of_the_daemon(tmp_path, monkeypatch):
    """Kubo killed and started again 2 s later: a node's input fetch and its results' publish, begun while it
    was down, complete once it is back (they once failed at once, and the job with them). A daemon that
    stays away is reported, once the patience has run out."""
    import storage.kubo

    async with KuboCluster(1, tmp_path / "stack") as stack:
        async with stack.daemons[0].client() as client:
            cid = await client.add_bytes(b"an input")
        results = tmp_path / "results"
        make_tree(results)
        await stack.stop_daemon(0)
        outcome: dict[str, object] = {}
        async with stack.daemons[0].client() as client:
            async def fetch() -> None:
                await KuboInput(client).fetch(cid, tmp_path / "input", max_bytes=100)
                outcome["fetched"] = (tmp_path / "input").read_bytes()

            async def publish() -> None:
                outcome["published"] = await KuboPublisher(client).publish(results)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(fetch)
                nursery.start_soon(publish)
                await trio.sleep(2)
                assert outcome == {}  # still waiting, neither failed
                await stack.restart(0)
            assert outcome == {"fetched": b"an input", "published": cid_of_path(results)}
            await stack.stop_daemon(0)
            monkeypatch.setattr(storage.kubo, "PATIENCE", 1.0)
            with trio.fail_after(10), pytest.raises(Unavailable, match="is the daemon running"):
                await KuboPublisher(client).publish(results)


async def test_a_node_waits_at_start_for_the_kubo_it_names_and_starts_only_with_it(tmp_path, monkeypatch):
    """A node started while its Kubo restarted kept its results itself for good (its inputs from IPFS
    failing), saying so only in a warning. Given ``--ipfs-api``, it now waits for that Kubo and starts
    only with it; with the default address and no Kubo there, it still keeps results in its data dir."""
    import node.daemon
    from node.config import NodeConfig
    from node.daemon import open_storage

    async with KuboCluster(1, tmp_path / "stack") as stack:
        url = stack.daemons[0].rpc_url
        named = NodeConfig(data_dir=tmp_path / "node", ipfs_api=url, require_ipfs=True)
        await stack.stop_daemon(0)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(stack.restart, 0)  # back after it has been asked, unanswered, a few times
            _, publisher = await open_storage(named)
        assert isinstance(publisher, KuboPublisher)
        await publisher.client.aclose()
        await stack.stop_daemon(0)
        monkeypatch.setattr(node.daemon, "IPFS_START_WAIT", 1.0)
        with trio.fail_after(10), pytest.raises(Unavailable, match=f"no Kubo answered at {url} within 1 s"):
            await open_storage(named)
        _, local = await open_storage(NodeConfig(data_dir=tmp_path / "node", ipfs_api=url))
        assert isinstance(local, LocalPublisher)


async def test_a_daemon_whose_port_another_process_took_says_so_in_one_line(tmp_path):
    """A port found free, then taken by another process's outgoing connection before Kubo bound it: `shoal
    devstack` printed "unexpected RuntimeError: Kubo daemon 0 exited during start"."""
    import socket

    from devstack.kubo import KuboError
    from jobs import ShoalError
    from tests.integration.rogue import free_base_port

    base = free_base_port(1)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base))  # daemon 0's API port
        taken.listen()
        with pytest.raises(BaseException) as refused:
            async with KuboCluster(1, tmp_path / "stack", base_port=base):
                pass
    error = refused.value
    while isinstance(error, BaseExceptionGroup) and len(error.exceptions) == 1:  # as the CLI shows it
        error = error.exceptions[0]
    assert isinstance(error, KuboError) and isinstance(error, ShoalError), repr(error)
    assert "one of its ports is taken by another process; choose others with --base-port" in str(error)

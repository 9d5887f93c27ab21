"""A job's inputs together hold at most so many files, folders and links, and each counts against its bytes.

An empty file costs an inode and no bytes, and a job may name the same input 64 times: 64 inputs of one
directory of 200,000 empty files (each within the per-archive cap) could make a node create 12.8 million
inodes before anything refused the job (64 of 5,000 once staged 320,014). Each test asserts what the node
staged: no more than the cap.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest

from devstack.kubo import KuboCluster, ipfs_binary
from jobs import InputSpec
from storage import InputRegistry, KuboClient, KuboInput, LocalInput, LocalPublisher, TooLarge
from storage.trees import entries

EMPTY_FILES = 30  # per input: each fits the caps below alone
COPIES = 8  # inputs naming the same directory: 240 entries together
CAP = 100


def empty_files(path: Path) -> Path:
    path.mkdir()
    for i in range(EMPTY_FILES):
        (path / f"{i:03d}").touch()
    return path


def staged(root: Path) -> int:
    return sum(1 for _ in entries(root)) if root.exists() else 0


async def refuse_copies(registry: InputRegistry, cid: str, root: Path, **limits: int) -> TooLarge:
    inputs = [InputSpec(source=f"ipfs://{cid}", path=f"/d{i}") for i in range(COPIES)]
    with pytest.raises(TooLarge) as info:
        await registry.prepare_inputs(inputs, root, deadline=60, **limits)
    return info.value


async def test_inputs_together_hold_at_most_the_entry_cap(tmp_path):
    store = LocalPublisher(tmp_path / "store")
    cid = await store.publish(empty_files(tmp_path / "empty"))
    root = tmp_path / "inputs"
    error = await refuse_copies(InputRegistry([LocalInput(store)]), cid, root, max_bytes=1 << 30, max_entries=CAP)
    assert str(error).startswith("input 3 (") and "hold 100 of them" in str(error)
    assert not error.retryable
    assert staged(root) <= CAP + COPIES  # 3 inputs (and their top folders); the 4th was refused before a copy


async def test_entries_count_against_the_inputs_bytes(tmp_path):
    """No content, yet 512 bytes each, as the job's disk counts them: 50 entries' worth of bytes takes one input."""
    store = LocalPublisher(tmp_path / "store")
    cid = await store.publish(empty_files(tmp_path / "empty"))
    root = tmp_path / "inputs"
    error = await refuse_copies(InputRegistry([LocalInput(store)]), cid, root, max_bytes=50 * 512)
    assert str(error).startswith("input 1 (")
    assert staged(root) <= 50 + COPIES


@pytest.mark.skipif(ipfs_binary() is None, reason="Kubo is not installed: run scripts/install-kubo")
async def test_kubo_inputs_together_hold_at_most_the_entry_cap(tmp_path):
    async with KuboCluster(1, tmp_path / "kubo") as cluster, \
            KuboClient(cluster.daemons[0].rpc_url) as client:
        cid = await client.add_path(empty_files(tmp_path / "empty"))
        root = tmp_path / "inputs"
        error = await refuse_copies(InputRegistry([KuboInput(client)]), cid, root, max_bytes=1 << 30,
                                    max_entries=CAP)
    assert str(error).startswith("input 3 (") and "more than 10 files, folders and links" in str(error)
    assert staged(root) <= CAP + COPIES  # the 4th input's extraction stopped at what was left, and was removed


async def test_a_shard_is_charged_for_what_it_keeps_not_for_the_whole_it_is_cut_from(tmp_path):
    """A sweep index's shard of a dataset of many small files fit its disk before the entry budget came, and must
    still: the whole is fetched (the entry cap holds), then cut, then charged."""
    from jobs.spec import Shard

    store = LocalPublisher(tmp_path / "store")
    cid = await store.publish(empty_files(tmp_path / "empty"))
    root = tmp_path / "inputs"
    shard = InputSpec(source=f"ipfs://{cid}", path="/data", shard=Shard(index=0, count=10))
    mounts = await InputRegistry([LocalInput(store)]).prepare_inputs([shard], root, deadline=60,
                                                                     max_bytes=10 * 512)  # 10 entries' worth
    assert len(mounts) == 1 and staged(root) == EMPTY_FILES // 10 + 1  # its 3 files, and the folder they are in


async def test_a_folder_counts_alike_against_the_inputs_bytes_on_every_file_system(tmp_path):
    """A folder is 4 KiB on ext4 and less on tmpfs: counted at its size, an input of 40 empty folders under a
    20 KiB budget was refused on an ext4 node and staged on a tmpfs one, and the refusal (not "retry
    elsewhere") was held against the ext4 node once the others ran the job. Each folder now counts 512 bytes
    on every node."""
    shm = Path("/dev/shm")
    if not shm.is_dir():
        pytest.skip("no /dev/shm (tmpfs) here")
    folders = tmp_path / "folders"
    for i in range(40):
        (folders / f"{i:02d}").mkdir(parents=True)
    store = LocalPublisher(tmp_path / "store")
    cid = await store.publish(folders)
    registry = InputRegistry([LocalInput(store)])
    with tempfile.TemporaryDirectory(dir=shm) as memory:
        for root in (tmp_path / "inputs", Path(memory) / "inputs"):
            await registry.prepare_inputs([InputSpec(source=f"ipfs://{cid}", path="/d")], root, deadline=60,
                                          max_bytes=40 * 512)
            assert staged(root) == 41  # the input's folder and its 40
        for root in (tmp_path / "less", Path(memory) / "less"):  # and one byte less is too little on every node
            with pytest.raises(TooLarge):
                await registry.prepare_inputs([InputSpec(source=f"ipfs://{cid}", path="/d")], root, deadline=60,
                                              max_bytes=40 * 512 - 1)

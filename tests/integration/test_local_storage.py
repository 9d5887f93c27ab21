"""The local store (no Kubo): publish, export as tar, verify downloads against the CID, inputs from it.

Also the tar reader's safety: a tampered, truncated, substituted or malicious stream must never
be mistaken for a result or write outside its destination.
"""

from __future__ import annotations

import io
import os
import random
import tarfile
from pathlib import Path

import pytest
import trio

from jobs import InputSpec
from storage import (
    Corrupted,
    InputRegistry,
    InvalidSource,
    LocalInput,
    LocalPublisher,
    NotFound,
    TooLarge,
    Unsafe,
    cid_of_bytes,
    cid_of_path,
    extract_tar,
    extract_verified,
)


def make_tree(root: Path) -> Path:
    """A result directory with what jobs produce: nesting, an empty dir, hidden files, a symlink, a multi-chunk file."""
    root.mkdir()
    (root / "stdout").write_text("hello world\n")
    (root / "stderr").write_bytes(b"")
    (root / "exitCode").write_text("0")
    (root / "outputs" / "nested" / "deeper").mkdir(parents=True)
    (root / "outputs" / "empty").mkdir()
    (root / "outputs" / ".hidden").write_text("dotfile")
    (root / "outputs" / "nested" / "deeper" / "data.bin").write_bytes(random.Random(7).randbytes(1 << 20))
    (root / "outputs" / "name with spaces+plus%percent").write_text("odd name")
    (root / "outputs" / "link").symlink_to("nested/deeper/data.bin")
    return root


def snapshot(root: Path) -> dict[str, tuple[str, bytes]]:
    """Everything a user sees of a tree: relative path → (kind, content or link target)."""
    out: dict[str, tuple[str, bytes]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = Path(dirpath) / name
            rel = str(path.relative_to(root))
            if path.is_symlink():
                out[rel] = ("link", os.readlink(path).encode())
            elif path.is_dir():
                out[rel] = ("dir", b"")
            else:
                out[rel] = ("file", path.read_bytes())
    return out


async def collect(chunks) -> bytes:
    return b"".join([chunk async for chunk in chunks])


async def once(data: bytes, piece: int = 4096):
    for i in range(0, len(data), piece):
        yield data[i: i + piece]


@pytest.fixture
def store(tmp_path) -> LocalPublisher:
    return LocalPublisher(tmp_path / "store")


async def test_publish_export_and_verified_download_give_identical_files(tmp_path, store):
    result = make_tree(tmp_path / "result")
    cid = await store.publish(result)
    assert cid == cid_of_path(result)  # the CID `ipfs add -r -H` gives (compared with Kubo in test_kubo.py)
    assert await store.has(cid)
    assert await store.publish(result) == cid  # idempotent
    assert [p.name for p in store.root.iterdir()] == [cid]

    tar = await collect(await store.export(cid))
    written = await extract_verified(once(tar), tmp_path / "download", cid)
    assert snapshot(tmp_path / "download") == snapshot(result)
    assert written == sum(len(c) for k, c in snapshot(result).values() if k == "file")


async def test_the_same_content_published_twice_at_once_is_stored_once_and_both_succeed(tmp_path, store, monkeypatch):
    """Two sweep indexes with alike outputs published at the same moment: the second saw no copy yet, then its
    rename met the first's (ENOTEMPTY), and its index failed (a CI run's sweep failed so, once)."""
    import storage.local

    result = make_tree(tmp_path / "result")
    cid = await store.publish(result)
    seen = []

    def not_yet(path: object) -> bool:  # the moment between the two: this publish looks before the other is done
        seen.append(path)
        return len(seen) > 1 and os.path.exists(path)

    monkeypatch.setattr(storage.local.os.path, "lexists", not_yet)
    assert await store.publish(result) == cid
    monkeypatch.undo()
    assert [p.name for p in store.root.iterdir()] == [cid]
    tar = await collect(await store.export(cid))
    await extract_verified(once(tar), tmp_path / "download", cid)
    assert snapshot(tmp_path / "download") == snapshot(result)


async def test_published_result_is_immune_to_later_changes_of_the_source(tmp_path, store):
    result = make_tree(tmp_path / "result")
    cid = await store.publish(result)
    (result / "stdout").write_text("rewritten")
    tar = await collect(await store.export(cid))
    await extract_verified(once(tar), tmp_path / "download", cid)
    assert (tmp_path / "download" / "stdout").read_text() == "hello world\n"


async def test_add_bytes_is_a_single_file_cid_and_export(tmp_path, store):
    cid = await store.add_bytes(b"hello world\n")
    assert cid == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    tar = await collect(await store.export(cid))
    await extract_verified(once(tar), tmp_path / "hello", cid)
    assert (tmp_path / "hello").read_bytes() == b"hello world\n"


async def test_tampered_download_is_detected_and_removed(tmp_path, store):
    cid = await store.publish(make_tree(tmp_path / "result"))
    tar = bytearray(await collect(await store.export(cid)))
    offset = tar.index(b"hello world\n")
    tar[offset] ^= 0x01  # one flipped bit in stdout's content (the tar checksums cover headers only)
    with pytest.raises(Corrupted, match="does not match its CID"):
        await extract_verified(once(bytes(tar)), tmp_path / "download", cid)
    assert not (tmp_path / "download").exists()


async def test_truncated_download_is_detected_wherever_it_is_cut(tmp_path, store):
    cid = await store.publish(make_tree(tmp_path / "result"))
    tar = await collect(await store.export(cid))
    with tarfile.open(fileobj=io.BytesIO(tar)) as tf:
        members = tf.getmembers()
    boundaries = [m.offset for m in members[1:]]  # cut exactly between entries: tar itself looks fine
    for cut in [100, 512, len(tar) // 2, *boundaries, len(tar) - 1024, len(tar) - 1000]:
        dest = tmp_path / f"cut-{cut}"
        with pytest.raises(Corrupted):
            await extract_verified(once(tar[:cut]), dest, cid)
        assert not dest.exists(), cut


async def test_a_different_result_served_under_the_cid_is_rejected(tmp_path, store):
    cid = await store.publish(make_tree(tmp_path / "result"))
    other = tmp_path / "other"
    other.mkdir()
    (other / "stdout").write_text("forged\n")
    forged = await store.publish(other)
    tar = await collect(await store.export(forged))
    with pytest.raises(Corrupted):  # its entries are named by the other CID
        await extract_verified(once(tar), tmp_path / "d1", cid)
    renamed = io.BytesIO()  # a well-formed tar with the right names around the wrong content
    with tarfile.open(fileobj=io.BytesIO(tar)) as src, tarfile.open(fileobj=renamed, mode="w") as dst:
        for member in src.getmembers():
            content = src.extractfile(member) if member.isfile() else None
            member.name = member.name.replace(forged, cid)
            dst.addfile(member, content)
    renamed = renamed.getvalue()
    with pytest.raises(Corrupted, match="does not match its CID"):
        await extract_verified(once(renamed), tmp_path / "d2", cid)


def _tar(entries: list[tuple[str, bytes, str]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for name, data, link in entries:
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
            elif link:
                info.type, info.linkname = tarfile.SYMTYPE, link
            else:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


@pytest.mark.parametrize("entries", [
    [("root/", b"", ""), ("root/../escape", b"x", "")],
    [("root/", b"", ""), ("/etc/escape", b"x", "")],
    [("root/", b"", ""), ("root/link", b"", "/tmp"), ("root/link/escape", b"x", "")],
    [("root/", b"", ""), ("root/a/b/escape", b"x", "")],  # parent never declared
    [("root/", b"", ""), ("other/escape", b"x", "")],  # a second top entry
])
async def test_malicious_tar_cannot_write_outside_its_destination(tmp_path, entries):
    with pytest.raises(Corrupted):
        await extract_tar(once(_tar(entries)), tmp_path / "dest")
    assert not (tmp_path / "dest").exists()
    assert not list(tmp_path.rglob("escape"))
    assert not (Path("/tmp") / "escape").exists()


async def test_extraction_stops_at_the_size_limit(tmp_path, store):
    cid = await store.publish(make_tree(tmp_path / "result"))
    tar = await collect(await store.export(cid))
    with pytest.raises(TooLarge):
        await extract_verified(once(tar), tmp_path / "download", cid, max_bytes=1 << 19)
    assert not (tmp_path / "download").exists()


async def test_remove_forgets_the_result(tmp_path, store):
    cid = await store.publish(make_tree(tmp_path / "result"))
    await store.remove(cid)
    assert not await store.has(cid)
    with pytest.raises(NotFound):
        await store.export(cid)
    await store.remove(cid)  # removing twice is fine (retention may race with a manual delete)


async def test_local_input_fetches_whole_results_and_paths_inside_them(tmp_path, store):
    result = make_tree(tmp_path / "result")
    cid = await store.publish(result)
    source = LocalInput(store)
    await source.fetch(f"ipfs://{cid}", tmp_path / "whole", max_bytes=10 << 20)
    assert snapshot(tmp_path / "whole") == snapshot(result)
    await source.fetch(f"{cid}/outputs/nested/deeper/data.bin", tmp_path / "one", max_bytes=10 << 20)
    assert (tmp_path / "one").read_bytes() == (result / "outputs/nested/deeper/data.bin").read_bytes()

    with pytest.raises(NotFound, match="no link named"):
        await source.fetch(f"ipfs://{cid}/outputs/nope", tmp_path / "x", max_bytes=1 << 20)
    with pytest.raises(NotFound):  # UnixFS paths do not go through symlinks
        await source.fetch(f"ipfs://{cid}/outputs/link/anything", tmp_path / "x", max_bytes=1 << 20)
    with pytest.raises(TooLarge):
        await source.fetch(f"ipfs://{cid}", tmp_path / "x", max_bytes=1000)
    missing = cid_of_bytes(b"never published")
    with pytest.raises(NotFound, match="not in this node's local store"):
        await source.fetch(f"ipfs://{missing}", tmp_path / "x", max_bytes=1 << 20)
    assert not (tmp_path / "x").exists()


async def test_prepare_inputs_stages_read_only_mounts_at_job_paths(tmp_path, store):
    cid = await store.publish(make_tree(tmp_path / "result"))
    hello = await store.add_bytes(b"hello world\n")
    registry = InputRegistry([LocalInput(store)])
    root = tmp_path / "inputs"
    root.mkdir()
    mounts = await registry.prepare_inputs(
        [InputSpec(source=f"ipfs://{cid}/outputs", path="/inputs/data"), InputSpec(source=hello, path="/in/hello")],
        root, deadline=10, max_bytes=10 << 20)
    assert [(m.target, m.read_only) for m in mounts] == [("/inputs/data", True), ("/in/hello", True)]
    assert (mounts[0].source / "nested" / "deeper" / "data.bin").stat().st_size == 1 << 20
    assert mounts[1].source.read_bytes() == b"hello world\n"


async def test_prepare_inputs_names_the_input_that_failed(tmp_path, store):
    hello = await store.add_bytes(b"hello world\n")
    registry = InputRegistry([LocalInput(store)])
    missing = cid_of_bytes(b"missing")
    with pytest.raises(NotFound, match=rf"input 1 \(ipfs://{missing} → /b\)"):
        await registry.prepare_inputs([InputSpec(source=hello, path="/a"),
                                       InputSpec(source=f"ipfs://{missing}", path="/b")],
                                      tmp_path / "run1", deadline=10, max_bytes=1 << 20)
    with pytest.raises(InvalidSource, match="this node fetches: local"):
        await registry.prepare_inputs([InputSpec(source="ftp://example.com/x", path="/a")], tmp_path / "run2",
                                      deadline=10, max_bytes=1 << 20)
    assert registry.check([InputSpec(source="ftp://example.com/x", path="/a"), InputSpec(source=hello, path="/b")]) \
        == ["no way to fetch 'ftp://example.com/x' here (this node fetches: local)"]
    # the budget is shared: two inputs of 12 bytes do not fit in 20
    with pytest.raises(TooLarge, match="input 1"):
        await registry.prepare_inputs([InputSpec(source=hello, path="/a"), InputSpec(source=hello, path="/b")],
                                      tmp_path / "run3", deadline=10, max_bytes=20)


def host_secrets(tmp_path: Path) -> Path:
    """A stand-in for what the node may read and the job must not: /etc, the node's keys."""
    secrets = tmp_path / "host"
    (secrets / "sub").mkdir(parents=True)
    (secrets / "node.key").write_text("the node's private key")
    (secrets / "sub" / "other.key").write_text("another secret")
    return secrets


@pytest.mark.parametrize("target", ["ABSOLUTE", "../../../..", "inner/../..", "hop"])
async def test_an_input_holding_a_link_out_of_itself_is_refused_and_nothing_of_the_host_is_staged(
        tmp_path, store, target):
    """A client's context or a job's output may hold symbolic links, and the node follows an input's links
    (as root) to mount it, copy it into the sandbox or read a wasm module. A link to /etc once gave a
    job every file there. ``hop`` goes out through another link (``hop -> inner/up``, ``inner/up -> ../..``)."""
    secrets = host_secrets(tmp_path)
    tree = tmp_path / "upload"
    (tree / "inner").mkdir(parents=True)
    (tree / "data.csv").write_text("x\n1\n")
    if target == "hop":
        (tree / "inner" / "up").symlink_to("../..")
        (tree / "hop").symlink_to("inner/up")
    else:
        (tree / "hop").symlink_to(str(secrets) if target == "ABSOLUTE" else target)
    cid = await store.publish(tree)
    registry = InputRegistry([LocalInput(store)])
    root = tmp_path / "inputs"
    with pytest.raises(Unsafe, match=r"input 0 \(ipfs://\S+ → /in\): it holds a symbolic link out of the input"):
        await registry.prepare_inputs([InputSpec(source=f"ipfs://{cid}", path="/in")], root, deadline=10,
                                      max_bytes=1 << 20)
    with pytest.raises(Unsafe, match="the input is a symbolic link"):  # the link itself, as an input
        await registry.prepare_inputs([InputSpec(source=f"ipfs://{cid}/hop", path="/in")], tmp_path / "i2",
                                      deadline=10, max_bytes=1 << 20)
    assert (secrets / "node.key").read_text() == "the node's private key"  # nothing was touched


async def test_links_within_an_input_stay_and_a_shard_removes_nothing_through_them(tmp_path, store):
    """Links that stay inside the input are the job's own (``latest -> v2``). Cutting a shard removes the
    files of other shards: once it walked through a linked directory and deleted what it found there."""
    secrets = host_secrets(tmp_path)
    tree = tmp_path / "upload"
    (tree / "v2").mkdir(parents=True)
    for name in ("a", "b", "c", "d"):
        (tree / "v2" / name).write_text(name)
    (tree / "latest").symlink_to("v2")
    cid = await store.publish(tree)
    registry = InputRegistry([LocalInput(store)])
    [whole] = await registry.prepare_inputs([InputSpec(source=f"ipfs://{cid}", path="/in")], tmp_path / "i1",
                                            deadline=10, max_bytes=1 << 20)
    assert os.readlink(whole.source / "latest") == "v2" and (whole.source / "latest" / "a").read_text() == "a"
    shards = []
    for index in range(2):
        [mount] = await registry.prepare_inputs(
            [InputSpec(source=f"ipfs://{cid}", path="/in", shard={"index": index, "count": 2})],
            tmp_path / f"s{index}", deadline=10, max_bytes=1 << 20)
        shards.append(sorted(str(p.relative_to(mount.source)) for p in mount.source.rglob("*")
                             if p.is_symlink() or p.is_file()))
    assert sorted(shards[0] + shards[1]) == ["latest", "v2/a", "v2/b", "v2/c", "v2/d"]  # each once
    (tree / "escape").symlink_to(secrets)  # the same cut, were the link not refused first
    cid = await store.publish(tree)
    with pytest.raises(Unsafe):
        await registry.prepare_inputs(
            [InputSpec(source=f"ipfs://{cid}", path="/in", shard={"index": 0, "count": 5})],
            tmp_path / "s9", deadline=10, max_bytes=1 << 20)
    assert sorted(p.name for p in secrets.rglob("*")) == ["node.key", "other.key", "sub"]


async def test_export_streams_without_blocking_other_tasks(tmp_path, store):
    big = tmp_path / "big"
    big.mkdir()
    (big / "f").write_bytes(random.Random(9).randbytes(8 << 20))
    cid = await store.publish(big)
    ticks = 0

    async def ticker():
        nonlocal ticks
        while True:
            ticks += 1
            await trio.sleep(0)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(ticker)
        await extract_verified(await store.export(cid), tmp_path / "out", cid)
        nursery.cancel_scope.cancel()
    assert ticks > 10

"""CIDs computed without Kubo: known values, DAG shapes, CID parsing, the HAMT hash.

Equality with a real ``ipfs add --only-hash`` on the same files is checked in
tests/integration/test_kubo.py (test_cids_match_ipfs_add_*); here are the properties users rely on
even where no Kubo is installed.
"""

from __future__ import annotations

import random

import pytest

from storage import InvalidSource, parse_ipfs_source
from storage import unixfs as u


def _decode(buf: bytes) -> list[tuple[int, int | bytes]]:
    """Minimal protobuf decoder: (field number, value) pairs."""
    out, pos = [], 0
    while pos < len(buf):
        key, pos = u._read_varint(buf, pos)
        if key & 7 == 0:
            value, pos = u._read_varint(buf, pos)
        else:
            length, pos = u._read_varint(buf, pos)
            value, pos = buf[pos: pos + length], pos + length
        out.append((key >> 3, value))
    return out


def _blocks(data: bytes) -> tuple[str, dict[bytes, bytes]]:
    blocks: dict[bytes, bytes] = {}
    cid = u.cid_of_bytes(data, on_block=lambda mh, block: blocks.__setitem__(mh, block))
    return cid, blocks


def _links(block: bytes) -> list[list[tuple[int, int | bytes]]]:
    return [_decode(v) for f, v in _decode(block) if f == 2]


def _unixfs(block: bytes) -> list[tuple[int, int | bytes]]:
    return next(_decode(v) for f, v in _decode(block) if f == 1)


def test_known_cids_of_hello_world_empty_file_and_empty_directory(tmp_path):
    assert u.cid_of_bytes(b"hello world\n") == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    assert u.cid_of_bytes(b"") == u.EMPTY_FILE_CID == "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
    (tmp_path / "hello").write_bytes(b"hello world\n")
    assert u.cid_of_path(tmp_path / "hello") == "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    (tmp_path / "empty").mkdir()
    assert u.cid_of_path(tmp_path / "empty") == u.EMPTY_DIR_CID


def test_file_up_to_one_chunk_is_a_single_leaf_and_larger_files_get_a_root():
    cid, blocks = _blocks(b"x" * u.CHUNK_SIZE)
    assert len(blocks) == 1 and _links(blocks[u.parse_cid(cid).multihash]) == []
    cid, blocks = _blocks(random.Random(1).randbytes(u.CHUNK_SIZE * 4))  # 1 MiB: exactly four chunks
    root = blocks[u.parse_cid(cid).multihash]
    assert len(_links(root)) == 4
    assert [v for f, v in _unixfs(root) if f == 4] == [u.CHUNK_SIZE] * 4  # blocksizes
    assert (3, u.CHUNK_SIZE * 4) in _unixfs(root)  # filesize


def test_more_than_174_chunks_make_a_second_level():
    data = random.Random(2).randbytes(u.CHUNK_SIZE * 200)  # 50 MiB, 200 chunks
    cid, blocks = _blocks(data)
    root = blocks[u.parse_cid(cid).multihash]
    children = _links(root)
    assert len(children) == 2  # a full 174-leaf subtree, then one with the other 26
    sub = [blocks[dict(link)[1]] for link in children]
    assert [len(_links(b)) for b in sub] == [174, 26]
    assert len(blocks) == 200 + 2 + 1
    # Tsize of the root's links covers everything below them
    assert sum(dict(link)[3] for link in children) == sum(len(b) for b in blocks.values()) - len(root)


def test_directory_cid_ignores_order_of_creation_and_sees_every_change(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d, names in ((a, ["x", "y", ".hidden"]), (b, [".hidden", "y", "x"])):
        d.mkdir()
        for name in names:
            (d / name).write_text(name)
    assert u.cid_of_path(a) == u.cid_of_path(b)
    (b / ".hidden").write_text("changed")
    assert u.cid_of_path(a) != u.cid_of_path(b)
    (b / ".hidden").write_text(".hidden")
    (b / "sub").mkdir()  # an empty directory is part of the content too
    assert u.cid_of_path(a) != u.cid_of_path(b)


def test_directory_links_are_sorted_by_bytes(tmp_path):
    for name in ["b", "a", "B", "é", "a.txt"]:
        (tmp_path / name).write_text(name)
    blocks: dict[bytes, bytes] = {}
    cid = u.cid_of_path(tmp_path, on_block=lambda mh, block: blocks.__setitem__(mh, block))
    names = [dict(link)[2] for link in _links(blocks[u.parse_cid(cid).multihash])]
    assert names == sorted(n.encode() for n in ["b", "a", "B", "é", "a.txt"])


def test_large_directory_becomes_a_hamt_at_the_size_threshold():
    empty = u._Builder().file(iter([]))
    per_entry = 10 + len(empty.multihash)  # what Kubo estimates for a 10-byte name: len(name) + len(CIDv0)
    count = u.HAMT_THRESHOLD // per_entry + 1  # the first count above the threshold
    entries = [(b"file%06d" % i, empty) for i in range(count)]
    blocks: dict[bytes, bytes] = {}
    root = u._Builder(lambda mh, block: blocks.__setitem__(mh, block)).directory(entries)
    data = dict(_unixfs(blocks[root.multihash]))
    assert data[1] == 5 and data[5] == 0x22 and data[6] == 256  # HAMTShard, murmur3, fanout 256
    names = [dict(link)[2] for link in _links(blocks[root.multihash])]
    assert all(len(n) == 2 or len(n) == 12 for n in names)  # "XX" sub-shards, "XX" + name values
    assert bin(int.from_bytes(data[2], "big")).count("1") == len(names)  # bitfield: one bit per link
    blocks.clear()
    smaller = u._Builder(lambda mh, block: blocks.__setitem__(mh, block)).directory(entries[:-1])
    assert dict(_unixfs(blocks[smaller.multihash]))[1] == 1  # one entry fewer: a plain directory


def test_murmur3_matches_the_reference_implementation():
    mmh3 = pytest.importorskip("mmh3")
    rng = random.Random(3)
    for n in [0, 1, 7, 8, 9, 15, 16, 17, 31, 32, 33, 100]:
        data = rng.randbytes(n)
        h1, _ = mmh3.hash64(data, signed=False)
        assert u._murmur3_64(data) == h1.to_bytes(8, "big")


def test_symlinks_are_stored_not_followed(tmp_path):
    (tmp_path / "target").write_text("payload")
    (tmp_path / "link").symlink_to("target")
    (tmp_path / "dangling").symlink_to("/nowhere/at/all")
    assert u.cid_of_path(tmp_path / "link") != u.cid_of_path(tmp_path / "target")
    u.cid_of_path(tmp_path)  # a dangling link is fine: it is never followed


def test_special_files_are_refused(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(InvalidSource, match="neither a file"):
        u.cid_of_path(tmp_path)


def test_cid_parsing_round_trips_and_rejects_garbage():
    v0 = u.parse_cid("QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o")
    v1 = u.Cid(1, u.DAG_PB, v0.multihash)
    assert str(v1) == "bafybeicg2rebjoofv4kbyovkw7af3rpiitvnl6i7ckcywaq6xjcxnc2mby"
    assert u.parse_cid(str(v1)) == v1 and v1.to_v0() == v0
    raw = u.parse_cid("bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e")
    assert raw.codec == u.RAW
    with pytest.raises(InvalidSource):
        raw.to_v0()
    for bad in ["", "Qm", "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5O", "hello", "bafy!!!", "https://x"]:
        assert not u.is_cid(bad)
        with pytest.raises(InvalidSource):
            u.parse_cid(bad)


def test_ipfs_sources_are_parsed_with_their_paths():
    cid = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"
    assert parse_ipfs_source(f"ipfs://{cid}") == (cid, "")
    assert parse_ipfs_source(f"/ipfs/{cid}/a/b/") == (cid, "a/b")
    assert parse_ipfs_source(f"{cid}/data.csv") == (cid, "data.csv")
    with pytest.raises(InvalidSource):
        parse_ipfs_source(f"ipfs://{cid}/../etc")
    with pytest.raises(InvalidSource):
        parse_ipfs_source("ipfs://not-a-cid/x")

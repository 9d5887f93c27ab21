"""CIDs exactly as ``ipfs add`` computes them, in pure Python (no Kubo needed).

The settings are Kubo's defaults, which Shoal always uses (and passes explicitly when it talks to
Kubo, so a daemon's ``Import.*`` config cannot change them):

* CIDv0 (``Qm…``: base58btc of a sha2-256 multihash), dag-pb blocks carrying UnixFS data;
* files cut into fixed 256 KiB chunks (``size-262144``), each a dag-pb leaf (no raw leaves);
* the balanced layout: at most 174 links per node; a full tree of depth ``d`` becomes the first
  child of a new root of depth ``d + 1``;
* directories as one dag-pb node whose links are sorted by name, or, once the sum of
  ``len(name) + len(cid)`` over their entries exceeds 256 KiB, as a HAMT (fanout 256, murmur3);
* symlinks stored as symlinks (not followed); hidden files included (``ipfs add -r -H``).

Every link carries the cumulative size (``Tsize``) of the DAG below it. Mode and mtime are not
stored (``ipfs add`` leaves them out unless asked). Encodings follow boxo v0.37 (Kubo v0.40, the
version scripts/install-kubo builds): ``ipld/unixfs/importer/balanced``, ``ipld/unixfs/io/directory.go``,
``ipld/unixfs/hamt``. One detail moved between Kubo releases: a directory whose estimate is exactly
256 KiB stays plain since Kubo 0.40 (boxo 0.37); Kubo 0.39 and earlier sharded it (``>=``).
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from storage.errors import InvalidSource

__all__ = [
    "CHUNK_SIZE",
    "EMPTY_DIR_CID",
    "EMPTY_FILE_CID",
    "HAMT_FANOUT",
    "HAMT_THRESHOLD",
    "MAX_LINKS",
    "Cid",
    "DagNode",
    "cid_of_bytes",
    "cid_of_path",
    "compute_cid",
    "is_cid",
    "parse_cid",
]

CHUNK_SIZE = 256 * 1024  # Kubo's default chunker, size-262144
MAX_LINKS = 174  # links per node in the balanced file layout (Import.UnixFSFileMaxLinks)
HAMT_THRESHOLD = 256 * 1024  # Import.UnixFSHAMTDirectorySizeThreshold: an estimate above this turns on sharding
HAMT_FANOUT = 256  # Import.UnixFSHAMTDirectoryMaxFanout
EMPTY_FILE_CID = "QmbFMke1KXqnYyBBWxB74N4c5SBnJMVAiMNRcGu6x1AwQH"
EMPTY_DIR_CID = "QmUNLLsPACCz1vLxQVkXqqLX5R1X345qqfHbsf67hvA3Nn"

BlockSink = Callable[[bytes, bytes], None]  # (multihash, block bytes), called for every block built

# -- multiformats --------------------------------------------------------------------------------

_B58 = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_B58_INDEX = {c: i for i, c in enumerate(_B58)}
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_SHA2_256 = 0x12
DAG_PB = 0x70
RAW = 0x55


def _b58encode(data: bytes) -> str:
    n = int.from_bytes(data, "big")
    out = []
    while n:
        n, r = divmod(n, 58)
        out.append(_B58[r])
    pad = len(data) - len(data.lstrip(b"\0"))
    return "1" * pad + "".join(reversed(out))


def _b58decode(text: str) -> bytes:
    n = 0
    for c in text:
        n = n * 58 + _B58_INDEX[c]  # KeyError on a bad character
    pad = len(text) - len(text.lstrip("1"))
    return b"\0" * pad + (n.to_bytes((n.bit_length() + 7) // 8, "big") if n else b"")


def _b32encode(data: bytes) -> str:
    bits = int.from_bytes(data, "big") if data else 0
    nbits = len(data) * 8
    pad = (5 - nbits % 5) % 5
    bits <<= pad
    return "".join(_B32[(bits >> (5 * i)) & 31] for i in reversed(range((nbits + pad) // 5)))


def _b32decode(text: str) -> bytes:
    bits = 0
    for c in text.lower():
        bits = (bits << 5) | _B32.index(c)  # ValueError on a bad character
    nbits = len(text) * 5
    nbytes = nbits // 8
    return (bits >> (nbits - nbytes * 8)).to_bytes(nbytes, "big")


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    n = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise ValueError("truncated varint")
        byte = data[pos]
        pos += 1
        n |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return n, pos


@dataclass(frozen=True)
class Cid:
    """A parsed CID. ``str()`` gives the canonical text (base58btc for v0, base32 for v1)."""

    version: int
    codec: int
    multihash: bytes

    def __str__(self) -> str:
        if self.version == 0:
            return _b58encode(self.multihash)
        return "b" + _b32encode(self.to_bytes())

    def to_bytes(self) -> bytes:
        if self.version == 0:
            return self.multihash
        return _varint(1) + _varint(self.codec) + self.multihash

    def to_v0(self) -> Cid:
        """The same content as a CIDv0, when it can be one (dag-pb, sha2-256); else ``InvalidSource``."""
        if self.version == 0:
            return self
        if self.codec != DAG_PB or self.multihash[:2] != bytes([_SHA2_256, 32]):
            raise InvalidSource(f"{self} has no CIDv0 form (not dag-pb with sha2-256)")
        return Cid(0, DAG_PB, self.multihash)


def parse_cid(text: str) -> Cid:
    """Parse ``Qm…`` (v0) or a multibase v1 CID (``b…`` base32, ``z…`` base58btc, ``f…`` hex).

    Raises:
        InvalidSource: not a CID.
    """
    try:
        if len(text) == 46 and text.startswith("Qm"):
            mh = _b58decode(text)
            if len(mh) == 34 and mh[:2] == bytes([_SHA2_256, 32]):
                return Cid(0, DAG_PB, mh)
            raise ValueError("bad multihash")
        prefix, rest = text[:1], text[1:]
        if prefix in ("b", "B"):
            raw = _b32decode(rest)
        elif prefix == "z":
            raw = _b58decode(rest)
        elif prefix in ("f", "F"):
            raw = bytes.fromhex(rest)
        else:
            raise ValueError("unknown multibase")
        version, pos = _read_varint(raw, 0)
        codec, pos = _read_varint(raw, pos)
        mh = raw[pos:]
        _code, p = _read_varint(mh, 0)
        length, p = _read_varint(mh, p)
        if version != 1 or len(mh) != p + length or length == 0:
            raise ValueError("bad CIDv1")
        cid = Cid(1, codec, mh)
        if str(cid) != text.lower() and prefix in ("b", "B"):
            raise ValueError("non-canonical encoding")
        return cid
    except (ValueError, KeyError, IndexError):
        raise InvalidSource(f"{text!r} is not a valid CID") from None


def is_cid(text: str) -> bool:
    try:
        parse_cid(text)
    except InvalidSource:
        return False
    return True


# -- dag-pb and UnixFS encoding -------------------------------------------------------------------

# UnixFS Data.DataType
_DIRECTORY, _FILE, _SYMLINK, _HAMT_SHARD = 1, 2, 4, 5
_MURMUR3_64 = 0x22


def _bytes_field(number: int, value: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _varint_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def _unixfs(kind: int, *, data: bytes | None = None, filesize: int | None = None,
            blocksizes: tuple[int, ...] = (), hash_type: int | None = None, fanout: int | None = None) -> bytes:
    """A UnixFS ``Data`` message, fields in number order as Go's protobuf marshals them."""
    parts = [_varint_field(1, kind)]
    if data is not None:
        parts.append(_bytes_field(2, data))
    if filesize is not None:
        parts.append(_varint_field(3, filesize))
    parts.extend(_varint_field(4, size) for size in blocksizes)  # proto2 repeated, not packed
    if hash_type is not None:
        parts.append(_varint_field(5, hash_type))
    if fanout is not None:
        parts.append(_varint_field(6, fanout))
    return b"".join(parts)


@dataclass(frozen=True)
class DagNode:
    """The root of a DAG just built: its multihash and cumulative size (what a parent's link stores)."""

    multihash: bytes
    tsize: int

    @property
    def cid(self) -> str:
        return _b58encode(self.multihash)


def _pbnode(links: list[tuple[bytes, DagNode]], data: bytes | None) -> bytes:
    """dag-pb PBNode: Links (field 2, each Hash/Name/Tsize, Name always present) then Data (field 1)."""
    parts = [
        _bytes_field(2, _bytes_field(1, child.multihash) + _bytes_field(2, name) + _varint_field(3, child.tsize))
        for name, child in links
    ]
    if data is not None:
        parts.append(_bytes_field(1, data))
    return b"".join(parts)


class _Builder:
    def __init__(self, on_block: BlockSink | None = None) -> None:
        self.on_block = on_block

    def put(self, block: bytes, children: list[DagNode] | tuple[DagNode, ...] = ()) -> DagNode:
        mh = bytes([_SHA2_256, 32]) + hashlib.sha256(block).digest()
        if self.on_block is not None:
            self.on_block(mh, block)
        return DagNode(mh, len(block) + sum(c.tsize for c in children))

    # files: balanced layout ----------------------------------------------------------------------

    def file(self, chunks: Iterator[bytes]) -> DagNode:
        source = _Lookahead(chunks)
        if source.done():
            return self.put(_pbnode([], _unixfs(_FILE, filesize=0)))  # empty file: no Data bytes at all
        root, size = self._leaf(source.next())
        depth = 1
        while not source.done():
            root, size = self._fill(source, depth, [(root, size)])
            depth += 1
        return root

    def _leaf(self, chunk: bytes) -> tuple[DagNode, int]:
        return self.put(_pbnode([], _unixfs(_FILE, data=chunk, filesize=len(chunk)))), len(chunk)

    def _fill(self, source: _Lookahead, depth: int, children: list[tuple[DagNode, int]]) -> tuple[DagNode, int]:
        while len(children) < MAX_LINKS and not source.done():
            children.append(self._leaf(source.next()) if depth == 1 else self._fill(source, depth - 1, []))
        sizes = tuple(size for _, size in children)
        data = _unixfs(_FILE, filesize=sum(sizes), blocksizes=sizes)
        nodes = [node for node, _ in children]
        return self.put(_pbnode([(b"", n) for n in nodes], data), nodes), sum(sizes)

    def symlink(self, target: bytes) -> DagNode:
        return self.put(_pbnode([], _unixfs(_SYMLINK, data=target)))

    # directories ---------------------------------------------------------------------------------

    def directory(self, entries: list[tuple[bytes, DagNode]]) -> DagNode:
        entries = sorted(entries, key=lambda e: e[0])
        estimated = sum(len(name) + len(child.multihash) for name, child in entries)
        if estimated > HAMT_THRESHOLD:  # Import.UnixFSHAMTDirectorySizeEstimation = "links" (the default)
            return self._shard([(_murmur3_64(name), name, child) for name, child in entries], 0)
        return self.put(_pbnode(entries, _unixfs(_DIRECTORY)), [c for _, c in entries])

    def _shard(self, entries: list[tuple[bytes, bytes, DagNode]], depth: int) -> DagNode:
        """One HAMT node: bucket ``hash[depth]``; one entry → a value link, several → a child shard."""
        if depth >= 8:
            raise InvalidSource("directory too large to shard: murmur3 hash collision on all 64 bits")
        buckets: dict[int, list[tuple[bytes, bytes, DagNode]]] = {}
        for entry in entries:
            buckets.setdefault(entry[0][depth], []).append(entry)
        links: list[tuple[bytes, DagNode]] = []
        bitfield = 0
        for index in sorted(buckets):
            bitfield |= 1 << index
            prefix = b"%02X" % index
            bucket = buckets[index]
            if len(bucket) == 1:
                _, name, child = bucket[0]
                links.append((prefix + name, child))
            else:
                links.append((prefix, self._shard(bucket, depth + 1)))
        bits = bitfield.to_bytes(HAMT_FANOUT // 8, "big").lstrip(b"\0")
        data = _unixfs(_HAMT_SHARD, data=bits, hash_type=_MURMUR3_64, fanout=HAMT_FANOUT)
        return self.put(_pbnode(links, data), [c for _, c in links])

    # the file system -----------------------------------------------------------------------------

    def path(self, path: Path) -> DagNode:
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            return self.symlink(os.fsencode(os.readlink(path)))
        if stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                return self.file(iter(lambda: f.read(CHUNK_SIZE), b""))
        if stat.S_ISDIR(st.st_mode):
            with os.scandir(path) as it:
                names = [entry.name for entry in it]
            return self.directory([(os.fsencode(name), self.path(path / name)) for name in names])
        raise InvalidSource(f"{path} is neither a file, a directory nor a symlink; it cannot be stored")


class _Lookahead:
    """An iterator of chunks that can tell whether it is exhausted (the chunker's ``Done()``)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._next = next(chunks, None)

    def done(self) -> bool:
        return self._next is None

    def next(self) -> bytes:
        chunk, self._next = self._next, next(self._chunks, None)
        assert chunk is not None
        return chunk


def _murmur3_64(data: bytes) -> bytes:
    """The first 64 bits of murmur3 x64_128 (seed 0), big-endian: go-unixfs' HAMT hash (spaolacci/murmur3 New64)."""
    mask = (1 << 64) - 1
    c1, c2 = 0x87C37B91114253D5, 0x4CF5AD432745937F

    def rotl(x: int, r: int) -> int:
        return ((x << r) | (x >> (64 - r))) & mask

    def fmix(k: int) -> int:
        k ^= k >> 33
        k = (k * 0xFF51AFD7ED558CCD) & mask
        k ^= k >> 33
        k = (k * 0xC4CEB9FE1A85EC53) & mask
        return k ^ (k >> 33)

    h1 = h2 = 0
    nblocks = len(data) // 16
    for i in range(nblocks):
        k1 = int.from_bytes(data[16 * i: 16 * i + 8], "little")
        k2 = int.from_bytes(data[16 * i + 8: 16 * i + 16], "little")
        h1 ^= (rotl((k1 * c1) & mask, 31) * c2) & mask
        h1 = (rotl(h1, 27) + h2) & mask
        h1 = (h1 * 5 + 0x52DCE729) & mask
        h2 ^= (rotl((k2 * c2) & mask, 33) * c1) & mask
        h2 = (rotl(h2, 31) + h1) & mask
        h2 = (h2 * 5 + 0x38495AB5) & mask
    tail = data[16 * nblocks:]
    if len(tail) > 8:
        h2 ^= (rotl((int.from_bytes(tail[8:], "little") * c2) & mask, 33) * c1) & mask
    if tail:
        h1 ^= (rotl((int.from_bytes(tail[:8], "little") * c1) & mask, 31) * c2) & mask
    h1 ^= len(data)
    h2 ^= len(data)
    h1 = (h1 + h2) & mask
    h2 = (h2 + h1) & mask
    h1, h2 = fmix(h1), fmix(h2)
    h1 = (h1 + h2) & mask
    return h1.to_bytes(8, "big")


# -- public API ----------------------------------------------------------------------------------


def cid_of_bytes(data: bytes, *, on_block: BlockSink | None = None) -> str:
    """CIDv0 of one file with this content, as ``ipfs add`` gives it."""
    chunks = (data[i: i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE))
    return _Builder(on_block).file(chunks).cid


def cid_of_path(path: Path, *, on_block: BlockSink | None = None) -> str:
    """CIDv0 of a file, directory (recursively, hidden files included) or symlink.

    Equals ``ipfs add -r -H --cid-version=0 PATH`` (Kubo defaults). Blocking; see ``compute_cid``.

    Raises:
        InvalidSource: the tree holds something other than files, directories and symlinks.
        OSError: the path cannot be read.
    """
    return _Builder(on_block).path(Path(path)).cid


async def compute_cid(path: Path) -> str:
    """``cid_of_path`` in a worker thread (hashing a large tree must not block the trio loop)."""
    import trio  # lazily: the SDK verifies downloads with this module and need not load trio

    return await trio.to_thread.run_sync(cid_of_path, path)

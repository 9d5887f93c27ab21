"""The one tar reader (node and ``shoal get``): links confined to the destination, chains included,
and the same files whatever the chunks the stream arrives in."""

from __future__ import annotations

import errno
import io
import os
import tarfile
from pathlib import Path

import pytest

from storage.errors import Corrupted, TooLarge, Unsafe
from storage.tarsafe import TarExtractor, link_escapes


@pytest.mark.parametrize(("links", "bad"), [
    ({("a",): "b", ("b",): ".", ("c",): "a/../.."}, "c"),  # a -> b -> . (the root), then up from it
    ({("sub", "l"): "..", ("m",): "sub/l/.."}, "m"),  # lexically "sub", really the root's parent
    ({("sub", "up"): "../..",}, "sub/up"),
    ({("abs",): "/etc/passwd"}, "abs"),
    ({("root",): "/"}, "root"),
    ({("x",): "y/../../z"}, "x"),  # through a name that does not exist: still counted
    ({("p",): "q", ("q",): "p"}, "p"),  # a loop
    ({("deep",): "d1", ("d1",): "d2", ("d2",): "sub/..", ("sub", "x"): "../../../etc"}, "sub/x"),
])
def test_links_that_resolve_outside_are_found(links: dict[tuple[str, ...], str], bad: str) -> None:
    problem = link_escapes(links)
    assert problem is not None and problem.startswith(f"link '{bad}'")


@pytest.mark.parametrize("links", [
    {("a",): "b", ("b",): "."},
    {("outputs", "latest"): "run-2/result.txt", ("outputs", "up"): "..", ("top",): "outputs/up/outputs"},
    {("sub", "l"): "..", ("m",): "sub/l/sub"},
    {("dangling",): "nothing/here"},
])
def test_links_inside_are_allowed(links: dict[tuple[str, ...], str]) -> None:
    assert link_escapes(links) is None


def _doubling(count: int, width: int = 8) -> dict[tuple[str, ...], str]:
    """``x0 -> .`` and each next link naming the one before ``width`` times: every link stays inside, and link
    ``n`` takes 1 + width + width^2 ... follows to resolve."""
    return {("x0",): ".", **{(f"x{i}",): "/".join([f"x{i - 1}"] * width) for i in range(1, count)}}


@pytest.mark.parametrize("links", [
    _doubling(3, width=2),  # x2: 1 + 2 * 3 = 7 follows
    _doubling(3),  # x2: 1 + 8 * 9 = 73
    _doubling(15),  # 8^14 steps for a check that resolved each use again: a node's core spun for good
    {**{(f"c{i}",): f"c{i + 1}" for i in range(45)}, ("c45",): "."},  # a chain of 46
    {**{(f"c{i}",): f"c{i + 1}" for i in range(39)}, ("c39",): "."},  # a chain of 40
])
def test_links_are_resolved_as_the_kernel_resolves_them(tmp_path: Path, links) -> None:
    """What the kernel refuses as a loop (more than 40 links followed in one lookup) is refused, and only that;
    each link is resolved once, however often others name it."""
    for path, target in links.items():
        (tmp_path / Path(*path)).symlink_to(target)
    loops = []
    for path in links:
        try:
            fd = os.open(tmp_path / Path(*path), os.O_PATH)
        except OSError as e:
            assert e.errno == errno.ELOOP
            loops.append(path)
        else:
            os.close(fd)
    problem = link_escapes(links)
    if loops:
        assert problem is not None and problem.endswith("goes through too many links (a loop)")
        assert tuple(problem.split("'")[1].split("/")) in loops
    else:
        assert problem is None


def _tar(entries: list[tuple[str, str, bytes | str]]) -> bytes:
    """(name, kind d/f/l, data or link target), in order."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data in entries:
            info = tarfile.TarInfo(name)
            if kind == "d":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "l":
                info.type, info.linkname = tarfile.SYMTYPE, str(data)
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


TREE = [("r", "d", b""), ("r/stdout", "f", b"hello\n"), ("r/outputs", "d", b""),
        ("r/outputs/big", "f", bytes(range(256)) * 40), ("r/outputs/link", "l", "big"),
        ("r/outputs/" + "n" * 200, "f", b"a long name (a PAX header)")]


def _extract(data: bytes, dest: Path, chunk: int, **options) -> int:
    extractor = TarExtractor(dest, **options)
    try:
        for i in range(0, len(data), chunk):
            extractor.feed(data[i: i + chunk])
        return extractor.close()
    except BaseException:
        extractor.abort()
        raise


@pytest.mark.parametrize("chunk", [1, 511, 512, 513, 4096, 1 << 20])
def test_the_same_files_whatever_the_chunks(tmp_path: Path, chunk: int) -> None:
    dest = tmp_path / "out"
    written = _extract(_tar(TREE), dest, chunk, root="r", confine_links=True)
    assert written == 6 + 10240 + 26
    assert (dest / "stdout").read_bytes() == b"hello\n"
    assert (dest / "outputs" / "big").read_bytes() == bytes(range(256)) * 40
    assert (dest / "outputs" / "link").readlink() == Path("big")
    assert (dest / "outputs" / ("n" * 200)).read_bytes() == b"a long name (a PAX header)"


@pytest.mark.parametrize("links", [
    [("r/a", "l", "b"), ("r/b", "l", "."), ("r/c", "l", "a/../..")],
    [("r/abs", "l", "/etc")],
    [("r/sub", "d", b""), ("r/sub/l", "l", ".."), ("r/m", "l", "sub/l/..")],
])
def test_confined_links_refuse_chains_and_absolute_targets(tmp_path: Path, links) -> None:
    data = _tar([("r", "d", b""), ("r/stdout", "f", b"x"), *links])
    with pytest.raises(Unsafe, match="link"):
        _extract(data, tmp_path / "out", 4096, root="r", confine_links=True)
    assert not (tmp_path / "out").exists()
    assert _extract(data, tmp_path / "node", 4096, root="r")  # the node keeps them as they are (never followed)


@pytest.mark.parametrize(("entries", "error"), [
    ([("r", "d", b""), ("r/x", "l", "/tmp"), ("r/x/escape", "f", b"x")], Unsafe),  # below a link
    ([("r", "d", b""), ("r/../escape", "f", b"x")], Unsafe),
    ([("r", "d", b""), ("r/f", "f", b"1"), ("r/f", "f", b"2")], Corrupted),  # twice
    ([("r", "d", b""), ("r/f", "l", "x"), ("r/f", "d", b"")], Corrupted),
    ([("r", "l", ".")], Unsafe),  # the top entry itself a link
])
def test_unsafe_or_clashing_entries_are_refused(tmp_path: Path, entries, error) -> None:
    with pytest.raises(error):
        _extract(_tar(entries), tmp_path / "out", 512, root="r", confine_links=True)
    assert not (tmp_path / "out").exists()
    assert not list(tmp_path.parent.glob("escape"))


def test_file_bytes_count_against_the_limit_before_they_are_written(tmp_path: Path) -> None:
    with pytest.raises(TooLarge):
        _extract(_tar(TREE), tmp_path / "out", 4096, root="r", max_bytes=10000)
    assert not (tmp_path / "out").exists()


def test_empty_files_count_against_the_entries_limit_before_they_are_made(tmp_path: Path) -> None:
    """Empty files cost no bytes, yet each takes an inode: an input of millions would use up the node's."""
    empties = [("r", "d", b""), *((f"r/e{i}", "f", b"") for i in range(6))]
    with pytest.raises(TooLarge, match="more than 5 files, folders and links"):
        _extract(_tar(empties), tmp_path / "out", 4096, root="r", max_entries=5)
    assert not (tmp_path / "out").exists()
    assert _extract(_tar(empties), tmp_path / "ok", 4096, root="r", max_entries=6) == 0
    assert len(list((tmp_path / "ok").iterdir())) == 6


def test_a_stream_without_its_end_marker_is_truncated(tmp_path: Path) -> None:
    data = _tar(TREE)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512  # cut exactly before the end-of-archive marker
    with pytest.raises(Corrupted, match="truncated"):
        _extract(data[:end], tmp_path / "out", 4096, root="r")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("pax", [{"path": "r/a\x00b"}, {"linkpath": "a\x00b"}])
def test_a_nul_byte_in_a_name_or_link_is_a_corrupt_archive(tmp_path: Path, pax: dict[str, str]) -> None:
    """No file system takes it: the OS call raised ValueError, a 500 from the node and a traceback from the SDK."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        top = tarfile.TarInfo("r")
        top.type = tarfile.DIRTYPE
        tar.addfile(top)
        entry = tarfile.TarInfo("r/x")
        entry.pax_headers = pax
        if "linkpath" in pax:
            entry.type = tarfile.SYMTYPE
        tar.addfile(entry, None if "linkpath" in pax else io.BytesIO(b""))
    with pytest.raises(Corrupted, match="NUL byte"):
        _extract(buf.getvalue(), tmp_path / "out", 512, root="r", confine_links=True)
    assert not (tmp_path / "out").exists()

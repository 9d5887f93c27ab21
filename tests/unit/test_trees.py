"""Trees a job wrote, walked and removed without recursion (``storage.trees``): a job nested directories
1,500 deep in its outputs, and the node went down removing them."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from storage.trees import MAX_DEPTH, TooDeep, Unstorable, check_depth, count_entries, entries, remove_tree


def nest(root: Path, depth: int) -> None:
    """``root/a/a/…/a/f``, ``depth`` directories deep (past the system's longest path, through chdir)."""
    root.mkdir()
    here = os.getcwd()
    try:
        os.chdir(root)
        for _ in range(depth):
            os.mkdir("a")
            os.chdir("a")
        Path("f").write_text("x")
    finally:
        os.chdir(here)


def test_entries_lists_every_entry_with_its_lstat_and_follows_no_link(tmp_path: Path) -> None:
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "e" / "f").write_text("data")
    (tmp_path / "link").symlink_to("/")
    found = {os.path.relpath(p, tmp_path): st.st_size for p, st in entries(tmp_path)}
    assert set(found) == {"d", "d/e", "d/e/f", "link"} and found["d/e/f"] == 4


def test_a_tree_deeper_than_the_limit_is_refused_and_one_at_the_limit_is_not(tmp_path: Path) -> None:
    nest(tmp_path / "ok", MAX_DEPTH)
    check_depth(tmp_path / "ok")
    nest(tmp_path / "deep", MAX_DEPTH + 1)
    with pytest.raises(TooDeep, match=f"directories nested more than {MAX_DEPTH} deep"):
        check_depth(tmp_path / "deep")


def test_entries_are_counted_up_to_one_past_the_limit(tmp_path: Path) -> None:
    for i in range(5):
        (tmp_path / f"f{i}").touch()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "g").touch()
    assert count_entries(tmp_path, 10) == 7
    assert count_entries(tmp_path, 3) == 4  # more than 3: the walk stops there
    nest(tmp_path / "deep", MAX_DEPTH + 1)
    with pytest.raises(TooDeep):
        count_entries(tmp_path / "deep", 10**6)


def test_a_tree_deeper_than_python_recurses_and_than_the_longest_path_is_walked_and_removed(tmp_path: Path) -> None:
    depth = max(sys.getrecursionlimit(), 2100) + 100  # "a/" x 2100 is longer than PATH_MAX (4096)
    nest(tmp_path / "deep", depth)
    with pytest.raises(TooDeep):
        check_depth(tmp_path / "deep", max_depth=10**6)  # a path the system cannot take: refused, not a crash
    remove_tree(tmp_path / "deep")
    assert not (tmp_path / "deep").exists()
    remove_tree(tmp_path / "deep")  # nothing there: nothing to do
    (tmp_path / "file").write_text("x")
    remove_tree(tmp_path / "file")
    assert not (tmp_path / "file").exists()


def test_count_entries_names_an_entry_no_storage_takes_below_the_walked_folder(tmp_path: Path) -> None:
    (tmp_path / "out" / "sub").mkdir(parents=True)
    (tmp_path / "out" / "sub" / "data.csv").write_text("1\n")
    (tmp_path / "out" / "link").symlink_to("/etc/passwd")  # a link is stored as a link
    assert count_entries(tmp_path, 10) == 4
    os.mkfifo(tmp_path / "out" / "sub" / "pipe")
    with pytest.raises(Unstorable) as refused:
        count_entries(tmp_path, 10)
    assert str(refused.value) == "out/sub/pipe, a FIFO: only files, folders and symlinks are stored"


def test_a_path_longer_than_the_network_takes_is_refused_however_short_the_roots_path(tmp_path: Path) -> None:
    """Whether a tree's long paths passed the system's 4,095 bytes hung on the path of the folder it sits in: a
    peer's input, or a job's outputs, were refused on one node and taken on another. Now the part below the tree's
    root is held to ``MAX_PATH_BYTES`` wherever the root is, byte for byte (a name of multibyte characters
    counts its bytes), and a node walking it survives with the refusal."""
    from storage.trees import MAX_PATH_BYTES

    def tree(root: Path, names: list[str]) -> Path:
        (root / os.path.join(*names)).mkdir(parents=True)
        return root

    fits = ["é" * 100] * 14  # 200 bytes a name: 14 * 201 - 1 = 2,813 bytes
    check_depth(tree(tmp_path / "fits", fits))
    long = tree(tmp_path / "long", ["é" * 100] * 15)  # 3,014 bytes, though 1,514 characters
    with pytest.raises(TooDeep, match=f"a path longer than {MAX_PATH_BYTES:,} bytes"):
        check_depth(long)

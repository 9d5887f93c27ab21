"""The sandbox's pieces that need no bubblewrap: what a node says when it cannot sandbox, and slots."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from executors.pyodide import PyodideExecutor
from executors.sandbox import NOBODY, Limits, Sandbox, Slot


def test_a_node_without_bubblewrap_does_not_offer_python_and_says_why(tmp_path: Path):
    executor = PyodideExecutor(tmp_path)
    executor.sandbox = Sandbox(executor.sandbox.runtime, bwrap=str(tmp_path / "no-bwrap"))
    if not (executor.runner_dir / "node_modules" / "pyodide" / "pyodide.mjs").is_file():
        pytest.skip("Pyodide is not installed")
    assert not executor.is_installed()
    assert "bubblewrap" in executor.problem()
    assert "--unsafe-unsandboxed-python" in executor.problem()


def test_the_unsandboxed_engine_is_an_explicit_choice(tmp_path: Path, caplog):
    executor = PyodideExecutor(tmp_path, unsandboxed=True)
    assert executor.sandbox is None
    assert "UNSAFE" in caplog.text


def test_limits_hold_from_the_first_instruction():
    args = Limits(memory=1 << 30, cpu_seconds=70, file_size=4096).prlimit_args()
    assert args[0] == "prlimit" and args[-1] == "--"
    assert {"--core=0", "--data=1073741824", "--cpu=70", "--fsize=4096"} <= set(args)


def test_a_slot_mirrors_inputs_read_only_and_gives_empty_outputs(tmp_path: Path):
    source = tmp_path / "input"
    (source / "sub").mkdir(parents=True)
    (source / "sub" / "public.txt").write_text("shared")
    private = source / "private.txt"
    private.write_text("mode 600")
    private.chmod(0o600)
    os.symlink("/etc/passwd", source / "link")
    slot = Slot(tmp_path / "slot", owner=NOBODY if os.geteuid() == 0 else None)
    seen = slot.place_read_only(source)
    assert seen == "/job/ro/1"
    mirrored = slot.ro / "1"
    assert (mirrored / "sub" / "public.txt").read_text() == "shared"
    assert (mirrored / "private.txt").read_text() == "mode 600"
    if os.geteuid() == 0:  # another uid reads it: a copy anyone may read, never the original's inode
        assert (mirrored / "private.txt").stat().st_ino != private.stat().st_ino
        assert (mirrored / "private.txt").stat().st_mode & 0o004
    assert os.readlink(mirrored / "link") == "/etc/passwd"  # resolved inside the sandbox, where it is absent
    host, seen = slot.place_writable()
    assert seen == "/job/rw/2" and host.is_dir() and not any(host.iterdir())
    slot.remove()
    assert not slot.path.exists()


def test_a_file_shared_by_runners_starting_at_once_is_copied_whole_for_each(tmp_path: Path):
    """The first python jobs on a fresh node start several runners together; each shares the snapshot
    (once a job failed with 'No such file or directory: …snapshot.tmp' when two copied it at once)."""
    from concurrent.futures import ThreadPoolExecutor

    source = tmp_path / "snapshot"
    source.write_bytes(os.urandom(1 << 20))
    for _ in range(5):
        sandbox = Sandbox([], bwrap=str(tmp_path / "no-bwrap"))
        with ThreadPoolExecutor(8) as pool:
            shared = list(pool.map(sandbox.share, [source] * 8, ["snapshot"] * 8))
        assert {p.read_bytes() == source.read_bytes() for p in shared} == {True}
        assert sorted(p.name for p in sandbox.root().iterdir()) == ["snapshot"]  # no temporary file left

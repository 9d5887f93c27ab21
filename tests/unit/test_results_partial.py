"""A download killed mid-way (kill -9, OOM) leaves its hidden ``.DEST.partial-*`` directory beside DEST: the next
download into DEST removes it, but never the one a download running now is extracting into."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

from shoal._results import ResultsWriter, extract_results, make_folder, write_from_record
from storage.unixfs import cid_of_path

KILLED = """
import sys, time
from pathlib import Path
from shoal._results import ResultsWriter
writer = ResultsWriter(Path(sys.argv[1]), sys.argv[2], 1 << 20, "j-1").__enter__()
writer.feed(sys.stdin.buffer.read())
print(writer._tmp, flush=True)
time.sleep(60)
"""


def _result(tmp_path: Path) -> tuple[str, bytes]:
    """A result's CID and its tar, as a node serves it."""
    src = tmp_path / "src"
    (src / "outputs").mkdir(parents=True)
    (src / "stdout").write_text("42\n")
    (src / "outputs" / "x.txt").write_text("result")
    cid = str(cid_of_path(src))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for directory in (cid, f"{cid}/outputs"):
            info = tarfile.TarInfo(directory)
            info.type = tarfile.DIRTYPE
            tar.addfile(info)
        for name, data in ((f"{cid}/stdout", b"42\n"), (f"{cid}/outputs/x.txt", b"result")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return cid, buf.getvalue()


def _partials(folder: Path) -> set[Path]:
    return set(folder.glob(".r.partial-*"))


def test_a_killed_downloads_partial_directory_is_removed_by_the_next_but_a_running_ones_is_not(tmp_path: Path) -> None:
    cid, tar = _result(tmp_path)
    dest = tmp_path / "dl" / "r"
    killed = subprocess.Popen([sys.executable, "-c", KILLED, str(dest), cid], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=False)
    try:
        killed.stdin.write(tar[:2048])  # its first file and no more
        killed.stdin.close()
        left = Path(killed.stdout.readline().decode().strip())
        assert (left / "result" / "outputs").is_dir()
    finally:
        killed.send_signal(signal.SIGKILL)
        killed.wait()
    unlocked = dest.parent / ".r.partial-k1ll3d00"  # as one made before the partial directories had locks
    (unlocked / "result").mkdir(parents=True)
    (unlocked / "result" / "stdout").write_text("4")
    assert _partials(dest.parent) == {left, unlocked}

    with ResultsWriter(dest, cid, 1 << 20, "j-1") as running:
        running.feed(tar[:2048])
        assert extract_results([tar], dest, "j-1", cid) == dest
        assert _partials(dest.parent) == {running._tmp}  # the killed one's gone, the running one's untouched
        running.feed(tar[2048:])
        assert running.finish() == dest
    assert (dest / "outputs" / "x.txt").read_text() == "result"
    assert os.listdir(dest.parent) == ["r"]


def test_a_download_from_the_record_removes_a_killed_ones_partial_directory_too(tmp_path: Path) -> None:
    stale = tmp_path / ".r.partial-k1ll3d00"
    (stale / "result").mkdir(parents=True)
    assert write_from_record({"stdout": "42\n", "exitCode": "0"}, tmp_path / "r") == tmp_path / "r"
    assert sorted(os.listdir(tmp_path)) == ["r"]


def test_without_flock_the_sdk_imports_and_downloads(tmp_path: Path) -> None:
    """Windows has no fcntl: importing it at the top made ``import shoal`` fail there."""
    script = ("import sys; sys.modules['fcntl'] = None\n"
              "from pathlib import Path\n"
              "import shoal\n"
              "from shoal._results import write_from_record\n"
              "write_from_record({'stdout': 'hi'}, Path(sys.argv[1]))\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "r")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "r" / "stdout").read_text() == "hi"
    assert [p.name for p in tmp_path.iterdir()] == ["r"]  # and its partial folder is gone


def test_a_sweeps_downloads_side_by_side_look_over_their_folder_once(tmp_path: Path, monkeypatch) -> None:
    """Each download listed the folder for what killed ones left: 8,000 indexes took 24.5 s instead of 1.9 s."""
    listed: list[Path] = []
    iterdir = Path.iterdir
    monkeypatch.setattr(Path, "iterdir", lambda self: (listed.append(self), iterdir(self))[1])
    stale = tmp_path / ".7.partial-k1ll3d00"  # a killed download of another index's
    (stale / "result").mkdir(parents=True)
    for index in range(50):
        write_from_record({"stdout": f"{index}\n"}, tmp_path / str(index))
    assert listed.count(tmp_path) == 1 and not stale.exists()
    assert sorted(os.listdir(tmp_path), key=int) == [str(i) for i in range(50)]


def test_a_users_folder_named_like_a_partial_one_is_never_touched(tmp_path: Path) -> None:
    """Any hidden ``.X.partial-Y`` folder beside the destination was removed (a lock file put in it first)."""
    mine = tmp_path / ".thesis.partial-2024"
    mine.mkdir()
    (mine / "ch1.tex").write_text("chapter 1")
    (mine / "result").mkdir()  # even one holding a folder of that name
    data = tmp_path / ".experiment.partial-v2" / "result"  # or that alone, the user's data in it
    data.mkdir(parents=True)
    (data / "measurements.csv").write_text("precious")
    (tmp_path / ".empty.partial-v3").mkdir()
    write_from_record({"stdout": "42\n"}, tmp_path / "r")
    assert sorted(p.name for p in mine.iterdir()) == ["ch1.tex", "result"]
    assert (data / "measurements.csv").read_text() == "precious"
    assert sorted(os.listdir(tmp_path)) == [".empty.partial-v3", ".experiment.partial-v2", ".thesis.partial-2024", "r"]


def test_into_an_existing_folder_nothing_of_the_users_is_replaced(tmp_path: Path) -> None:
    """Results land beside what is there; a name they hold already there with other content writes nothing,
    and the same results again change nothing."""
    import pytest

    from shoal import ShoalAPIError

    cid, tar = _result(tmp_path)
    dest = tmp_path / "project"
    (dest / "outputs").mkdir(parents=True)
    (dest / "outputs" / "data.csv").write_text("precious")
    (dest / "notes").write_text("mine")
    with pytest.raises(ShoalAPIError) as info:
        extract_results([tar], dest, "j-1", cid)
    assert info.value.code == "dest_exists" and str(info.value).startswith(f"{dest / 'outputs'} exists and differs")
    assert sorted(os.listdir(dest)) == ["notes", "outputs"] and os.listdir(dest / "outputs") == ["data.csv"]

    (dest / "outputs" / "data.csv").unlink()
    (dest / "outputs" / "x.txt").write_text("result")  # what the results hold there: the same
    assert extract_results([tar], dest, "j-1", cid) == dest
    assert extract_results([tar], dest, "j-1", cid) == dest
    assert sorted(os.listdir(dest)) == ["notes", "outputs", "stdout"]
    assert (dest / "stdout").read_text() == "42\n" and (dest / "notes").read_text() == "mine"
    (dest / "stdout").write_text("changed")
    with pytest.raises(ShoalAPIError, match="stdout exists and differs"):
        write_from_record({"stdout": "42\n"}, dest)
    assert (dest / "stdout").read_text() == "changed"
    assert sorted(os.listdir(tmp_path)) == ["project", "src"]  # no partial folder left beside it


def test_a_destination_that_cannot_be_written_is_one_plain_error(tmp_path: Path) -> None:
    import pytest

    from shoal import ShoalAPIError

    (tmp_path / "file").write_text("x")
    for dest, why in ((tmp_path / "file" / "r", f"{tmp_path / 'file'} is not a folder"),
                      (tmp_path / ("a" * 300), "File name too long")):
        with pytest.raises(ShoalAPIError) as info:
            write_from_record({"stdout": "42\n"}, dest)
        assert info.value.code == "dest_unwritable"
        assert str(info.value) == f"cannot write the results to {dest}: {why}; nothing was written"
    with pytest.raises(ShoalAPIError) as info:  # a sweep's folder, its indexes' below it
        make_folder(tmp_path / "file")
    assert info.value.code == "dest_unwritable" and "is not a folder" in str(info.value)

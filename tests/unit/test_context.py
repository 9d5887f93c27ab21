import io
import tarfile

import pytest

from shoal._context import ContextTooLarge, context_files, pack_context


def names(data: bytes) -> set[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        return {m.name.removeprefix("context/") for m in tar.getmembers() if m.isfile()}


def test_packs_the_program_and_leaves_out_ignored_files(tmp_path):
    (tmp_path / "main.py").write_text("print(1)\n")
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "x.csv").write_text("1,2\n")
    (tmp_path / "data" / "big.bin").write_bytes(b"0" * 10)
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "HEAD").write_text("ref")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "m.pyc").write_bytes(b"x")
    (tmp_path / "notes.log").write_text("log")
    (tmp_path / ".gitignore").write_text("*.log\n# comment\n!keep.log\n")
    (tmp_path / ".shoalignore").write_text("data/big.bin\n")
    assert names(pack_context(tmp_path)) == {"main.py", "data/x.csv", ".gitignore", ".shoalignore"}


def test_same_files_pack_to_the_same_bytes(tmp_path):
    (tmp_path / "main.py").write_text("print(1)\n")
    first = pack_context(tmp_path)
    (tmp_path / "main.py").touch()  # a new mtime changes nothing
    assert pack_context(tmp_path) == first


def test_too_large_says_what_to_do(tmp_path):
    (tmp_path / "huge.bin").write_bytes(b"0" * 2048)
    (tmp_path / "main.py").write_text("print(1)\n")
    with pytest.raises(ContextTooLarge, match=r"huge.bin .*\.shoalignore"):
        pack_context(tmp_path, max_bytes=1024)


def test_top_level_anchored_and_directory_patterns(tmp_path):
    (tmp_path / "build").mkdir()
    (tmp_path / "build" / "a").write_text("a")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "build").write_text("a file named build is kept: the pattern is for directories")
    (tmp_path / "out.txt").write_text("x")
    (tmp_path / "src" / "out.txt").write_text("x")
    (tmp_path / ".shoalignore").write_text("build/\n/out.txt\n")
    assert {p.as_posix() for p in context_files(tmp_path)} == {".shoalignore", "src/build", "src/out.txt"}

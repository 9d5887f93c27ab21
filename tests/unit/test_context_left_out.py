"""What the working directory's upload leaves out is told, not silently dropped: symlinks (never followed)
and the top-level entries an ignore file names; ``!`` in .shoalignore brings an ignored one back."""

from __future__ import annotations

from pathlib import Path

import pytest

from shoal._context import context_files
from tests.unit.test_cli import FakeClient, run
from tests.unit.test_cli import fake as fake  # the fixture


def project(root: Path) -> Path:
    """A script, a symlinked data folder and file, a folder .gitignore leaves out and ignored logs."""
    (root / "shared").mkdir()
    (root / "shared" / "prices.csv").write_text("1,2\n")
    proj = root / "proj"
    (proj / "big").mkdir(parents=True)
    (proj / "big" / "model.bin").write_bytes(b"0")
    (proj / "src").mkdir()
    (proj / "src" / "debug.log").write_text("nested: not worth a note")
    (proj / "main.py").write_text("print(open('data/prices.csv').read())\n")
    (proj / "data").symlink_to(root / "shared")
    (proj / "prices.csv").symlink_to(root / "shared" / "prices.csv")
    (proj / ".gitignore").write_text("big/\n*.log\n")
    return proj


def test_symlinks_and_ignored_top_level_entries_are_reported(tmp_path: Path) -> None:
    proj = project(tmp_path)
    left_out: list[str] = []
    files = {p.as_posix() for p in context_files(proj, left_out)}
    assert files == {".gitignore", "main.py"}  # a symlink is never followed
    assert left_out == ["big/ (.gitignore)", "data (a symlink)", "prices.csv (a symlink)"]


def test_a_negation_in_shoalignore_brings_back_what_gitignore_leaves_out(tmp_path: Path) -> None:
    proj = project(tmp_path)
    (proj / ".shoalignore").write_text("!big/\n")
    assert "big/model.bin" in {p.as_posix() for p in context_files(proj)}


def test_no_negation_brings_back_a_folder_left_out_whatever_the_ignore_files_say(tmp_path: Path) -> None:
    """A whitelist .gitignore (``*``, ``!*/``, ``!*.py``) or ``!*`` must not send a repository's config (it can
    hold a token), a virtualenv, the client's key folder or ~/.ssh to other people's nodes."""
    proj = project(tmp_path)
    secrets = ((".git", "config"), (".venv/lib", "site.py"), (".shoal", "client.key"), (".ssh", "id_ed25519"))
    for folder, name in secrets:
        (proj / folder).mkdir(parents=True)
        (proj / folder / name).write_text("secret")
    (proj / ".gitignore").write_text("*\n!*/\n!*.py\n")
    (proj / ".shoalignore").write_text("!*\n")
    files = {p.as_posix() for p in context_files(proj)}
    assert "main.py" in files and "big/model.bin" in files
    assert not [f for f in files if f.startswith((".git/", ".venv/", ".shoal/", ".ssh/"))], files


def test_run_python_prints_what_the_upload_left_out(fake: FakeClient, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(project(tmp_path))
    result = run("run", "python", "--no-wait", "main.py")
    assert result.exit_code == 0, result.stderr
    note = [line for line in result.stderr.splitlines() if line.startswith("left out of the upload:")]
    assert len(note) == 1
    assert "big/ (.gitignore), data (a symlink), prices.csv (a symlink)" in note[0]

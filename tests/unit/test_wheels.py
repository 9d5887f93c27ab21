"""``shoal run python -r``: ``.shoal-wheels/`` holds only what this run resolved (pip offline, from a local folder)."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from cli.wheels import WHEEL_DIR, fetch_wheels


def wheel(folder: Path, name: str, version: str) -> None:
    """A minimal pure-Python wheel, zipped by hand."""
    dist = f"{name}-{version}.dist-info"
    files = {f"{name}/__init__.py": "",
             f"{dist}/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
             f"{dist}/WHEEL": "Wheel-Version: 1.0\nGenerator: hand\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{dist}/RECORD"] = "".join(f"{f},,\n" for f in files) + f"{dist}/RECORD,,\n"
    folder.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as z:
        for arcname, text in files.items():
            z.writestr(arcname, text)


def test_a_wheel_from_an_earlier_run_is_neither_shipped_nor_listed(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    index = tmp_path / "index"
    for name, version in (("tabulate", "0.9.0"), ("tabulate", "0.8.10"), ("six", "1.16.0")):
        wheel(index, name, version)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(index))
    project = tmp_path / "project"
    project.mkdir()
    requirements = project / "requirements.txt"
    requirements.write_text("tabulate==0.9.0\nsix\n")
    assert fetch_wheels(["requirements.txt"], project) == [f"{WHEEL_DIR}/six-1.16.0-py3-none-any.whl",
                                                           f"{WHEEL_DIR}/tabulate-0.9.0-py3-none-any.whl"]
    requirements.write_text("tabulate==0.8.10\n")  # another version, and six no longer wanted
    assert fetch_wheels(["requirements.txt"], project) == [f"{WHEEL_DIR}/tabulate-0.8.10-py3-none-any.whl"]
    assert sorted(p.name for p in (project / WHEEL_DIR).iterdir()) == ["tabulate-0.8.10-py3-none-any.whl"]


def test_a_wheels_folder_that_is_a_link_is_refused_and_what_it_points_to_left_alone(tmp_path: Path) -> None:
    """The folder is replaced on each run: one that is a link (or a file) is the user's, not Shoal's."""
    from cli.errors import EXIT_USAGE, CLIError

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    project = tmp_path / "project"
    project.mkdir()
    (project / "requirements.txt").write_text("six\n")
    (project / WHEEL_DIR).symlink_to(mine)
    with pytest.raises(CLIError) as refused:
        fetch_wheels(["requirements.txt"], project)
    assert refused.value.code == EXIT_USAGE and "remove or rename it" in str(refused.value)
    assert (mine / "notes.txt").read_text() == "keep me"

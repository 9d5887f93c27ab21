"""``shoal run python -r …``: pure-Python wheels resolved here, shipped in the job's context.

Pyodide cannot fetch packages (jobs run offline), so the client downloads wheels with pip into
``.shoal-wheels/`` of the working directory, which is packed with the job, and names them as the
job's requirements. The folder holds what the last ``-r`` resolved and nothing else: the job would
install a wheel left from an earlier run too. A requirement with no pure-Python wheel fails here,
before anything is submitted.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cli.errors import EXIT_USAGE, CLIError

WHEEL_DIR = ".shoal-wheels"
# Where the node's Pyodide is pinned (scripts/install-pyodide installs exactly this version).
PYODIDE_PACKAGE = Path(__file__).resolve().parents[1] / "executors" / "pyodide_runner" / "package.json"


def pyodide_python(package_json: Path = PYODIDE_PACKAGE) -> str:
    """The CPython line (``"3.14"``) of the pinned Pyodide, whose pure-Python wheels its interpreter accepts.

    Pyodide's version names its Python (since 314.0.0): 314.0.7 runs CPython 3.14. The pin in
    ``package.json`` is the one source of truth.
    """
    try:
        pinned = str(json.loads(package_json.read_text())["dependencies"]["pyodide"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CLIError(f"cannot tell which Python the python engine runs: no Pyodide pin in {package_json} ({e})",
                       code=EXIT_USAGE) from None
    m = re.fullmatch(r"[~^=v]*(\d)(\d{2,})\.\d+\.\d+.*", pinned)
    if m is None:
        raise CLIError(f"cannot tell which Python Pyodide {pinned} runs (expected a version like 314.0.7)",
                       code=EXIT_USAGE)
    return f"{m[1]}.{int(m[2])}"


def _requirement_lines(items: list[str], cwd: Path) -> list[str]:
    lines: list[str] = []
    for item in items:
        path = cwd / item
        if item.endswith(".txt") and path.is_file():
            lines += [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines()]
        elif item.endswith(".txt"):
            raise CLIError(f"no such requirements file: {item}", code=EXIT_USAGE)
        else:
            lines.append(item)
    return [ln for ln in lines if ln]


def fetch_wheels(items: list[str], cwd: Path) -> list[str]:
    """Download the requirements (and their dependencies) as pure-Python wheels; return their paths."""
    wanted = _requirement_lines(items, cwd)
    if not wanted:
        return []
    target = cwd / WHEEL_DIR
    if target.is_symlink() or (target.exists() and not target.is_dir()):
        raise CLIError(f"{target} is not a folder of Shoal's: it holds the wheels of the last -r, and is replaced "
                       "on each run (remove or rename it)", code=EXIT_USAGE)
    # pip resolves into a fresh folder, which then replaces .shoal-wheels/; the wheels already there are
    # offered to pip (--find-links) so that what is unchanged is not downloaded again
    earlier = ["--find-links", str(target)] if target.is_dir() else []
    with tempfile.TemporaryDirectory(prefix="shoal-wheels-") as fresh:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check", "--dest", fresh,
               *earlier, "--only-binary=:all:", "--platform", "any", "--implementation", "py", "--abi", "none",
               "--python-version", pyodide_python(), *wanted]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["pip failed"])[-1]
            raise CLIError(f"cannot get pure-Python wheels for {', '.join(wanted)}: {last} (the python engine runs "
                           "offline in Pyodide and can only install pure-Python wheels)", code=EXIT_USAGE)
        wheels = sorted(Path(fresh).glob("*.whl"))
        impure = [p.name for p in wheels if not p.name.endswith("-none-any.whl")]
        if impure:
            raise CLIError(f"not pure-Python wheels: {', '.join(impure)}", code=EXIT_USAGE)
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()
        for wheel in wheels:
            shutil.move(wheel, target / wheel.name)
    return [f"{WHEEL_DIR}/{p.name}" for p in wheels]

"""Install what an engine needs beside the wheel: the pinned Pyodide of the ``python`` engine.

The wheel carries the runner (``executors/pyodide_runner``: runner.mjs, driver.py, package.json and
its lock file) but not ``node_modules`` (14 MB of Pyodide, fetched from the npm registry). ``shoal
pyodide install`` (what ``scripts/install-pyodide`` does in a checkout) runs ``npm ci`` next to
runner.mjs, i.e. inside the installed package, so the directory must be writable by whoever runs
it (a virtualenv's owner; root for a system-wide install). It is idempotent: a stamp holding the
lock file's SHA-256 makes a second run a no-op.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

from executors.base import ExecutorError

STAMP = Path("node_modules") / ".shoal-installed"  # what scripts/install-pyodide writes too
MIN_NODE = 20  # the sandboxed runner starts Node with its permission model (--experimental-permission)
NPM_TIMEOUT = 600.0  # seconds for npm ci (a 14 MB download, then unpacking)


def installed_pyodide(runner_dir: Path) -> str | None:
    """The Pyodide version installed in ``runner_dir`` as its lock file pins it, or None (missing or stale)."""
    try:
        stamp = (runner_dir / STAMP).read_text().strip()
        package = json.loads((runner_dir / "node_modules" / "pyodide" / "package.json").read_text())
        want = hashlib.sha256((runner_dir / "package-lock.json").read_bytes()).hexdigest()
    except (OSError, ValueError):
        return None
    return str(package.get("version")) if stamp == want else None


@functools.lru_cache(maxsize=16)
def _node_version(path: str, mtime_ns: int) -> str:
    try:
        return subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def node_too_old(node: str) -> str | None:
    """Why the Node.js ``node`` cannot run the python engine (older than ``MIN_NODE``), or None.

    ``node --version`` runs once per binary (path and modification time): ``problem()`` asks before every job.
    """
    path = shutil.which(node) or node
    try:
        mtime_ns = os.stat(path).st_mtime_ns
    except OSError:
        return f"Node.js ({node}) is not installed"
    version = _node_version(path, mtime_ns)
    major = version.removeprefix("v").split(".")[0]
    if not major.isdigit():
        return f"`{path} --version` did not print a version: the python engine needs Node.js >= {MIN_NODE}"
    if int(major) < MIN_NODE:
        return f"Node.js {version} ({path}) is too old: the python engine needs Node.js >= {MIN_NODE}"
    return None


def install_pyodide(runner_dir: Path, *, node: str = "node", npm: str = "npm") -> tuple[str, bool]:
    """Install the pinned Pyodide into ``runner_dir/node_modules`` unless it is there already.

    Returns:
        (the Pyodide version, whether this call installed it).

    Raises:
        ExecutorError: Node.js or npm is missing or too old, the directory is not writable, or npm failed.
    """
    if (version := installed_pyodide(runner_dir)) is not None:
        return version, False
    for tool in (node, npm):
        if shutil.which(tool) is None:
            raise ExecutorError(f"{tool} is not installed: the python engine needs Node.js >= {MIN_NODE} and npm")
    major = subprocess.run([node, "-p", "process.versions.node.split('.')[0]"], capture_output=True, text=True,
                           timeout=60).stdout.strip()  # fmt: skip
    if not major.isdigit() or int(major) < MIN_NODE:
        raise ExecutorError(f"Node.js >= {MIN_NODE} is required (found {major or 'an unknown version'})")
    if not (runner_dir / "package-lock.json").is_file():
        raise ExecutorError(f"{runner_dir} has no package-lock.json: a wheel built without its package data?")
    try:
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=runner_dir,
                              capture_output=True, text=True, timeout=NPM_TIMEOUT)  # fmt: skip
    except subprocess.TimeoutExpired:
        raise ExecutorError(f"npm ci in {runner_dir} took more than {NPM_TIMEOUT:g} s") from None
    except PermissionError as exc:
        raise ExecutorError(f"cannot write to {runner_dir}: {exc}") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise ExecutorError(f"npm ci in {runner_dir} failed: {last}")
    want = hashlib.sha256((runner_dir / "package-lock.json").read_bytes()).hexdigest()
    (runner_dir / STAMP).write_text(want + "\n")
    version = installed_pyodide(runner_dir)
    if version is None:
        raise ExecutorError(f"npm ci in {runner_dir} left no node_modules/pyodide")
    return version, True

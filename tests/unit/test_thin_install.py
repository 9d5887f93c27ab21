"""Import hygiene for the thin install: the SDK and the client commands import no node-only package.

``pip install shoal`` brings the SDK's dependencies only; the node's come with ``shoal[node]``.
Each check runs in a fresh interpreter whose import system refuses the node extra's modules, as
a thin install would (the end-to-end proof, a real wheel in a fresh venv, is
``tests/integration/test_thin_wheel.py``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

from cli.extras import NODE_MODULES

REPO = Path(__file__).resolve().parents[2]

# Blocks the node extra's modules (and what only they pull in) the way Python documents: a None in
# sys.modules makes ``import X`` raise ModuleNotFoundError and ``find_spec(X)`` return None, as a
# package that is not installed does. ``LOADED`` lists any that got imported all the same.
_BLOCKER = """
import sys
BLOCKED = {blocked!r}
sys.modules.update(dict.fromkeys(BLOCKED))
def LOADED():
    return sorted(m for m, module in sys.modules.items() if m.split(".")[0] in BLOCKED and module is not None)
"""
NODE_ONLY = (*NODE_MODULES, "starlette", "multiaddr", "h2", "wsproto")  # the last four come with the extra


def run_thin(code: str, *args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "NO_COLOR": "1"}
    if home is not None:
        env["SHOAL_HOME"] = str(home)
    program = _BLOCKER.format(blocked=set(NODE_ONLY)) + code
    return subprocess.run([sys.executable, "-c", program, *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=120)  # fmt: skip


def test_the_node_extra_is_exactly_what_require_node_checks() -> None:
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    names = {re.split(r"[<>=!~\[ ]", requirement)[0].lower() for requirement in extras["node"]}
    assert names == set(NODE_MODULES)


def test_the_thin_dependencies_name_no_node_package() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=!~\[ ]", requirement)[0].lower() for requirement in project["dependencies"]}
    assert names == {"httpx", "anyio", "pydantic", "typer", "rich", "cryptography", "pyyaml"}


def test_the_sdk_imports_without_the_node_extra(tmp_path: Path) -> None:
    result = run_thin("""
import shoal
for name in shoal.__all__:
    getattr(shoal, name)
import jobs, jobs.sweep, jobs.views, jobs.messages
from shoal import _results, _sse, _context
client = shoal.Client("http://127.0.0.1:9")
client.close()
print("ok", LOADED())
""", home=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok []"


def test_every_client_command_loads_without_the_node_extra(tmp_path: Path) -> None:
    """Every command's --help (which builds each command from its signature), and the client modules."""
    result = run_thin("""
import typer
from cli.main import app
import cli.connect, cli.errors, cli.lookup, cli.render, cli.specs, cli.waiting, cli.wheels
root = typer.main.get_command(app)
def walk(command, path):
    yield path
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            yield from walk(sub, [*path, name])
paths = list(walk(root, []))
for path in paths:
    code = root.main([*path, "--help"], prog_name="shoal", standalone_mode=False)
    assert code in (0, None), (path, code)
print("commands", len(paths), LOADED())
""", home=tmp_path)  # fmt: skip
    assert result.returncode == 0, result.stderr
    count, loaded = re.fullmatch(r"commands (\d+) (.*)", result.stdout.strip().splitlines()[-1]).groups()
    assert int(count) > 25 and loaded == "[]"


def test_a_node_command_without_the_node_extra_says_which_extra_in_one_line(tmp_path: Path) -> None:
    for command in (["serve"], ["devstack"], ["bench"], ["images", "build"], ["network-key", "new"]):
        result = run_thin("from cli.main import main; sys.argv[1:] = " + repr(command) + "; main()", home=tmp_path)
        assert result.returncode == 2, (command, result.stderr)
        assert result.stdout == ""
        lines = result.stderr.splitlines()
        assert len(lines) == 1, result.stderr
        assert lines[0].startswith(f"Error: shoal {' '.join(command)} runs a node, which needs the 'node' extra: "
                                   "pip install 'shoal[node]' (missing here: libp2p, trio, fastapi"), lines[0]

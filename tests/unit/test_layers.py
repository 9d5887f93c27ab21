"""Imports point one way: no import circle between project modules, function-level imports included.

Each module of the packages that ``pyproject.toml`` ships is parsed (not imported) and every
``import``/``from … import`` anywhere in it counts: at the top, inside functions, under
``TYPE_CHECKING``. An import names the module it loads; ``from package import name`` names the
package itself (its ``__init__`` re-exports ``name``) unless ``name`` is a submodule. The parent
packages Python initialises on the way are not counted: they are where a circle would be harmless
(a package's ``__init__`` importing its own submodules is how re-exports work).
"""

from __future__ import annotations

import ast
import tomllib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Circles found in packages owned by other branches of issue #18, listed so that this test checks
# the whole tree today: each entry is the exact set of modules of one circle (a strongly connected
# component), with one cycle through it in the comment. An entry that no longer matches fails too,
# so the list shrinks as the circles are broken; it should end empty.
# (None were found when this test was written, beyond the one it was written to break.)
KNOWN_CIRCLES: list[frozenset[str]] = []


def project_modules() -> dict[str, Path]:
    """Every module of the packages pyproject.toml includes, by dotted name."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = sorted({p.rstrip("*").rstrip(".") for p in patterns})
    modules: dict[str, Path] = {}
    for top in tops:
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if not all((ROOT / Path(*parts[:i]) / "__init__.py").exists() for i in range(1, len(parts))):
                continue  # not inside a package (a stray script)
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imported(name: str, path: Path, modules: dict[str, Path]) -> Iterator[str]:
    """The project modules that module ``name`` (at ``path``) imports, anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                found = _known(alias.name, modules)
                if found:
                    yield found
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found = submodule if submodule in modules else _known(base, modules)
                if found:
                    yield found


def _known(dotted: str, modules: dict[str, Path]) -> str | None:
    """The project module ``dotted`` loads: itself, or the longest prefix that is a module."""
    parts = dotted.split(".")
    for end in range(len(parts), 0, -1):
        candidate = ".".join(parts[:end])
        if candidate in modules:
            return candidate
    return None


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    return {name: {m for m in imported(name, path, modules) if m != name} for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.add(member)
                    if member == node:
                        break
                if len(members) > 1:
                    found.append(frozenset(members))
    return found


def cycle_through(members: frozenset[str], graph: dict[str, set[str]]) -> list[str]:
    """One import cycle inside a circle, as a path that ends where it starts (for the message)."""
    start = min(members)
    paths = {start: [start]}
    frontier = [start]
    while frontier:  # breadth first: the shortest way back to start
        following = []
        for node in frontier:
            for child in sorted(graph[node] & members):
                if child == start:
                    return [*paths[node], start]
                if child not in paths:
                    paths[child] = [*paths[node], child]
                    following.append(child)
        frontier = following
    return [start]


def test_the_graph_sees_every_kind_of_import() -> None:
    graph = import_graph()
    assert "node.api.app" in graph and "cli.main" in graph and "benchmarks.net" in graph
    assert "node.api.app" in graph["node.daemon"]  # the daemon builds the app
    assert "jobs" in graph["node.api.routes.jobs"]  # ``from jobs import …``: the package's re-exports


def test_a_circle_held_apart_by_function_level_imports_is_found() -> None:
    """The circle this test was written for: app and sweeps imported each other, app the daemon."""
    graph = {"node.api.app": {"node.api.sweeps", "node.daemon"}, "node.api.sweeps": {"node.api.app"},
             "node.daemon": {"node.api.app"}, "jobs": set()}
    (found,) = circles(graph)
    assert found == {"node.api.app", "node.api.sweeps", "node.daemon"}
    assert cycle_through(found, graph) == ["node.api.app", "node.api.sweeps", "node.api.app"]


def test_no_import_circle_between_project_modules() -> None:
    graph = import_graph()
    found = circles(graph)
    new = [c for c in found if c not in KNOWN_CIRCLES]
    gone = [c for c in KNOWN_CIRCLES if c not in found]
    assert not new, "import circles:\n" + "\n".join(" -> ".join(cycle_through(c, graph)) for c in new)
    assert not gone, "circles no longer there (remove them from KNOWN_CIRCLES):\n" + "\n".join(
        ", ".join(sorted(c)) for c in gone)


def test_the_api_does_not_import_the_daemon_or_the_cli() -> None:
    graph = import_graph()
    api = {name for name in graph if name == "node.api" or name.startswith("node.api.")}
    for name in api:
        assert not {m for m in graph[name] if m == "node.daemon" or m.startswith("cli")}, name

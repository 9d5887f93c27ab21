"""One exception tree: every exception a project module defines descends from ``jobs.errors.ShoalError``.

The project's modules are those of the packages ``pyproject.toml`` ships; each is imported, then
every ``BaseException`` subclass whose ``__module__`` is one of them is checked.
"""

from __future__ import annotations

import importlib
import pkgutil
import tomllib
from collections.abc import Iterator
from pathlib import Path

from jobs.errors import ShoalError

ROOT = Path(__file__).resolve().parents[2]

# Exceptions still outside the tree, in files being moved under it on other branches; this list is
# emptied once those land. Nothing may be added to it.
NOT_YET_IN_THE_TREE = frozenset({
    "requester.service.IdempotencyConflict",
    "requester.service.UnknownJob",
})


def project_modules() -> list[str]:
    """Every module of the packages ``pyproject.toml`` ships (``[tool.setuptools.packages.find]``)."""
    with open(ROOT / "pyproject.toml", "rb") as f:
        include = tomllib.load(f)["tool"]["setuptools"]["packages"]["find"]["include"]
    names = []
    for top in sorted(pattern.rstrip("*") for pattern in include):
        package = importlib.import_module(top)
        names.append(top)
        names.extend(info.name for info in pkgutil.walk_packages(package.__path__, f"{top}."))
    return names


def subclasses(cls: type[BaseException]) -> Iterator[type[BaseException]]:
    for sub in cls.__subclasses__():
        yield sub
        yield from subclasses(sub)


def test_every_project_exception_descends_from_shoal_error() -> None:
    modules = project_modules()
    for name in modules:
        importlib.import_module(name)
    ours = {cls for cls in subclasses(BaseException) if cls.__module__ in set(modules)}
    assert len(ours) > 20, f"only {len(ours)} project exceptions found: the module walk is broken"
    outside = sorted(f"{cls.__module__}.{cls.__qualname__}" for cls in ours if not issubclass(cls, ShoalError))
    offenders = [name for name in outside if name not in NOT_YET_IN_THE_TREE]
    print("outside ShoalError:", *outside, sep="\n  ")
    assert not offenders, f"exceptions outside ShoalError: {', '.join(offenders)}"
    stale = NOT_YET_IN_THE_TREE - set(outside)
    assert not stale, f"now in the tree, take them off NOT_YET_IN_THE_TREE: {', '.join(sorted(stale))}"

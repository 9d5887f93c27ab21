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
    assert not outside, f"exceptions outside ShoalError: {', '.join(outside)}"

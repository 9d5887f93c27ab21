"""Engine name → executor. ``--noop`` swaps the registry, not the code path."""

from __future__ import annotations

from collections.abc import Callable

from executors.base import Executor
from executors.noop import NoopExecutor
from jobs import ENGINES


class ExecutorRegistry:
    def __init__(self, executors: dict[str, Executor]) -> None:
        self._executors = dict(executors)

    @classmethod
    def all_noop(cls, noop: NoopExecutor | None = None) -> ExecutorRegistry:
        executor = noop or NoopExecutor()
        return cls({name: executor for name in ENGINES})

    def get(self, engine: str) -> Executor:
        try:
            return self._executors[engine]
        except KeyError:
            raise KeyError(f"engine {engine!r} is not supported here (have: {', '.join(self.installed())})") from None

    def map(self, wrap: Callable[[Executor], Executor]) -> ExecutorRegistry:
        """The same engines, each wrapped (fault injection)."""
        return ExecutorRegistry({name: wrap(ex) for name, ex in self._executors.items()})

    def installed(self) -> list[str]:
        """Engines this node can run now: what it advertises and bids on."""
        return sorted(name for name, ex in self._executors.items() if ex.is_installed())


def default_registry() -> ExecutorRegistry:
    """The engines a real node offers. Further engines join here as they are built."""
    return ExecutorRegistry({"noop": NoopExecutor()})

"""Engine name → executor. ``--noop`` swaps the registry, not the code path."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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

    def executors(self) -> list[Executor]:
        """Each distinct executor once (``--noop`` maps every engine to the same one)."""
        return list({id(ex): ex for ex in self._executors.values()}.values())

    def installed(self) -> list[str]:
        """Engines this node can run now: what it advertises and bids on."""
        return sorted(name for name, ex in self._executors.items() if ex.is_installed())

    def problems(self) -> dict[str, str]:
        """Engines this node does not offer, and why, for those that can say (``problem()``)."""
        return {name: why for name, ex in self._executors.items() if (why := ex.problem()) is not None}

    def containment_notes(self) -> dict[str, str]:
        """Engines whose jobs this node holds less than it could, and how (``containment_note()``)."""
        return {name: note for name, ex in self._executors.items() if (note := ex.containment_note()) is not None}


def default_registry(data_dir: Path, node_label: str, *, allow_network: bool = False,
                     python_pool: int = 2, unsandboxed_python: bool = False,
                     allow_images: tuple[str, ...] = (), max_image_size: int | None = None,
                     image_cache_size: int | None = None) -> ExecutorRegistry:
    """The engines a real node offers; each says by ``is_installed()`` whether it can run now."""
    from executors.docker import DockerExecutor
    from executors.docker_pulls import DEFAULT_MAX_IMAGE
    from executors.pyodide import PyodideExecutor
    from executors.wasm import WasmExecutor

    return ExecutorRegistry({
        "noop": NoopExecutor(),
        "docker": DockerExecutor(node_label, allow_network=allow_network, allow_images=allow_images,
                                 pulled_record=data_dir / "cache" / "docker-pulled-images.txt",
                                 max_image_size=max_image_size or DEFAULT_MAX_IMAGE,
                                 image_cache_size=image_cache_size),
        "wasm": WasmExecutor(data_dir / "cache" / "wasm"),
        "python": PyodideExecutor(data_dir / "cache" / "pyodide", pool_size=python_pool,
                                  unsandboxed=unsandboxed_python, node_label=node_label),
    })

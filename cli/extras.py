"""The node extra: ``pip install shoal`` is the SDK and the client commands; a node needs ``shoal[node]``.

The commands that run a node (``serve``, ``devstack``, ``bench``, ``images build``,
``network-key new``) call ``require_node`` first, so that a thin install says in one line what
to install instead of failing on the first missing import. The names below are the import names
of ``[project.optional-dependencies] node`` in pyproject.toml (a test keeps the two equal).
"""

from __future__ import annotations

from importlib.util import find_spec

NODE_EXTRA = "node"
NODE_MODULES = ("libp2p", "trio", "fastapi", "hypercorn", "psutil", "docker", "wasmtime")


def missing_node_modules() -> list[str]:
    """The node extra's modules that this Python cannot import (empty when the extra is installed)."""
    return [name for name in NODE_MODULES if find_spec(name) is None]


def require_node(command: str) -> None:
    """Raise a one-line usage error if ``shoal COMMAND`` cannot run here for want of the node extra."""
    missing = missing_node_modules()
    if missing:
        from cli.errors import EXIT_USAGE, CLIError

        raise CLIError(
            f"shoal {command} runs a node, which needs the '{NODE_EXTRA}' extra: pip install 'shoal[{NODE_EXTRA}]'"
            f" (missing here: {', '.join(missing)})",
            code=EXIT_USAGE,
        )

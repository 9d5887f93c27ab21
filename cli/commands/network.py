"""``shoal id``, ``peers``, ``nodes``, ``version``: the node the CLI talks to and what it sees."""

from __future__ import annotations

import sys

import typer

from cli.arguments import Json, Output
from cli.connect import client


def node_id(ctx: typer.Context, json_: Json = False, output: Output = None) -> None:
    """This node: peer id, addresses, roles, engines and capacity."""
    from cli.render import emit, node_view, output_format, show

    fmt = output_format(json_, output)
    status = client(ctx, timeout=10).node()
    emit(status, fmt, lambda: show(node_view(status)))


def peers(ctx: typer.Context, json_: Json = False, output: Output = None) -> None:
    """Peers this node is connected to, one per line."""
    from cli.render import emit, output_format
    from cli.terminal import printable

    fmt = output_format(json_, output)
    result = client(ctx, timeout=10).peers()
    emit(result, fmt, lambda: print("".join(f"{printable(peer)}\n" for peer in result.peers), end=""))


def nodes(ctx: typer.Context, json_: Json = False, output: Output = None) -> None:
    """Compute nodes: engines and free/total capacity."""
    from cli.render import emit, nodes_table, output_format, show

    fmt = output_format(json_, output)
    result = client(ctx, timeout=10).nodes()

    def human() -> None:
        if result.nodes:
            show(nodes_table(result))
        else:
            print("No compute nodes known yet.", file=sys.stderr)

    emit(result, fmt, human)


def version(ctx: typer.Context, json_: Json = False, output: Output = None) -> None:
    """The CLI's version, and the node's if one is reachable."""
    from cli.render import emit, output_format
    from cli.terminal import printable
    from shoal import ShoalAPIError

    fmt = output_format(json_, output)
    cli_version = _cli_version()
    try:
        node_version: str | None = client(ctx, timeout=5).version()
        problem = ""
    except ShoalAPIError as exc:
        node_version, problem = None, " ".join(str(exc).split())

    def human() -> None:
        print(f"shoal {cli_version}")
        print(printable(f"node  {node_version}" if node_version else f"node  not reachable ({problem})"))

    emit({"cli": cli_version, "node": node_version}, fmt, human)


def _cli_version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("shoal")
    except PackageNotFoundError:
        return "unknown (not installed)"

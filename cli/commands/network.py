"""``shoal id``, ``peers``, ``nodes``, ``version``: the node the CLI talks to and what it sees."""

from __future__ import annotations

import sys

import typer

from cli.arguments import Json
from cli.connect import client


def node_id(ctx: typer.Context, json_: Json = False) -> None:
    """This node: peer id, addresses, roles, engines and capacity."""
    status = client(ctx, timeout=10).node()
    from cli.render import node_view, print_json, show

    if json_:
        return print_json(status)
    show(node_view(status))
    return None


def peers(ctx: typer.Context, json_: Json = False) -> None:
    """Peers this node is connected to, one per line."""
    result = client(ctx, timeout=10).peers()
    if json_:
        from cli.render import print_json

        return print_json(result)
    for peer in result.peers:
        print(peer)
    return None


def nodes(ctx: typer.Context, json_: Json = False) -> None:
    """Compute nodes: engines and free/total capacity."""
    result = client(ctx, timeout=10).nodes()
    from cli.render import nodes_table, print_json, show

    if json_:
        return print_json(result)
    if not result.nodes:
        print("No compute nodes known yet.", file=sys.stderr)
        return None
    show(nodes_table(result))
    return None


def version(ctx: typer.Context, json_: Json = False) -> None:
    """The CLI's version, and the node's if one is reachable."""
    from shoal import ShoalAPIError

    cli_version = _cli_version()
    try:
        node_version: str | None = client(ctx, timeout=5).version()
        problem = ""
    except ShoalAPIError as exc:
        node_version, problem = None, " ".join(str(exc).split())
    if json_:
        from cli.render import print_json

        return print_json({"cli": cli_version, "node": node_version})
    print(f"shoal {cli_version}")
    print(f"node  {node_version}" if node_version else f"node  not reachable ({problem})")
    return None


def _cli_version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("shoal")
    except PackageNotFoundError:
        return "unknown (not installed)"

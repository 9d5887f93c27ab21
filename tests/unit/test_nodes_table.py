"""`shoal nodes`: GPUs (free/total) appear as a column when a node has any, and in --json."""

from __future__ import annotations

import json

from rich.console import Console

from cli.render import nodes_table
from jobs import Resources
from jobs.messages import NodeInfo
from jobs.views import NodeList


def _node(peer: str, gpu: int = 0, free_gpu: int = 0) -> NodeInfo:
    total = Resources(cpu=4, memory="8GiB", disk="50GiB", gpu=gpu)
    free = Resources(cpu=2, memory="4GiB", disk="50GiB", gpu=free_gpu)
    return NodeInfo(peer_id=peer, engines=["docker"], max_per_job=total, total=total, free=free)


def _text(nodes: NodeList) -> list[str]:
    console = Console(width=300, no_color=True)
    with console.capture() as captured:
        console.print(nodes_table(nodes))
    return [line.rstrip() for line in captured.get().splitlines()]


def test_gpus_free_over_total_when_a_node_has_them() -> None:
    nodes = NodeList(nodes=[_node("12D3KooWGpuNode", gpu=4, free_gpu=3), _node("12D3KooWCpuNode")])
    header, _, gpu_row, cpu_row = _text(nodes)
    assert "GPU FREE/TOTAL" in header
    column = header.index("GPU FREE/TOTAL")
    assert gpu_row[column:].split()[:3] == ["3", "/", "4"]
    assert cpu_row[column:].split()[0] == "—"  # a node without GPUs, beside one with
    (gpu_node, cpu_node) = json.loads(nodes.model_dump_json())["nodes"]
    assert (gpu_node["total"]["gpu"], gpu_node["free"]["gpu"]) == (4, 3)
    assert "gpu" not in cpu_node["total"]  # none: left out, as in every Resources


def test_no_gpu_column_where_no_node_has_a_gpu() -> None:
    header, *_ = _text(NodeList(nodes=[_node("12D3KooWCpuNode")]))
    assert "GPU" not in header and "CPU FREE/TOTAL" in header

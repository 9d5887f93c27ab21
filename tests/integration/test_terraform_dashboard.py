"""The module's Grafana dashboard and autoscaler read metrics a real node exports.

One real ``shoal serve --noop`` with room for one job at a time: a long job fills it, a second job
and a sweep wait for capacity, and ``/metrics`` must show that waiting work (``shoal_jobs_waiting``,
``shoal_sweep_indexes_waiting``, ``shoal_backlog``: what the autoscaler scales on). Every metric
name and label the dashboard's queries use, and every metric the module's autoscaler and Ops Agent
config name, must be among what that node exports. About 15 s.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoal import Client
from tests.integration.rogue import free_base_port
from tests.integration.single_node import noop_node

REPO = Path(__file__).resolve().parents[2]
MODULE = REPO / "terraform" / "modules" / "shoal-cluster"
DASHBOARD = MODULE / "dashboards" / "shoal.json"
SAMPLE = re.compile(r"^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>[^}]*)\})? (?P<value>\S+)$")
PROMQL_FUNCTIONS = {"sum", "max", "min", "avg", "rate", "by", "without", "count"}


def exported(text: str) -> tuple[dict[str, float], dict[str, set[str]]]:
    """Prometheus text → {sample as written: value} and {metric name: its label names}."""
    samples: dict[str, float] = {}
    labels: dict[str, set[str]] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        samples[line.rsplit(" ", 1)[0]] = float(match["value"])
        names = {pair.split("=", 1)[0] for pair in (match["labels"] or "").split(",") if pair}
        labels.setdefault(match["name"], set()).update(names)
    return samples, labels


def queried(expr: str) -> tuple[set[str], set[str]]:
    """The metric names a PromQL expression reads, and the label names it selects or groups by."""
    names = {n for n in re.findall(r"\b(shoal_[a-z_]+)\b", expr)}
    label_names = set(re.findall(r"\b([a-z_]+)\s*=~?\s*\"", expr))
    for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        label_names.update(x.strip() for x in group.split(",") if x.strip())
    return names, label_names


@pytest.fixture(scope="module")
def metrics(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    home = tmp_path_factory.mktemp("dashboard")
    with noop_node(home, free_base_port(1), args=["--limit-total-cpu", "1"]) as ready, Client(ready["api"]) as client:
        client.run({"engine": {"name": "noop"}}, timeout=60)  # a finished job: latency and counters
        busy = client.submit({"engine": {"name": "noop", "delay": 120}, "resources": {"cpu": 1}}, cache=False)
        queued = client.submit({"engine": {"name": "noop", "delay": 1}, "resources": {"cpu": 1}}, cache=False)
        sweep = client.submit_sweep({"job": {"engine": {"name": "noop", "delay": 1}, "resources": {"cpu": 1}},
                                     "grid": {"i": ["1", "2", "3"]}})
        deadline = time.monotonic() + 30
        while True:
            text = httpx.get(f"{ready['api']}/metrics", timeout=10).text
            samples, _ = exported(text)
            if samples.get("shoal_jobs_waiting", 0) >= 1 and samples.get("shoal_sweep_indexes_waiting", 0) >= 3:
                break
            assert time.monotonic() < deadline, text
            time.sleep(0.2)
        yield text
        client.cancel_sweep(sweep.sweep.id)
        for job in (queued, busy):
            client.cancel(job.job.id)


def test_waiting_work_is_exported(metrics: str) -> None:
    samples, _ = exported(metrics)
    assert samples["shoal_jobs_waiting"] >= 1  # the second job: the node's one CPU is taken
    assert samples["shoal_sweep_indexes_waiting"] >= 3  # no index can be claimed either
    assert samples["shoal_backlog"] >= 1  # the compute side holds offers it has no room for yet
    assert samples['shoal_capacity_cpu{kind="free"}'] == 0
    assert samples['shoal_capacity_gpu{kind="total"}'] == 0  # no GPU on this machine, none given
    assert "# TYPE shoal_jobs_waiting gauge" in metrics


def test_every_dashboard_query_reads_metrics_a_node_exports(metrics: str) -> None:
    _, labels = exported(metrics)
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 10
    for expr in exprs:
        names, label_names = queried(expr)
        assert names, f"{expr!r} reads no shoal metric"
        for name in names:
            assert name in labels, f"{expr!r}: {name} is not exported by a node"
            own = labels[name] | {"instance", "job"}  # the scraper adds these two
            assert label_names <= own | PROMQL_FUNCTIONS, f"{expr!r}: {name} has labels {sorted(labels[name])}"


def test_the_autoscaler_and_the_ops_agent_name_exported_metrics(metrics: str) -> None:
    _, labels = exported(metrics)
    main_tf = (MODULE / "main.tf").read_text()
    listed = re.search(r"waiting_metrics = var\.waiting_work_per_node > 0 \? \[([^]]*)\]", main_tf)
    assert listed, "main.tf names the metrics the autoscaler scales on in local.waiting_metrics"
    scaled_on = set(re.findall(r'"(shoal_[a-z_]+)"', listed[1]))
    assert scaled_on == {"shoal_jobs_waiting", "shoal_sweep_indexes_waiting"}, scaled_on
    assert 'name                       = "prometheus.googleapis.com/${metric.value}/gauge"' in main_tf
    assert scaled_on <= set(labels)
    script = (MODULE / "templates" / "startup.sh.tftpl").read_text()
    assert "metrics_path: /metrics" in script and "type: prometheus" in script

"""A python sweep on a real devstack: indexes served one after another by a shared runner process give
byte for byte what the same job gives alone, in a process of its own."""

from __future__ import annotations

import pytest

from executors.pyodide import PyodideExecutor
from tests.integration.single_node import in_process_devstack

pytestmark = [pytest.mark.slow, pytest.mark.skipif(
    not PyodideExecutor(__import__("pathlib").Path("/nonexistent")).is_installed(),
    reason="Pyodide not installed: scripts/install-pyodide")]

CODE = """\
import os, random, sys, time, uuid
g = globals().setdefault("counter", [])
g.append(1)
print(os.environ["i"], os.environ["SHOAL_INDEX"], len(g), random.random(), uuid.uuid4(), time.time())
print(sorted(k for k in sys.modules if not k.startswith("_"))[:8], len(sys.modules))
print("stderr", os.environ["i"], file=sys.stderr)
"""
INDEXES = 12


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with in_process_devstack(tmp_path_factory.mktemp("python-sweep"), 1) as devstack:
        yield devstack


def test_a_sample_of_sweep_indexes_matches_the_same_job_run_alone(stack):
    from shoal import Client

    template = {"engine": {"name": "python", "code": CODE}, "cache": False}
    with Client(stack.nodes[0].api, timeout=120) as client:
        d = client.run_sweep({"job": template, "grid": {"i": [f"v{k}" for k in range(INDEXES)]}}, timeout=600)
        assert d.sweep.state.value == "completed", d.sweep.counts
        records = {r.index: r for r in client.sweep_indexes(d.sweep.id, limit=INDEXES).indexes}
        assert len(records) == INDEXES
        for index in (0, 5, INDEXES - 1):
            env = {"i": f"v{index}", "SHOAL_INDEX": str(index), "SHOAL_COUNT": str(INDEXES)}
            alone = client.run({**template, "env": env}, timeout=300)
            assert alone.job.state.value == "completed", alone.job.reason
            swept = records[index].result
            assert swept is not None
            assert (swept.stdout, swept.stderr, swept.exit_code) == (
                alone.job.result.stdout, alone.job.result.stderr, alone.job.result.exit_code)
            assert swept.stdout.startswith(f"v{index} {index} 1 ")  # no globals from an earlier index

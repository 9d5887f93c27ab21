"""A sweep index's results once the node's retention removed them: 410 at once, like a job's, not a fetch of
what nobody provides any more (it waited for Kubo's timeout, then answered 404: "no such job", exit 4)."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest

from jobs import JobState
from shoal import Client, ClientKey, ShoalAPIError
from tests.integration.rogue import free_base_port
from tests.integration.single_node import noop_node

pytestmark = pytest.mark.slow

PORT = free_base_port(1)
RETENTION = 2.0


def test_removed_index_results_answer_gone_at_once(tmp_path: Path) -> None:
    with noop_node(tmp_path, PORT, args=["--retention", f"{RETENTION:g}"]), \
            Client(f"http://127.0.0.1:{PORT}", key=ClientKey.generate()) as client:
        job = {"engine": {"name": "noop"}, "outputs": [{"name": "o", "path": "/o"}]}  # published: it has an output
        sweep_id = client.submit_sweep({"job": job, "grid": {"x": ["1", "2"]}}).sweep.id
        assert client.wait_sweep(sweep_id, timeout=60).sweep.state is JobState.COMPLETED
        cid = client.sweep_index(sweep_id, 0).result.cid
        stored = tmp_path / "node" / "results" / cid
        deadline = time.monotonic() + RETENTION + 10
        while stored.exists() and time.monotonic() < deadline:  # the compute side unpins what it published
            time.sleep(0.2)
        assert not stored.exists()
        gone = rf"the results of index (0|1) of sweep {sweep_id} were removed at [-0-9: ]+ UTC \(retention 2 s\)"
        with pytest.raises(ShoalAPIError) as info:
            client.download_index(sweep_id, 0, tmp_path / "one")
        assert (info.value.status, info.value.code) == (410, "gone")
        assert re.fullmatch(gone, str(info.value)), str(info.value)
        with pytest.raises(ShoalAPIError) as info:  # the whole sweep: the first index says it for all
            client.download_sweep(sweep_id, tmp_path / "all")
        assert info.value.status == 410 and re.fullmatch(gone, str(info.value)), str(info.value)

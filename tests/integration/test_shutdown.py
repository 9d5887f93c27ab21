"""A node stopped by SIGTERM while clients keep submitting stops cleanly: exit code 0, no traceback,
no error in its log (``noop_node`` checks all three when its block ends).

A role's store write cut off by the shutdown once ended its task with ``StoreClosed`` instead of as
cancelled, so most such stops were reported as crashes (9 of 12 before the fix, 0 of 12 after).
"""

from __future__ import annotations

import threading
import time
from contextlib import suppress
from pathlib import Path

import pytest

from jobs import ShoalError
from shoal import Client
from tests.integration.rogue import free_base_port
from tests.integration.single_node import noop_node

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("run", range(3))
def test_a_node_stopped_while_clients_submit_stops_cleanly(tmp_path: Path, run: int) -> None:
    stop = threading.Event()
    submitted = []

    def submit_until_stopped(api: str) -> None:
        client = Client(api)
        while not stop.is_set():
            with suppress(ShoalError):  # the node going away mid-request, at the end
                submitted.append(client.submit({"engine": {"name": "noop"}, "cache": False}).job.id)

    try:
        with noop_node(tmp_path, free_base_port(1)) as ready:
            clients = [threading.Thread(target=submit_until_stopped, args=(ready["api"],), daemon=True)
                       for _ in range(4)]
            for client in clients:
                client.start()
            time.sleep(1.5)  # the node is busy writing when the signal comes
            assert submitted, "no job was submitted: nothing was tested"
    finally:
        stop.set()

"""A real node whose SQLite store cannot be written for a while (another process holds it, as an
operator's ``sqlite3`` shell would, or the disk is full): it answers signed requests 503 saying why,
makes nothing of them, and carries on once it can write again. Such a refusal once ended the node's process at
the first signed request."""

from __future__ import annotations

import sqlite3
import threading
import time
from pathlib import Path

import pytest

from shoal import Client, ClientKey
from shoal._errors import ServerError
from tests.integration.rogue import free_base_port
from tests.integration.single_node import noop_node

pytestmark = pytest.mark.slow

NOOP = {"engine": {"name": "noop"}}


def test_a_node_whose_store_is_locked_answers_503_and_carries_on_once_it_is_free(tmp_path: Path) -> None:
    port = free_base_port(1)
    with noop_node(tmp_path, port, expected_errors=("cannot write the store",)) as ready, \
            Client(ready["api"], key=ClientKey.generate()) as client:
        before = client.submit(NOOP)
        assert client.wait(before.job.id, timeout=30).job.state.value == "completed"
        operator = sqlite3.connect(tmp_path / "node" / "shoal.db", isolation_level=None, check_same_thread=False)
        operator.execute("BEGIN EXCLUSIVE")
        released = threading.Timer(12.0, lambda: operator.execute("COMMIT"))
        released.start()
        try:
            started = time.monotonic()
            with pytest.raises(ServerError) as refused:
                client.submit(NOOP)
            assert refused.value.status == 503
            assert "cannot write its store now: database is locked" in refused.value.message
            assert time.monotonic() - started < 11  # answered while the store is still held
            with pytest.raises(ServerError, match="cannot write its store now"):
                client.list()  # every signed request records its nonce (replays are refused across restarts)
        finally:
            released.join()
        after = client.submit(NOOP)  # the same process, free again
        assert client.wait(after.job.id, timeout=30).job.state.value == "completed"
        assert {j.id for j in client.list().jobs} == {before.job.id, after.job.id}  # the refused one made nothing

"""A node's log as its operator reads it: every line a record with its time and level."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

from node.identity import Identity
from tests.integration.rogue import free_base_port
from tests.integration.single_node import noop_node

PORT = free_base_port(2)
RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")


def test_a_peer_that_is_gone_fills_the_log_with_no_bare_lines(tmp_path: Path) -> None:
    """py-libp2p's loggers do not propagate: Python's last resort printed its records bare, without time or
    level, and a failed dial four times a second while a peer was down (the node logs its own)."""
    gone = f"/ip4/127.0.0.1/tcp/{PORT + 1}/p2p/{Identity(os.urandom(32)).peer_id}"  # nobody listens there
    log: list[str] = []
    with noop_node(tmp_path, PORT, args=["--peer", gone], log=log):
        time.sleep(4)  # the node dials its peer again and again
    assert any("dial to" in line and "failed" in line for line in log), log[-20:]
    assert [line for line in log if not RECORD.match(line)] == []
    assert not any("Failed to open TCP stream" in line for line in log)

"""Who a job runs as on a root node: a host uid of its own while it runs, whichever engine runs it.

The kernel keeps some limits per uid: processes and threads (RLIMIT_NPROC), pending signals, inotify
instances, pipe buffers, message queues. While every docker job ran as 65533 and every python sandbox
as 65534, one job that used them up kept every other from starting a thread or making a timer; and a
python sandbox counts 12 (bubblewrap's two processes, Node.js's ten threads), so about 85 at once on one
host, whichever nodes ran them, met the sandboxes' RLIMIT_NPROC of 1,024 together.

A node's uids are its range of ``UIDS_PER_NODE`` among ``UID_RANGES`` (by its label: two nodes on a host
rarely share one), far above the host's users and the usual subordinate ranges of rootless containers,
and under 2**31. Within one process the uids taken are shared by all its executors, so a docker job and
a python sandbox never hold the same one. A node that is not root runs jobs as itself (``take`` says so).
"""

from __future__ import annotations

import itertools
import os
import threading
import zlib

UIDS_START, UIDS_PER_NODE, UID_RANGES = 1_000_000_000, 65_536, 16_384

_taken: set[int] = set()  # this process's uids in use, whichever executor took them
_lock = threading.Lock()  # sandbox slots are made in worker threads


class JobUsers:
    """The uids a node hands its running jobs (``take``, ``give_back``)."""

    def __init__(self, node_label: str) -> None:
        self.first = UIDS_START + zlib.crc32(node_label.encode()) % UID_RANGES * UIDS_PER_NODE

    def take(self) -> tuple[int, int]:
        """(uid, gid) for a job about to start: the lowest free one; give it back once its processes are gone.
        A node that is not root gets its own uid and gid (it can switch to no other)."""
        if os.getuid() != 0:
            return os.getuid(), os.getgid()
        with _lock:
            uid = next(uid for uid in itertools.count(self.first) if uid not in _taken)
            _taken.add(uid)
        return uid, uid

    def give_back(self, uid: int) -> None:
        with _lock:
            _taken.discard(uid)

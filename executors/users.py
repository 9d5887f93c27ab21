"""Who a job runs as on a root node: a host uid of its own while it runs, whichever engine runs it.

The kernel keeps some limits per uid: processes and threads (RLIMIT_NPROC), pending signals, inotify
instances, pipe buffers, message queues. While every docker job ran as 65533 and every python sandbox
as 65534, one job that used them up kept every other from starting a thread or making a timer; and a
python sandbox counts 12 (bubblewrap's two processes, Node.js's ten threads), so about 85 at once on one
host, whichever nodes ran them, met the sandboxes' RLIMIT_NPROC of 1,024 together.

A node's uids are its range of ``UIDS_PER_NODE`` among ``UID_RANGES`` (by its label: two nodes on a host
rarely share one), far above the host's users and the usual subordinate ranges of rootless containers,
and under 2**31. A node's docker and python engines take from its one range, and the uids in use are
kept per process, so a container and a sandbox never hold the same one. A node that is not root runs
jobs as itself (``take`` says so).
"""

from __future__ import annotations

import itertools
import logging
import os
import threading
import zlib
from pathlib import Path

UIDS_START, UIDS_PER_NODE, UID_RANGES = 1_000_000_000, 65_536, 16_384

log = logging.getLogger(__name__)

_taken: set[int] = set()  # this process's uids in use, whichever executor took them
_lock = threading.Lock()  # sandbox slots are made in worker threads


class JobUsers:
    """The uids a node hands its running jobs (``take``, ``give_back``).

    ``shared``: the uid every job gets where the node's range is not mapped in its user namespace (a root
    node in an unprivileged container often has only 0-65535): per-uid limits are then shared, as before.
    """

    def __init__(self, node_label: str, *, shared: int) -> None:
        self.first = UIDS_START + zlib.crc32(node_label.encode()) % UID_RANGES * UIDS_PER_NODE
        self.shared = shared
        self._own: bool | None = None  # whether the range is mapped here (read once)

    def take(self) -> tuple[int, int]:
        """(uid, gid) for a job about to start: the lowest free one; give it back once its processes are gone.
        A node that is not root gets its own uid and gid (it can switch to no other)."""
        if os.getuid() != 0:
            return os.getuid(), os.getgid()
        if not self._range_mapped():
            return self.shared, self.shared
        with _lock:
            uid = next(uid for uid in itertools.count(self.first) if uid not in _taken)
            _taken.add(uid)
        return uid, uid

    def give_back(self, uid: int) -> None:
        with _lock:
            _taken.discard(uid)

    def _range_mapped(self) -> bool:
        if self._own is None:
            self._own = _mapped(self.first, UIDS_PER_NODE, Path("/proc/self/uid_map")) and \
                _mapped(self.first, UIDS_PER_NODE, Path("/proc/self/gid_map"))
            if not self._own:
                log.warning("uids %d-%d are not mapped in this node's user namespace: every job runs as uid %d "
                            "(per-uid kernel limits are shared among jobs)", self.first,
                            self.first + UIDS_PER_NODE - 1, self.shared)
        return self._own


def _mapped(first: int, count: int, id_map: Path) -> bool:
    """Whether ids first..first+count-1 are all mapped by one line of ``id_map`` ("inside outside count")."""
    try:
        lines = id_map.read_text().splitlines()
    except OSError:
        return True  # no user namespaces in this kernel: every id is the host's
    for line in lines:
        inside, _outside, length = (int(field) for field in line.split())
        if inside <= first and first + count <= inside + length:
            return True
    return False

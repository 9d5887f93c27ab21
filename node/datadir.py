"""A node's data dir belongs to one node at a time: it holds an exclusive lock on it while it runs.

Two nodes started on one data dir (a service and a hand-started copy) share an identity and a store: the
second removed the first one's running containers as "left behind", resumed its jobs as its own, and the
two then told clients different states of the same job for good.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from jobs.errors import ShoalError

LOCK_FILE = "node.lock"  # holds the pid of the node that has the lock


class DataDirUnavailable(ShoalError):
    """The data dir cannot be made or used, or another node runs on it."""


@contextlib.contextmanager
def hold(data_dir: Path) -> Iterator[None]:
    """Make ``data_dir`` and lock it for as long as the block runs (a process that dies lets go of it)."""
    path = data_dir / LOCK_FILE
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        lock = path.open("a+")
    except OSError as e:
        raise DataDirUnavailable(f"cannot use the data dir {data_dir}: {e.strerror or e}") from e
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read(20).strip() or "unknown"
            raise DataDirUnavailable(f"the data dir {data_dir} is in use by another node (pid {holder}): stop "
                                     "it first, or give this one a data dir of its own (--data-dir)") from None
        lock.seek(0)
        lock.truncate()
        lock.write(f"{os.getpid()}\n")
        lock.flush()
        yield

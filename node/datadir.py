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
from storage.trees import MAX_PATH_BYTES

LOCK_FILE = "node.lock"  # holds the pid of the node that has the lock
# longest path of a data dir: below it, a run's own folders (work/<execution id>/results/outputs/<output name>/,
# at most 216 bytes) and what its outputs hold (``storage.trees.MAX_PATH_BYTES``) must fit in the system's 4,095
# with room to spare, or a path the network lets every job write fails on this node alone
RUN_FOLDERS_BYTES = 327
MAX_PATH = 4095 - MAX_PATH_BYTES - RUN_FOLDERS_BYTES


class DataDirUnavailable(ShoalError):
    """The data dir cannot be made or used, or another node runs on it."""


@contextlib.contextmanager
def hold(data_dir: Path) -> Iterator[None]:
    """Make ``data_dir`` and lock it for as long as the block runs (a process that dies lets go of it)."""
    if (length := len(os.fsencode(os.path.abspath(data_dir)))) > MAX_PATH:
        raise DataDirUnavailable(f"the data dir's path is {length:,} bytes long; at most {MAX_PATH:,}: a job's "
                                 f"outputs may hold paths of {MAX_PATH_BYTES:,} bytes below it")
    path = data_dir / LOCK_FILE
    try:
        data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # the store, keys and results: the node's user's
        if data_dir.stat().st_mode & 0o077:  # one made by an earlier release, under a umask of 022
            with contextlib.suppress(OSError):  # not ours to change: the store's own files are 0600 all the same
                data_dir.chmod(0o700)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise DataDirUnavailable(f"cannot use the data dir {data_dir}: {e.strerror or e}") from e
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 20, 0).decode(errors="replace").strip() or "unknown"
            raise DataDirUnavailable(f"the data dir {data_dir} is in use by another node (pid {holder}): stop "
                                     "it first, or give this one a data dir of its own (--data-dir)") from None
        with contextlib.suppress(OSError):  # the pid only helps the message above: a full disk says so later
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)

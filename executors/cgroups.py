"""Memory cgroups around sandboxes: the kernel's bound on all the memory a job's processes hold at once.

rlimits bound a process's address space one kind at a time (``RLIMIT_DATA``), never what a sandbox keeps
resident, and a python job's Node.js holds memory its own counts do not see (V8's ``ArrayBuffer``s and
strings). A cgroup counts every page its processes touch, and its OOM killer stops them at the limit.

Each sandbox that gets one is started inside its own cgroup (``join_args``: a shell that moves itself in,
then execs the sandbox), so nothing it forks escapes the count. The node keeps its cgroups below its own,
in ``shoal-PID``; those of a node that died (kill -9) are removed by the next one.

This uses the v1 memory hierarchy, which needs root. Where it is not mounted or not writable (cgroup v2
only, a node not root), ``MemoryCgroups.here()`` is None and the rlimits stay the only bound.

``ContainerSockets`` bounds what a Docker container holds in socket buffers, which the v1 hierarchy counts
apart from its memory, and only in a cgroup told to before its sockets were made.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import subprocess
import time
from pathlib import Path

log = logging.getLogger(__name__)

_PREFIX = "shoal-"
_UNLIMITED = -1
REMOVE_WAIT = 1.0  # seconds a cgroup whose processes were killed is tried for removal before it is left
_names = itertools.count(1)  # one sequence per process: a devstack's nodes share their process's folder


class MemoryCgroup:
    """One sandbox's memory cgroup (a directory in the v1 memory hierarchy)."""

    def __init__(self, path: Path, leftovers: list[MemoryCgroup] | None = None) -> None:
        self.path = path
        self._leftovers = leftovers if leftovers is not None else []  # its node's, to remove later

    def join_args(self) -> list[str]:
        """A command prefix that moves the process into this cgroup before it execs the rest."""
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs")]

    def set_limit(self, nbytes: int | None) -> bool:
        """Hold what its processes use, swap included, to ``nbytes`` (None: unlimited).

        Returns False when the kernel could not bring what they hold now under the new limit (it tries to
        reclaim first): the limit is then unchanged.
        """
        value = _UNLIMITED if nbytes is None else nbytes
        memory, swap = self.path / "memory.limit_in_bytes", self.path / "memory.memsw.limit_in_bytes"
        # memory+swap may never be below memory alone: raise it first, lower it last
        order = [memory, swap] if nbytes is not None and nbytes < self.limit() else [swap, memory]
        try:
            for file in order:
                if file.exists():
                    file.write_text(str(value))
        except OSError as e:
            log.debug("cannot set %s to %s bytes: %s", self.path, value, e)
            return False
        return True

    def limit(self) -> int:
        return int((self.path / "memory.limit_in_bytes").read_text())

    def peak(self) -> int:
        """The most memory its processes held at once, in bytes."""
        return int((self.path / "memory.max_usage_in_bytes").read_text())

    def oom_kills(self) -> int:
        """How many processes the kernel killed for reaching the limit."""
        with contextlib.suppress(OSError, ValueError):
            for line in (self.path / "memory.oom_control").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        return 0

    def remove(self) -> None:
        """Delete the cgroup once its processes are gone (what they held is charged to the parent). Blocking.

        The kernel counts a process that is exiting as in it for a moment (about a millisecond here): the
        cgroup is tried for up to ``REMOVE_WAIT`` seconds, then left to its node's next ``new()``.
        """
        deadline = time.monotonic() + REMOVE_WAIT
        while not self.removed():
            if time.monotonic() > deadline:
                self._leftovers.append(self)
                return
            time.sleep(0.005)

    def removed(self) -> bool:
        """Try to delete the cgroup: whether it is gone (or cannot be removed, which is logged)."""
        try:
            self.path.rmdir()
        except FileNotFoundError:
            pass
        except OSError as e:
            if e.errno == errno.EBUSY:
                return False
            log.warning("cannot remove the memory cgroup %s: %s", self.path, e)
        return True


class MemoryCgroups:
    """Where this node makes its sandboxes' memory cgroups. ``here()`` finds one, or says there is none."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._leftovers: list[MemoryCgroup] = []  # removed while a process of theirs was still exiting

    @classmethod
    def here(cls, owner: int | None) -> MemoryCgroups | None:
        """This node's cgroups folder, made now; None (logged) where memory cgroups cannot be made. ``owner``:
        a uid like the sandboxes' (None: the node's own), which the check moves into one."""
        try:
            parent = own_memory_cgroup()
            if parent is None:
                log.info("no writable cgroup v1 memory hierarchy here: python jobs' memory is bounded by rlimits only")
                return None
            _remove_stale(parent)
            root = parent / f"{_PREFIX}{os.getpid()}"
            root.mkdir(exist_ok=True)
            cgroups = cls(root)
            probe = cgroups.new(owner)  # all it will do for a sandbox, once: a host that allows less gets none
            try:
                if not probe.set_limit(64 << 20) or probe.limit() != 64 << 20:
                    raise OSError("the kernel did not take a memory limit")
                user = {"user": owner, "group": owner, "extra_groups": []} if owner is not None else {}
                joined = subprocess.run([*probe.join_args(), "true"], capture_output=True, timeout=30, **user)
                if joined.returncode != 0:
                    raise OSError(f"a sandbox cannot join one: {joined.stderr.decode(errors='replace').strip()}")
            finally:
                probe.remove()
            return cgroups
        except (OSError, ValueError, subprocess.SubprocessError) as e:
            log.info("cannot make memory cgroups (%s): python jobs' memory is bounded by rlimits only", e)
            return None

    def new(self, owner: int | None) -> MemoryCgroup:
        """A new, unlimited cgroup that ``owner``, the sandbox's uid (None: the node's), can move itself into.
        Raises OSError."""
        self._leftovers[:] = [cgroup for cgroup in self._leftovers if not cgroup.removed()]
        path = self.root / str(next(_names))
        self.root.mkdir(exist_ok=True)  # another of this process's executors may have closed it
        path.mkdir()
        if owner is not None:
            os.chown(path / "cgroup.procs", owner, owner)
        return MemoryCgroup(path, self._leftovers)


    def close(self) -> None:
        """Remove this node's folder once its sandboxes' cgroups are gone (else the next node does). Blocking."""
        self._leftovers[:] = [cgroup for cgroup in self._leftovers if not cgroup.removed()]
        with contextlib.suppress(OSError):  # not empty: another executor of this process still has cgroups
            self.root.rmdir()


class ContainerSockets:
    """Where this node bounds its Docker containers' socket buffers (``here()``), on cgroup v1.

    A container's memory limit does not count the kernel's TCP and UDP buffers there: a 64 MiB job held
    2.2 GiB of them over loopback, all the host's TCP memory, so every other connection on it stalled. The
    v1 hierarchy counts them against ``memory.kmem.tcp.limit_in_bytes``, in a cgroup whose limit was set
    before its sockets were made. Docker does not set it (runc ignores ``KernelMemoryTCP``), so the node
    makes the container's cgroup itself between create and start, with the limit set; runc then starts
    the container in it, and removes it with the container. cgroup v2 counts socket buffers as memory.
    """

    def __init__(self, root: Path) -> None:
        self.root = root  # the memory hierarchy's folder of Docker's containers (cgroup parent /docker)

    @classmethod
    def here(cls, docker_info: dict) -> ContainerSockets | None:
        """For a Docker daemon (its ``info()``) on cgroup v1 with the cgroupfs driver, where this node can write
        the memory hierarchy; None otherwise (cgroup v2 needs nothing; elsewhere it is logged)."""
        if docker_info.get("CgroupVersion") == "2":
            return None
        mount = memory_hierarchy()
        if docker_info.get("CgroupDriver") != "cgroupfs" or mount is None or not os.access(mount, os.W_OK):
            log.warning("cannot bound docker jobs' socket buffers here (cgroup driver %s, memory hierarchy %s): "
                        "they are not counted in their memory limit", docker_info.get("CgroupDriver"), mount)
            return None
        return cls(mount / "docker")

    def bound(self, container_id: str, nbytes: int) -> None:
        """Before the container starts: make its cgroup with its sockets held to ``nbytes``. Blocking; OSError."""
        self.root.mkdir(exist_ok=True)
        path = self.root / container_id
        path.mkdir()
        (path / "memory.kmem.tcp.limit_in_bytes").write_text(str(nbytes))

    def held(self, container_id: str) -> bool:
        """Once it started: whether the container ran in the cgroup ``bound`` made (a daemon with another cgroup
        parent puts it elsewhere)."""
        try:
            return int((self.root / container_id / "memory.max_usage_in_bytes").read_text()) > 0
        except FileNotFoundError:
            return True  # runc removed it already, with the container that exited in it
        except (OSError, ValueError):
            return False

    def forget(self, container_id: str) -> None:
        """After the container is removed: its cgroup, if runc left it (it did not use it). Blocking."""
        try:
            (self.root / container_id).rmdir()
        except OSError as e:  # gone with its container; busy: runc removes it with the container, left running
            if e.errno not in (errno.ENOENT, errno.EBUSY):
                log.warning("cannot remove the memory cgroup of container %s: %s", container_id, e)


def memory_hierarchy() -> Path | None:
    """Where the v1 memory hierarchy is mounted, if it is."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        dash = fields.index("-")
        if fields[dash + 1] == "cgroup" and "memory" in fields[dash + 3].split(","):
            return Path(fields[4])
    return None


def own_memory_cgroup() -> Path | None:
    """The directory of this process's own cgroup in the v1 memory hierarchy, if mounted and writable."""
    mount = memory_hierarchy()
    if mount is None:
        return None
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if "memory" in controllers.split(","):
            own = mount / path.lstrip("/")
            return own if os.access(own, os.W_OK) else None
    return None


def _remove_stale(parent: Path) -> None:
    """Remove the cgroups of node processes that no longer exist."""
    for path in parent.glob(f"{_PREFIX}*"):
        pid = path.name[len(_PREFIX):]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            for child in path.iterdir():
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        child.rmdir()
            with contextlib.suppress(OSError):
                path.rmdir()

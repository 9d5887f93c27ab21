"""Memory cgroups around sandboxes: the kernel's bound on all the memory a job's processes hold at once.

rlimits bound a process's address space one kind at a time (``RLIMIT_DATA``), never what a sandbox keeps
resident, and a python job's Node.js holds memory its own counts do not see (V8's ``ArrayBuffer``s and
strings). A cgroup counts every page its processes touch, and its OOM killer stops them at the limit.

Each sandbox that gets one is started inside its own cgroup (``join_args``: a shell that moves itself in,
then execs the sandbox), so nothing it forks escapes the count. The node keeps its cgroups below the cgroup
it started in, in ``shoal-PID``; those of a node that died (kill -9) are removed by the next one.

Both hierarchies work: cgroup v1's memory hierarchy, and cgroup v2's unified one (Debian 12, so every
node of a ``terraform/`` cluster) where the node's cgroup has the memory controller. In v2 a cgroup whose
children have controllers holds no processes of its own, so a node alone in its cgroup (a systemd unit
with ``Delegate=memory pids``) first moves itself into a leaf beside its cgroups, ``shoal-PID-node``. Where
the pids controller is there too, each sandbox's processes are held to a count of its own. Where none
can be made (no hierarchy, none the node may write, other processes in its v2 cgroup), ``MemoryCgroups.here()``
raises and says why, which the log and ``shoal id`` show, and the rlimits stay the only bound.

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
_NODE_LEAF = "-node"  # v2: shoal-PID-node, the leaf a node moves itself into
_DELEGATE = "systemd: Delegate=memory pids"  # what gives a node a v2 cgroup of its own
_UNLIMITED_BYTES = 2**63 - 4096  # what v1 reads for no limit, and what ``limit()`` says for v2's "max"
REMOVE_WAIT = 1.0  # seconds a cgroup whose processes were killed is tried for removal before it is left
_names = itertools.count(1)  # one sequence per process: a devstack's nodes share their process's folder


class MemoryCgroup:
    """One sandbox's memory cgroup: a directory in the v1 memory hierarchy, or in the v2 (``unified``) one."""

    def __init__(self, path: Path, leftovers: list[MemoryCgroup] | None = None, *, unified: bool = False) -> None:
        self.path = path
        self.unified = unified
        self._leftovers = leftovers if leftovers is not None else []  # its node's, to remove later

    def join_args(self) -> list[str]:
        """A command prefix that moves the process into this cgroup before it execs the rest.

        It runs as the node: in v2, moving a process takes write access to the cgroup it leaves too, which
        a sandbox's own uid never has. ``Sandbox.command`` takes that uid after it.
        """
        return ["/bin/sh", "-c", 'echo $$ > "$0" && exec "$@"', str(self.path / "cgroup.procs")]

    def set_limit(self, nbytes: int | None) -> bool:
        """Hold what its processes use, swap included, to ``nbytes`` (None: unlimited).

        Returns False when the kernel could not bring what they hold now under the new limit (v1 tries to
        reclaim first; v2 is not asked, as it would kill them): the limit is then unchanged.
        """
        if self.unified:
            return self._set_unified_limit(nbytes)
        value = -1 if nbytes is None else nbytes
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

    def _set_unified_limit(self, nbytes: int | None) -> bool:
        """v2: ``memory.max``, and no swap under a limit (v2 counts swap apart; v1's memory+swap is the limit)."""
        swap = self.path / "memory.swap.max"  # absent without swap accounting
        try:
            if nbytes is not None and not self._reclaim_to(nbytes):
                return False
            if swap.exists():
                swap.write_text("max" if nbytes is None else "0")
            (self.path / "memory.max").write_text("max" if nbytes is None else str(nbytes))
        except (OSError, ValueError) as e:
            log.debug("cannot set %s to %s bytes: %s", self.path, nbytes, e)
            return False
        return True

    def _reclaim_to(self, nbytes: int) -> bool:
        """v2: whether its processes hold ``nbytes`` or less, once the kernel reclaimed what it could (page cache,
        as v1 does before it takes a lower limit; ``memory.reclaim`` needs kernel 5.19). Raises OSError."""
        current = int((self.path / "memory.current").read_text())
        if current > nbytes and (self.path / "memory.reclaim").exists():
            with contextlib.suppress(OSError):  # EAGAIN: it could not reclaim all of it
                (self.path / "memory.reclaim").write_text(str(current - nbytes))
            current = int((self.path / "memory.current").read_text())
        return current <= nbytes

    def limit_processes(self, count: int) -> bool:
        """Hold its processes and threads to ``count`` together; False where it cannot (v1, whose pids hierarchy
        is apart, or v2 without the pids controller): its uid's RLIMIT_NPROC is then the bound."""
        pids = self.path / "pids.max"
        if not self.unified or not pids.exists():
            return False
        pids.write_text(str(count))
        return True

    def limit(self) -> int:
        if self.unified:
            value = (self.path / "memory.max").read_text().strip()
            return _UNLIMITED_BYTES if value == "max" else int(value)
        return int((self.path / "memory.limit_in_bytes").read_text())

    def peak(self) -> int:
        """The most memory its processes held at once, in bytes (v2: kernel 5.19 or later)."""
        name = "memory.peak" if self.unified else "memory.max_usage_in_bytes"
        return int((self.path / name).read_text())

    def oom_kills(self) -> int:
        """How many processes the kernel killed for reaching the limit."""
        events = self.path / ("memory.events" if self.unified else "memory.oom_control")
        with contextlib.suppress(OSError, ValueError):
            for line in events.read_text().splitlines():
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
    """Where this node makes its sandboxes' memory cgroups. ``here()`` finds one, or says why there is none."""

    def __init__(self, root: Path, *, unified: bool = False) -> None:
        self.root = root
        self.unified = unified
        self._leftovers: list[MemoryCgroup] = []  # removed while a process of theirs was still exiting

    @classmethod
    def here(cls) -> MemoryCgroups:
        """This node's cgroups folder, made now. Raises OSError, saying why, where it cannot make memory cgroups."""
        try:
            parent = own_memory_cgroup()
            if parent is None:
                raise OSError("this node may write no memory cgroup (on cgroup v1 it needs root; on v2, a cgroup of "
                              "its own with the memory controller)")
            unified = memory_hierarchy() is None
            if unified:
                _give_children_controllers(parent)
            _remove_stale(parent)
            cgroups = cls(parent / f"{_PREFIX}{os.getpid()}", unified=unified)
            probe = cgroups.new()  # all it will do for a sandbox, once: a host that allows less gets none
            try:
                if not probe.set_limit(64 << 20) or probe.limit() != 64 << 20:
                    raise OSError("the kernel did not take a memory limit")
                joined = subprocess.run([*probe.join_args(), "true"], capture_output=True, timeout=30)
                if joined.returncode != 0:
                    raise OSError(f"a sandbox cannot join one: {joined.stderr.decode(errors='replace').strip()}")
            finally:
                probe.remove()
            return cgroups
        except (ValueError, subprocess.SubprocessError) as e:
            raise OSError(str(e)) from e

    def new(self) -> MemoryCgroup:
        """A new, unlimited cgroup for one sandbox. Raises OSError."""
        self._leftovers[:] = [cgroup for cgroup in self._leftovers if not cgroup.removed()]
        path = self.root / str(next(_names))
        if not self.root.exists():  # made now, or again: another of this process's executors may have closed it
            self.root.mkdir(exist_ok=True)
            if self.unified:
                _give_children_controllers(self.root)
        path.mkdir()
        return MemoryCgroup(path, self._leftovers, unified=self.unified)

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


def unified_hierarchy() -> Path | None:
    """Where the v2 (unified) hierarchy is mounted, if it is."""
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        fields = line.split()
        if fields[fields.index("-") + 1] == "cgroup2":
            return Path(fields[4])
    return None


def own_memory_cgroup() -> Path | None:
    """The directory of this process's cgroup where its sandboxes' memory cgroups go, if writable: in the v1
    memory hierarchy when mounted, else in the v2 one when the memory controller is there (for a node that
    moved itself into its leaf, ``shoal-PID-node``, the cgroup it left)."""
    v1, v2 = memory_hierarchy(), unified_hierarchy()
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        hierarchy, controllers, path = line.split(":", 2)
        if v1 is not None and "memory" in controllers.split(","):
            own = v1 / path.lstrip("/")
            return own if os.access(own, os.W_OK) else None
        if v1 is None and v2 is not None and hierarchy == "0":
            own = v2 / path.lstrip("/")
            if own.name == f"{_PREFIX}{os.getpid()}{_NODE_LEAF}":
                own = own.parent
            with contextlib.suppress(OSError):
                if "memory" in (own / "cgroup.controllers").read_text().split() and os.access(own, os.W_OK):
                    return own
            return None
    return None


def _give_children_controllers(parent: Path) -> None:
    """v2: give ``parent``'s children the memory controller, and the pids controller where ``parent`` has it.

    A cgroup whose children have controllers holds no process (but the root), so this process moves itself,
    with the children it has started (a snapshot build, a compile), into a leaf beside them first, when
    needed and no other process is there. Raises OSError.
    """
    control = parent / "cgroup.subtree_control"
    if "memory" not in control.read_text().split() and not _enabled(control, "+memory"):
        _move_into_leaf(parent)
        if not _enabled(control, "+memory"):  # a process started there meanwhile
            raise OSError(f"other processes share this node's cgroup {parent}: give the node one of its own "
                          f"({_DELEGATE})")
    if "pids" in (parent / "cgroup.controllers").read_text().split():
        control.write_text("+pids")


def _enabled(control: Path, controller: str) -> bool:
    """Write ``controller`` to a ``cgroup.subtree_control``; False where the cgroup holds processes (EBUSY)."""
    try:
        control.write_text(controller)
    except OSError as e:
        if e.errno != errno.EBUSY:
            raise
        return False
    return True


def _move_into_leaf(parent: Path) -> None:
    """Move this process and the children it started from ``parent`` into its leaf there, ``shoal-PID-node``;
    raises OSError, moving nothing, where other processes are in ``parent`` (they are not the node's to move)."""
    here = [int(pid) for pid in (parent / "cgroup.procs").read_text().split()]
    others = [pid for pid in here if pid != os.getpid() and _parent_of(pid) != os.getpid()]
    if others:
        raise OSError(f"other processes ({len(others)}) share this node's cgroup {parent}: give the node one of "
                      f"its own ({_DELEGATE})")
    leaf = parent / f"{_PREFIX}{os.getpid()}{_NODE_LEAF}"
    leaf.mkdir(exist_ok=True)
    for pid in sorted(here, key=lambda pid: pid != os.getpid()):  # itself first: its children may fork
        with contextlib.suppress(ProcessLookupError):  # a child that ended meanwhile
            (leaf / "cgroup.procs").write_text(str(pid))


def _parent_of(pid: int) -> int | None:
    """The parent process of ``pid`` (None: it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def _remove_stale(parent: Path) -> None:
    """Remove the cgroups of node processes that no longer exist (v2: and the leaves they ran in)."""
    for path in parent.glob(f"{_PREFIX}*"):
        pid = path.name[len(_PREFIX):].removesuffix(_NODE_LEAF)
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            for child in path.iterdir():
                if child.is_dir():
                    with contextlib.suppress(OSError):
                        child.rmdir()
            with contextlib.suppress(OSError):
                path.rmdir()

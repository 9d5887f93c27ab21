"""OS-level containment for job processes: bubblewrap namespaces, an unprivileged uid, rlimits, slots.

A sandboxed process sees a root file system holding only what it is given: ``/usr`` (read-only, with the
usual ``/bin`` and ``/lib`` links), the runtime paths its engine needs (read-only), a private ``/proc``,
``/dev`` and ``/tmp``, and one *slot*: ``/job/ro`` (read-only) and ``/job/rw`` (writable), two bind mounts
of per-process host directories. It has its own, empty network namespace (no loopback peers: neither the
node's API nor Kubo), its own PID, IPC and UTS namespaces, no capabilities, no new privileges, uid and gid
65534, and a cleared environment. When the node runs as root, bubblewrap itself is started as a host uid of
the sandbox's own (``executors.users``: per-uid limits such as RLIMIT_NPROC are not shared with other jobs),
which the job sees as 65534. bubblewrap's ``--die-with-parent`` kills the whole sandbox when
the node dies (kill -9 included): the process must be started from a thread that lives as long as the
node (the trio thread), never from a worker thread, whose exit would count as the parent's death.

Why a slot instead of per-job binds: a pre-started interpreter (the warm pool) is already inside its
sandbox when its job arrives. Its job's files are placed in the slot's host directories then: read-only
inputs as hard links (or copies) under ``ro`` — read-only at the mount, whatever the files' modes — and
outputs as empty directories under ``rw``. The sandbox gets nothing else.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import resource
import shutil
import signal
import stat
import struct
import subprocess
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from executors.cgroups import MemoryCgroup, MemoryCgroups
from executors.users import JobUsers
from storage.trees import remove_tree

log = logging.getLogger(__name__)

NOBODY = 65534
SLOT_TARGET = "/job"
# RLIMIT_NPROC, which counts every process and thread of a uid on the host. A sandbox runs 12 (bubblewrap's two
# processes, Node.js's ten threads). One with a uid of its own (a root node's) may have 128: 256 such sandboxes
# could hold the kernel's default pid_max. One whose uid others share (the node's own, on a node that is not root,
# or the shared fallback of ``JobUsers``) shares 1024 with them and with the node's own threads.
PROCESS_LIMIT = 128
SHARED_PROCESS_LIMIT = 1024
_ROOT_PREFIX = "shoal-sandbox-"


def as_user(uid: int | None) -> list[str]:
    """A command prefix that runs the rest as host ``uid``, with its group and no other (None: as the node).

    ``setpriv`` rather than ``Popen(user=)``: a process that execs it starts in a fraction of the time of
    one Python forks to change its own uid (page tables copied, about 10 ms for a node's memory).
    """
    return [] if uid is None else [_setpriv(), f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"]


@functools.cache
def _setpriv() -> str:
    """Its path, looked up once: the shell that runs it is the node's (root)."""
    return shutil.which("setpriv") or "/usr/bin/setpriv"


@dataclass(frozen=True)
class Limits:
    """rlimits of a sandboxed process (and whatever it starts). ``None``: the node's own limit."""

    memory: int | None = None  # RLIMIT_DATA: bytes of private writable memory (heap, WebAssembly memory)
    cpu_seconds: int | None = None  # RLIMIT_CPU: CPU time; SIGXCPU then SIGKILL beyond it
    file_size: int | None = None  # RLIMIT_FSIZE: bytes of any one file it writes
    processes: int = SHARED_PROCESS_LIMIT  # RLIMIT_NPROC: a sandbox's is its slot's ``process_limit``
    cpu_seconds_hard: int | None = None  # a hard RLIMIT_CPU above cpu_seconds (None: the same)
    file_size_hard: int | None = None  # a hard RLIMIT_FSIZE above file_size, set even when ``soft``
    # Set only the soft limits of cpu_seconds and file_size, under hard ones set earlier: the kernel enforces
    # a soft limit alike (SIGXCPU, SIGXFSZ), and the next job of the same process may get a higher one again.
    soft: bool = False

    async def apply(self, pid: int, uid: int | None) -> None:
        """Set these limits on a running process, lowering them.

        Tries the ``prlimit`` system call first (no process to start); where the node may not change
        the limits of another uid's process (no CAP_SYS_RESOURCE, e.g. a root node in a container), runs
        ``prlimit --pid`` as the sandbox's own host ``uid`` (``Slot.owner``): lowering the limits of a process
        of one's own uid needs no capability.
        """
        try:
            self._set(pid)
            return
        except PermissionError:
            pass
        argv = [*as_user(uid), *self.prlimit_args()[:-1], "--pid", str(pid)]
        result = await trio.run_process(argv, capture_stdout=True, capture_stderr=True, check=False)
        if result.returncode != 0:
            raise OSError(f"prlimit failed: {result.stderr.decode(errors='replace').strip()[:300]}")

    def _set(self, pid: int) -> None:
        pairs = [(resource.RLIMIT_CORE, 0, False), (resource.RLIMIT_NPROC, self.processes, False)]
        if self.memory is not None:
            pairs.append((resource.RLIMIT_DATA, self.memory, False))
        if self.cpu_seconds is not None:
            pairs.append((resource.RLIMIT_CPU, self.cpu_seconds, self.soft))
        if self.file_size is not None:
            pairs.append((resource.RLIMIT_FSIZE, self.file_size, self.soft and not self.file_size_hard))
        for which, value, soft_only in pairs:
            hard = resource.prlimit(pid, which)[1]
            if hard != resource.RLIM_INFINITY and value > hard:
                raise ValueError(f"limit {value} is above the hard limit {hard}")
            if not soft_only:
                hard = {resource.RLIMIT_CPU: self.cpu_seconds_hard,
                        resource.RLIMIT_FSIZE: self.file_size_hard}.get(which) or value
            resource.prlimit(pid, which, (value, hard))

    def prlimit_args(self) -> list[str]:
        """The same limits as a ``prlimit(1)`` prefix, so they hold from the process's first instruction."""
        soft = ":" if self.soft else ""
        args = ["prlimit", "--core=0", f"--nproc={self.processes}"]
        if self.memory is not None:
            args.append(f"--data={self.memory}")
        if self.cpu_seconds is not None:
            hard = f":{self.cpu_seconds_hard}" if self.cpu_seconds_hard and not self.soft else soft
            args.append(f"--cpu={self.cpu_seconds}{hard}")
        if self.file_size is not None:
            args.append(f"--fsize={self.file_size}{f':{self.file_size_hard}' if self.file_size_hard else soft}")
        return [*args, "--"]


# A seccomp program (classic BPF over ``struct seccomp_data``: the syscall number at offset 0, the
# architecture at 4) that fails socket(2) and socketpair(2) with EACCES and lets every other call through.
_BPF_LOAD, _BPF_JEQ, _BPF_JGE, _BPF_RET = 0x20, 0x15, 0x35, 0x06
_SECCOMP_ALLOW, _SECCOMP_ERRNO = 0x7FFF0000, 0x00050000
# machine -> (AUDIT_ARCH_*, socket, socketpair, the first number of another ABI on it: x32 on x86_64)
_SOCKET_CALLS = {"x86_64": (0xC000003E, 41, 53, 0x40000000), "aarch64": (0xC00000B7, 198, 199, 1 << 31)}


def socket_filter(machine: str | None = None) -> bytes | None:
    """The seccomp program that leaves a sandbox no sockets, for ``Sandbox.command(seccomp=)``; None on a
    machine it does not know.

    A sandbox has its own network namespace, but loopback is up in it, and the kernel's socket buffers are
    counted by no memory cgroup (v1): job code that reached Node.js held 760 MiB in loopback TCP buffers,
    and 460 MiB in unread UDP datagrams, from a 64 MiB job. No engine needs a socket inside its sandbox.
    Calls of another ABI on the same machine (x32) fail too.
    """
    known = _SOCKET_CALLS.get(machine or os.uname().machine)
    if known is None:
        return None
    arch, socket_call, socketpair_call, other_abi = known
    deny = _SECCOMP_ERRNO | errno.EACCES
    program = [
        (_BPF_LOAD, 0, 0, 4),  # the architecture
        (_BPF_JEQ, 1, 0, arch),
        (_BPF_RET, 0, 0, deny),  # another architecture's calls
        (_BPF_LOAD, 0, 0, 0),  # the syscall number
        (_BPF_JGE, 2, 0, other_abi),
        (_BPF_JEQ, 1, 0, socket_call),
        (_BPF_JEQ, 0, 1, socketpair_call),
        (_BPF_RET, 0, 0, deny),
        (_BPF_RET, 0, 0, _SECCOMP_ALLOW),
    ]
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)


def filter_descriptor(program: bytes) -> int:
    """A new descriptor open on ``program`` from its start, for a child to inherit (``pass_fds``); the caller
    closes it once the child started."""
    fd = os.memfd_create("shoal-seccomp", os.MFD_CLOEXEC)
    try:
        os.write(fd, program)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def cpu_seconds_used(pid: int) -> float:
    """CPU time a process has used so far (user + system), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid``, parents before children."""
    out, queue = [], [pid]
    while queue:
        current = queue.pop(0)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                children = Path(f"/proc/{current}/task/{task}/children").read_text().split()
            except OSError:
                continue
            for child in map(int, children):
                out.append(child)
                queue.append(child)
    return out


class Slot:
    """The two host directories a sandbox sees at ``/job/ro`` and ``/job/rw``; removed with ``remove``."""

    def __init__(self, path: Path, owner: int | None, release: Callable[[], None] = lambda: None, *,
                 own_uid: bool = False) -> None:
        self.path = path
        self.ro = path / "ro"
        self.rw = path / "rw"
        self.owner = owner  # the host uid its sandbox runs as, which must be able to write rw (None: the node's)
        # RLIMIT_NPROC of its sandbox: its uid's alone, or what it shares with every other process of that uid
        self.process_limit = PROCESS_LIMIT if own_uid else SHARED_PROCESS_LIMIT
        self._release = release  # called once the slot is removed: its uid is free again
        self._next = 0
        path.mkdir(parents=True, exist_ok=True)
        os.chmod(path, 0o755)
        for d in (self.ro, self.rw):
            d.mkdir(parents=True, exist_ok=True)
        if owner is not None:
            os.chown(self.rw, owner, owner)

    def place_read_only(self, source: Path) -> str:
        """Mirror ``source`` (a directory) under ``ro``; returns where the sandbox sees it. Blocking."""
        name = self._name()
        _mirror(source, self.ro / name, readable_by_other=self.owner is not None)
        return f"{SLOT_TARGET}/ro/{name}"

    def place_writable(self) -> tuple[Path, str]:
        """A new, empty writable directory: its host path and where the sandbox sees it."""
        name = self._name()
        host = self.rw / name
        host.mkdir()
        if self.owner is not None:
            os.chown(host, self.owner, self.owner)
        return host, f"{SLOT_TARGET}/rw/{name}"

    def remove(self, *, give_back_uid: bool = True) -> None:
        """Remove the slot, once its sandbox's processes are gone: its uid goes to the next sandbox (unless
        ``give_back_uid`` is false: a process of it outlived its kill, and would share that uid's limits)."""
        remove_tree(self.path)
        release, self._release = self._release, lambda: None
        if give_back_uid:
            release()

    def clear(self) -> None:
        """Remove what was placed in the slot (its process serves another job next). Blocking."""
        for d in (self.ro, self.rw):
            for entry in d.iterdir():
                remove_tree(entry)

    def _name(self) -> str:
        self._next += 1
        return str(self._next)


def _mirror(source: Path, dest: Path, *, readable_by_other: bool) -> None:
    """``dest`` as a copy of the tree at ``source``: files hard-linked where that is safe, else copied.

    A hard link shares the file's mode: when the sandbox runs as another uid it can read only files that
    others may read, so those that they may not are copied (mode 0644) instead.
    """
    dest.mkdir(mode=0o755)
    for root, dirs, files in os.walk(source, followlinks=False):
        rel = Path(root).relative_to(source)
        for d in list(dirs):
            src = Path(root) / d
            if src.is_symlink():
                dirs.remove(d)
                os.symlink(os.readlink(src), dest / rel / d)
            else:
                (dest / rel / d).mkdir(mode=0o755)
        for f in files:
            src, dst = Path(root) / f, dest / rel / f
            st = src.lstat()
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(src), dst)
                continue
            if not stat.S_ISREG(st.st_mode):
                continue  # devices, sockets, fifos: never passed to a job
            if not readable_by_other or st.st_mode & stat.S_IROTH:
                try:
                    os.link(src, dst)
                    continue
                except OSError:
                    pass
            shutil.copyfile(src, dst)
            os.chmod(dst, 0o644 | (0o111 if st.st_mode & 0o100 else 0))


class Sandbox:
    """Builds bubblewrap command lines and slots. ``problem()`` says why it cannot work here, if it cannot.

    Args:
        runtime: host paths the sandboxed program needs read-only, seen at the same paths inside.
        users: the uids a root node's sandboxes run as, one per slot (by default, a range for this process).
    """

    def __init__(self, runtime: list[Path], *, bwrap: str | None = None, users: JobUsers | None = None) -> None:
        self.runtime = [Path(p) for p in runtime]
        self.bwrap = bwrap or shutil.which("bwrap") or "bwrap"
        self.users = users or JobUsers(f"sandboxes of process {os.getpid()}", shared=NOBODY)
        self.as_nobody = os.geteuid() == 0  # the sandboxes then run as other uids (the job sees 65534)
        self._root: Path | None = None
        self._problem: str | None = None
        self._checked = False
        self._cgroups: MemoryCgroups | None = None
        self._no_cgroups: str | None = None  # why there are none, once checked
        self._cgroups_checked = False
        self._cgroups_lock = threading.Lock()  # runners start in worker threads, and the API asks in one
        self._nested_userns: bool | None = None  # whether this bubblewrap can keep sandboxes from making them

    def root(self) -> Path:
        """This process's folder of slots (world-traversable, so that the sandboxes' uids can bind from it)."""
        if self._root is None:
            remove_stale_roots()
            self._root = Path(tempfile.mkdtemp(prefix=f"{_ROOT_PREFIX}{os.getpid()}-"))
            os.chmod(self._root, 0o755)
        return self._root

    def new_slot(self) -> Slot:
        """The files of one sandbox, and on a root node the uid it runs as (``Slot.owner``). Blocking."""
        path = Path(tempfile.mkdtemp(dir=self.root()))
        if not self.as_nobody:
            return Slot(path, None)
        uid = self.users.take()[0]
        try:
            return Slot(path, uid, lambda: self.users.give_back(uid), own_uid=uid != self.users.shared)
        except BaseException:
            self.users.give_back(uid)
            raise

    def memory_cgroup(self, slot: Slot) -> MemoryCgroup | None:
        """A new memory cgroup for the sandbox of ``slot`` (``command(cgroup=)``), or None where the node cannot
        make them. Where it has the pids controller (cgroup v2), it holds the sandbox to ``PROCESS_LIMIT``
        processes too, whatever its uid shares.

        Blocking. Raises OSError when it can make them, but not this one.
        """
        if self.no_memory_cgroups() is not None:
            return None
        cgroup = self._cgroups.new()
        try:
            cgroup.limit_processes(PROCESS_LIMIT)
        except OSError:
            cgroup.remove()
            raise
        return cgroup

    def no_memory_cgroups(self) -> str | None:
        """Why this node's sandboxes have no memory cgroups (None: they have). Checked once; blocking."""
        with self._cgroups_lock:
            if not self._cgroups_checked:
                try:
                    self._cgroups = MemoryCgroups.here()
                except OSError as e:
                    self._no_cgroups = str(e)
                    log.info("no memory cgroups for sandboxes (%s): their memory is held by rlimits only", e)
                self._cgroups_checked = True
        return self._no_cgroups

    def share(self, path: Path, name: str) -> Path:
        """A read-only copy of ``path`` inside the sandbox root (for files the node keeps in private folders)."""
        dest = self.root() / name
        if not dest.exists():  # two runners starting at once both copy; each to its own file, the last wins
            tmp = dest.with_name(f"{dest.name}.{threading.get_ident()}.tmp")
            shutil.copyfile(path, tmp)
            os.chmod(tmp, 0o444)
            os.replace(tmp, dest)
        return dest

    def command(self, argv: list[str], *, slot: Slot | None, env: dict[str, str], limits: Limits,
                extra_ro: list[Path] = (), cgroup: MemoryCgroup | None = None, seccomp: int | None = None) -> list[str]:
        """The full command line: the cgroup, the slot's uid, rlimits, then bubblewrap, then ``argv`` inside.

        It starts as the node, which moves it into ``cgroup`` (a sandbox's own uid may not); ``setpriv`` then
        takes the slot's uid, groups cleared, before anything of the job's runs.
        ``seccomp``: a descriptor the process inherits, open on a seccomp program (``socket_filter``) that
        bubblewrap reads and applies to everything inside.
        """
        joined = cgroup.join_args() if cgroup is not None else []
        args = [*joined, *as_user(slot.owner if slot is not None else None), *limits.prlimit_args(), self.bwrap,
                "--unshare-user", *(["--disable-userns"] if self.disables_nested_userns() else []),
                "--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts",
                "--unshare-cgroup-try", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
                "--uid", str(NOBODY), "--gid", str(NOBODY), "--hostname", "shoal-job",
                "--ro-bind", "/usr", "/usr", "--symlink", "usr/bin", "/bin", "--symlink", "usr/lib", "/lib",
                "--symlink", "usr/lib64", "/lib64", "--symlink", "usr/sbin", "/sbin",
                "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--clearenv"]
        for path in [*self.runtime, *extra_ro]:
            if not str(path).startswith("/usr/"):
                args += ["--ro-bind", str(path), str(path)]
        if slot is not None:
            args += ["--ro-bind", str(slot.ro), f"{SLOT_TARGET}/ro", "--bind", str(slot.rw), f"{SLOT_TARGET}/rw"]
        for key, value in env.items():
            args += ["--setenv", key, value]
        if seccomp is not None:
            args += ["--seccomp", str(seccomp)]
        return [*args, "--chdir", "/", "--", *argv]

    def disables_nested_userns(self) -> bool:
        """Whether this bubblewrap keeps what runs inside from making user namespaces of its own (0.8 and later:
        ``--disable-userns``). Checked once; blocking.

        In one of its own, job code that reached the OS had every capability over a new cgroup namespace: it
        mounted cgroupfs there and, where its sandbox shares the node's uid, raised its own ``memory.max`` and
        ``pids.max`` (a 64 MiB job then held 256 MiB).
        """
        if self._nested_userns is None:
            try:
                shown = subprocess.run([self.bwrap, "--help"], capture_output=True, text=True, timeout=30).stdout
            except (OSError, subprocess.SubprocessError):
                shown = ""
            self._nested_userns = "--disable-userns" in shown
        return self._nested_userns

    def problem(self) -> str | None:
        """Why sandboxed processes cannot start on this node (None: they can). Checked once; blocking."""
        if self._checked:
            return self._problem
        self._checked = True
        if shutil.which(self.bwrap) is None:
            self._problem = "bubblewrap (bwrap) is not installed: apt-get install bubblewrap"
        elif missing := [tool for tool in ("prlimit", "setpriv") if not shutil.which(tool)
                         and (tool == "prlimit" or self.as_nobody)]:  # setpriv: to take the sandboxes' uids
            self._problem = f"{' and '.join(missing)} (util-linux) not installed"
        else:
            try:
                slot = self.new_slot()
                try:
                    true = shutil.which("true") or "/usr/bin/true"
                    program = socket_filter()
                    seccomp = filter_descriptor(program) if program else None
                    try:
                        result = subprocess.run(
                            self.command([true], slot=slot, env={}, limits=Limits(processes=slot.process_limit),
                                         seccomp=seccomp),
                            capture_output=True, timeout=30, pass_fds=(seccomp,) if seccomp else ())
                    finally:
                        if seccomp is not None:
                            os.close(seccomp)
                finally:
                    slot.remove()
                if result.returncode != 0:
                    detail = result.stderr.decode(errors="replace").strip()[-500:]
                    self._problem = f"bubblewrap cannot create a sandbox here: {detail or result.returncode}"
            except (OSError, subprocess.SubprocessError) as e:
                self._problem = f"bubblewrap cannot create a sandbox here: {e}"
            unreadable = [p for p in self.runtime if self.as_nobody and not _readable_by_other(p)]
            if self._problem is None and unreadable:
                self._problem = f"sandboxes run as other uids, which cannot read {unreadable[0]} (bound read-only)"
        if self._problem:
            log.warning("job sandbox unavailable: %s", self._problem)
        return self._problem

    def close(self) -> None:
        if self._root is not None:
            remove_tree(self._root)
            self._root = None
        self.close_cgroups()

    def close_cgroups(self) -> None:
        """Remove the node's memory cgroups folder, once its sandboxes are gone. Blocking."""
        if self._cgroups is not None:
            self._cgroups.close()


def _readable_by_other(path: Path) -> bool:
    """Whether every folder down to ``path`` may be entered, and ``path`` read, by anyone."""
    path = path.resolve()
    for parent in reversed(path.parents):
        if not os.stat(parent).st_mode & stat.S_IXOTH:
            return False
    mode = os.stat(path).st_mode
    return bool(mode & stat.S_IROTH and (not stat.S_ISDIR(mode) or mode & stat.S_IXOTH))


def remove_stale_roots() -> int:
    """Delete slot folders left by node processes that no longer exist (a kill -9); returns how many."""
    removed = 0
    for path in Path(tempfile.gettempdir()).glob(f"{_ROOT_PREFIX}*"):
        try:
            pid = int(path.name[len(_ROOT_PREFIX):].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            remove_tree(path)
            removed += 1
    return removed


class SandboxedProcess:
    """A process started from the trio thread (see the module docstring), with trio streams and wait.

    trio's own ``open_process`` forks from a worker thread, which would end a ``--die-with-parent``
    sandbox as soon as that thread retires.
    """

    def __init__(self, argv: list[str], *, pass_fds: tuple[int, ...]) -> None:
        self._popen = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, pass_fds=pass_fds,
            close_fds=True, start_new_session=False)
        self.pid = self._popen.pid
        self.stdin = trio.lowlevel.FdStream(os.dup(self._popen.stdin.fileno()))
        self.stdout = trio.lowlevel.FdStream(os.dup(self._popen.stdout.fileno()))
        self.stderr = trio.lowlevel.FdStream(os.dup(self._popen.stderr.fileno()))
        for stream in (self._popen.stdin, self._popen.stdout, self._popen.stderr):
            stream.close()
        self._pidfd = os.pidfd_open(self.pid)

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    def poll(self) -> int | None:
        return self._popen.poll()

    def kill(self) -> None:
        if self._popen.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)

    async def wait(self) -> int:
        while self._popen.poll() is None:
            await trio.lowlevel.wait_readable(self._pidfd)
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1
        return self._popen.returncode

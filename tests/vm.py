"""A throwaway Linux VM on this host's own files, for what this machine's kernel cannot show: cgroup v2.

Most Linux hosts today have the unified (v2) cgroup hierarchy only, every node of a ``terraform/``
cluster among them (Debian 12); a CI machine may have v1. ``run_in_vm`` boots Debian's kernel
(``scripts/install-vm`` unpacks it) under QEMU, with this host's root file system shared read-only
over 9p (what the VM writes goes to a tmpfs above it) and cgroup v2 mounted, and runs one command there: the same
Python, Node.js, bubblewrap and checkout as the host's, on another kernel.

It runs as a systemd service with ``Delegate=memory pids`` does, alone in a cgroup of its own
(``/system.slice/shoal.service``) whose parent gives it the memory and pids controllers. QEMU emulates the CPU
(no KVM here), on one virtual CPU so that the tests beside it keep the other cores: a command runs about
20 times slower than on the host.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

VM_DIR = Path(os.environ.get("SHOAL_VM_DIR") or Path.home() / ".cache/shoal/vm")
SERVICE_CGROUP = "/system.slice/shoal.service"
# and what they depend on: this host's files over virtio, under a tmpfs that takes the VM's writes
MODULES = ("9p", "9pnet_virtio", "virtio_pci", "overlay")
_EXIT = "shoal-vm-exit:"
IN_VM = "SHOAL_IN_TEST_VM"  # set in the VM's environment


def cgroup_v2_outside_the_vm() -> bool:
    """Whether this is a cgroup v2 host other than the VM, whose cgroups are not set out for the tests (they share
    systemd's, with a shell's processes): the memory cgroup tests run in the VM instead (test_cgroup_v2.py)."""
    from executors.cgroups import memory_hierarchy

    return memory_hierarchy() is None and os.environ.get(IN_VM) != "1"


@dataclass(frozen=True)
class VmRun:
    returncode: int | None  # None: the VM never reported one (it crashed or timed out)
    console: str  # everything the kernel and the command printed


def problem() -> str | None:
    """Why no VM can boot here (None: one can)."""
    if not all(shutil.which(tool) for tool in ("qemu-system-x86_64", "cpio", "modprobe")) \
            or not Path("/bin/busybox").exists():
        return "QEMU, busybox, cpio or kmod is not installed: scripts/install-vm"
    if _kernel() is None:
        return f"no kernel unpacked in {VM_DIR}: scripts/install-vm"
    return None


def _kernel() -> Path | None:
    return next(iter(sorted((VM_DIR / "boot").glob("vmlinuz-*"))), None)


def _initramfs(work: Path, argv: list[str], cwd: Path, env: dict[str, str]) -> Path:
    """A busybox initramfs whose init mounts this host's root over 9p and runs ``argv`` in it."""
    kernel = _kernel()
    assert kernel is not None
    version = kernel.name.removeprefix("vmlinuz-")
    root = work / "initramfs"
    for folder in ("bin", "dev", "proc", "sys", "lower", "upper", "host", "modules"):
        (root / folder).mkdir(parents=True)
    shutil.copy("/bin/busybox", root / "bin/busybox")
    modules: list[str] = []
    for module in MODULES:
        shown = subprocess.run(["modprobe", "-d", str(VM_DIR), "-S", version, "--show-depends", module],
                               capture_output=True, text=True, check=True).stdout
        for line in shown.splitlines():
            name = Path(line.split()[1]).name
            if name not in modules:
                modules.append(name)
                shutil.copy(line.split()[1], root / "modules" / name)
    exports = " ".join(f"{key}={shlex.quote(value)}" for key, value in {**env, IN_VM: "1"}.items())
    inner = f"cd {shlex.quote(str(cwd))} && echo $$ > /sys/fs/cgroup{SERVICE_CGROUP}/cgroup.procs && " \
            f"exec env {exports} {shlex.join(argv)}"
    # Stage 1 mounts this host's root and what goes on it, then makes it the root (a chroot would keep
    # bubblewrap from making user namespaces); stage 2, the same busybox, runs the command and powers off.
    stage2 = f"""B=/run/busybox
echo "+memory +pids" > /sys/fs/cgroup/cgroup.subtree_control
$B mkdir -p /sys/fs/cgroup/system.slice
echo "+memory +pids" > /sys/fs/cgroup/system.slice/cgroup.subtree_control
$B mkdir -p /sys/fs/cgroup{SERVICE_CGROUP}
$B ip link set lo up
/bin/sh -c {shlex.quote(inner)}
echo "{_EXIT}$?"
$B poweroff -f
"""
    (root / "stage2").write_text(stage2)
    init = f"""#!/bin/busybox sh
B=/bin/busybox
$B mount -t proc proc /proc
$B mount -t sysfs sys /sys
$B mount -t devtmpfs dev /dev
for m in {" ".join(modules)}; do $B insmod /modules/$m; done
$B mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host /lower
$B mount -t tmpfs upper /upper
$B mkdir /upper/files /upper/work
$B mount -t overlay -o lowerdir=/lower,upperdir=/upper/files,workdir=/upper/work root /host
$B mount -t proc proc /host/proc
$B mount -t sysfs sys /host/sys
$B mount -t devtmpfs dev /host/dev
$B mount -t tmpfs run /host/run
$B mount -t cgroup2 cgroup2 /host/sys/fs/cgroup
$B cp /bin/busybox /stage2 /host/run/
exec $B switch_root /host /run/busybox sh /run/stage2
"""
    (root / "init").write_text(init)
    (root / "init").chmod(0o755)
    image = work / "initramfs.cpio"
    listing = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
    with image.open("wb") as out:
        subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=listing, stdout=out, check=True)
    return image


def run_in_vm(argv: list[str], *, cwd: Path, env: dict[str, str] | None = None, timeout: float = 900,
              memory_mib: int = 2048) -> VmRun:
    """Boot a VM, run ``argv`` in ``cwd`` as root there, with ``env`` added, and power it off."""
    kernel = _kernel()
    assert kernel is not None, problem()
    with tempfile.TemporaryDirectory(prefix="shoal-vm-") as work:
        image = _initramfs(Path(work), argv, cwd, env or {})
        argv = ["qemu-system-x86_64", "-accel", "tcg", "-cpu", "max", "-smp", "1",
                "-m", str(memory_mib), "-nographic", "-nic", "none", "-no-reboot",
                "-kernel", str(kernel), "-initrd", str(image),
                "-append", "console=ttyS0 quiet panic=-1",
                "-virtfs", "local,path=/,mount_tag=host,security_model=passthrough,readonly=on,multidevs=remap"]
        try:
            done = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout)
            console = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
        except subprocess.TimeoutExpired as e:
            return VmRun(None, (e.stdout or b"").decode(errors="replace") + "\n(timed out)")
    for line in reversed(console.splitlines()):
        if line.strip().startswith(_EXIT):
            return VmRun(int(line.strip()[len(_EXIT):]), console)
    return VmRun(None, console)

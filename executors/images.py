"""Build Shoal's base Docker images offline, from Debian packages.

No container registry is reachable on the machines Shoal is developed and tested on, so the
images jobs use most are built locally:

- ``busybox:latest`` and ``shoal/busybox:latest``: ``/bin/busybox`` from Debian's
  ``busybox-static`` plus one symlink per applet (about 2 MB, under a second).
- ``shoal/python:3``: a ``debootstrap --variant=minbase`` Debian with ``python3``, stripped of
  docs, locales and apt caches (about 120 MB, under a minute with a nearby mirror).
- ``shoal/python-sci``: the same with Debian's numpy, scipy and pandas. Debian's scipy depends on
  pythran, which brings a C++ toolchain and Boost (about 700 MB) that nothing needs at run time: they
  are purged after debootstrap, with BLAS left to the reference ``libblas3`` (single-threaded, and the
  same bytes on every CPU, unlike OpenBLAS's per-CPU kernels): about 320 MB, about 3 minutes on an idle
  2-core machine (debootstrap takes most of it; 12 minutes when the machine is busy).

Images that already exist are skipped. Run ``python -m executors.images`` (``scripts/install-docker``
does). Missing Debian tools (``busybox-static``, ``debootstrap``) are installed with apt-get, which
needs root.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import docker
import docker.errors

from executors import docker_seccomp

BUSYBOX_TAGS = ("busybox:latest", "shoal/busybox:latest")
PYTHON_TAG = "shoal/python:3"
PYTHON_SCI_TAG = "shoal/python-sci:latest"


@dataclass(frozen=True)
class DebianImage:
    """An image made by ``debootstrap --variant=minbase --include=PACKAGES``.

    ``drop``: packages that ``packages`` depend on but that nothing needs at run time; they are purged,
    with every package only they needed (see :func:`unneeded_packages`).
    """

    tag: str
    packages: tuple[str, ...]
    drop: tuple[str, ...] = ()
    about: str = ""


DEBIAN_IMAGES = (
    DebianImage(PYTHON_TAG, ("python3",), about="about 120 MB, under a minute"),
    DebianImage(PYTHON_SCI_TAG, ("python3", "python3-numpy", "python3-scipy", "python3-pandas"),
                drop=("python3-pythran",), about="about 320 MB, about 3 minutes"),
)
IMAGES = (*BUSYBOX_TAGS, *(i.tag for i in DEBIAN_IMAGES))

_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_DEFAULT_MIRROR = "http://deb.debian.org/debian"
_STRIP = ("var/cache/apt", "var/lib/apt/lists", "usr/share/doc", "usr/share/locale", "usr/share/man",
          "usr/share/info", "var/log")

Progress = Callable[[str], None]


def _say(msg: str) -> None:
    print(f"[images] {msg}", flush=True)


def _exists(client: docker.DockerClient, name: str) -> bool:
    try:
        client.images.get(name)
        return True
    except docker.errors.ImageNotFound:
        return False


def _split(name: str) -> tuple[str, str]:
    repo, _, tag = name.rpartition(":")
    return (repo, tag) if repo and "/" not in tag else (name, "latest")


def _apt_install(package: str, progress: Progress) -> None:
    if os.geteuid() != 0:
        raise RuntimeError(f"{package} is missing and installing it needs root: apt-get install -y {package}")
    progress(f"installing {package} with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(["apt-get", "install", "-y", "-q", package], env=env, capture_output=True).returncode:
        subprocess.run(["apt-get", "update", "-q"], env=env, check=True, capture_output=True)
        subprocess.run(["apt-get", "install", "-y", "-q", package], env=env, check=True, capture_output=True)


def _dpkg_installed(package: str) -> bool:
    out = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.endswith("installed")


def _busybox_binary(progress: Progress) -> Path:
    """The static busybox from Debian's busybox-static (a dynamic one would need libc in the image)."""
    if not _dpkg_installed("busybox-static"):
        _apt_install("busybox-static", progress)
    out = subprocess.run(["dpkg", "-L", "busybox-static"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        if line.endswith("/busybox") and Path(line).is_file():
            return Path(line)
    raise RuntimeError("busybox-static is installed but its /bin/busybox was not found")


def busybox_tar(busybox: Path) -> bytes:
    """A rootfs tarball: /bin/busybox, a symlink per applet, /tmp, and passwd/group for 'root' and 'nobody'."""
    applets = subprocess.run([str(busybox), "--list-full"], capture_output=True, text=True, check=True).stdout.split()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:

        def add_dir(name: str, mode: int = 0o755) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, int(time.time())
            tar.addfile(info)

        def add_file(name: str, data: bytes, mode: int = 0o644) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, int(time.time())
            tar.addfile(info, io.BytesIO(data))

        dirs = {"bin", "sbin", "usr", "usr/bin", "usr/sbin", "etc", "root", "home", "var", "proc", "sys", "dev"}
        dirs |= {str(Path(a).parent) for a in applets}
        for d in sorted(dirs - {"."}):
            add_dir(d)
        add_dir("tmp", 0o1777)
        add_file("bin/busybox", busybox.read_bytes(), 0o755)
        for applet in applets:
            if applet == "bin/busybox":
                continue
            link = tarfile.TarInfo(applet)
            link.type, link.linkname, link.mode = tarfile.SYMTYPE, "/bin/busybox", 0o777
            tar.addfile(link)
        add_file("etc/passwd", b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/home:/bin/false\n")
        add_file("etc/group", b"root:x:0:\nnogroup:x:65534:\n")
    return buf.getvalue()


def build_busybox(client: docker.DockerClient, progress: Progress = _say) -> list[str]:
    missing = [t for t in BUSYBOX_TAGS if not _exists(client, t)]
    if not missing:
        progress(f"{', '.join(BUSYBOX_TAGS)}: present")
        return []
    present = [t for t in BUSYBOX_TAGS if t not in missing]
    if present:  # one of the names exists: the other is the same image under a second name
        image = client.images.get(present[0])
    else:
        started = time.monotonic()
        data = busybox_tar(_busybox_binary(progress))
        repo, tag = _split(missing[0])
        client.api.import_image_from_data(data, repository=repo, tag=tag, changes=[f"ENV PATH={_PATH}",
                                                                                  'CMD ["sh"]'])
        image = client.images.get(missing[0])
        progress(f"{missing[0]}: imported {len(data) / 1e6:.1f} MB in {time.monotonic() - started:.1f}s")
    for name in missing:
        repo, tag = _split(name)
        image.tag(repo, tag)
    progress(f"{', '.join(missing)}: ready ({image.short_id})")
    return missing


def debian_mirror() -> str:
    """The Debian mirror apt is configured with (deb822 .sources or one-line lists), not the security one."""
    candidates: list[str] = []
    for path in sorted(Path("/etc/apt/sources.list.d").glob("*.sources")):
        candidates += re.findall(r"^URIs:\s*(\S+)", path.read_text(errors="replace"), flags=re.M)
    for path in [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*.list"))]:
        if path.is_file():
            candidates += re.findall(r"^deb\s+(?:\[[^]]*\]\s+)?(\S+)", path.read_text(errors="replace"), flags=re.M)
    for uri in candidates:
        if "security" not in uri:
            return uri
    return _DEFAULT_MIRROR


def debian_suite() -> str:
    try:
        text = Path("/etc/os-release").read_text()
    except OSError:
        return "bookworm"
    m = re.search(r"^VERSION_CODENAME=\"?(\w+)", text, flags=re.M)
    return m.group(1) if m else "bookworm"


def _dpkg_fields(status: str) -> Iterable[dict[str, str]]:
    """The stanzas of a dpkg ``status`` file as field dicts (continuation lines dropped)."""
    for stanza in status.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            if line and not line[0].isspace() and ":" in line:
                key, _, value = line.partition(":")
                fields[key] = value.strip()
        if fields.get("Package") and fields.get("Status", "").endswith(" installed"):
            yield fields


def _alternatives(depends: str) -> list[list[str]]:
    """``"a (>= 1), b:any | c"`` → ``[["a"], ["b", "c"]]``: package names without versions or arch."""
    groups = []
    for group in depends.split(","):
        names = [re.split(r"[\s(:]", alt.strip(), maxsplit=1)[0] for alt in group.split("|")]
        if names := [n for n in names if n]:
            groups.append(names)
    return groups


def unneeded_packages(status: str, keep: Iterable[str], drop: Iterable[str]) -> list[str]:
    """Installed packages (of a dpkg ``status`` file) that nothing kept needs once ``drop`` goes.

    Kept: ``keep``, every Essential or required package (the minbase), and what they depend on
    (Depends, Pre-Depends), taking for each dependency its first alternative that is installed (or
    every installed package providing it). ``drop`` and what only it needed are the rest.
    """
    installed = {f["Package"]: f for f in _dpkg_fields(status)}
    providers: dict[str, list[str]] = {}
    for name, f in installed.items():
        for virtual in _alternatives(f.get("Provides", "")):
            providers.setdefault(virtual[0], []).append(name)
    dropped = set(drop)
    roots = [n for n, f in installed.items()
             if f.get("Essential") == "yes" or f.get("Priority") == "required" or n in set(keep)]
    needed: set[str] = set()
    todo = [n for n in roots if n not in dropped]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        f = installed[name]
        for group in _alternatives(f"{f.get('Pre-Depends', '')},{f.get('Depends', '')}"):
            for alt in group:
                chosen = [alt] if alt in installed else sorted(providers.get(alt, []))
                if chosen:
                    todo += [c for c in chosen if c not in dropped]
                    break
    return sorted(set(installed) - needed)


def build_debian(client: docker.DockerClient, image: DebianImage, progress: Progress = _say) -> list[str]:
    if _exists(client, image.tag):
        progress(f"{image.tag}: present")
        return []
    if shutil.which("debootstrap") is None:
        _apt_install("debootstrap", progress)
    started = time.monotonic()
    mirror, suite = debian_mirror(), debian_suite()
    with tempfile.TemporaryDirectory(prefix="shoal-image-", dir="/var/tmp") as tmp:
        rootfs = Path(tmp) / "rootfs"
        progress(f"{image.tag}: debootstrap {suite} (minbase + {' '.join(image.packages)}) from {mirror} "
                 f"— {image.about}")
        proc = subprocess.run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(image.packages)}", suite, str(rootfs),
             mirror], capture_output=True, text=True,
        )
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).splitlines()[-15:])
            raise RuntimeError(f"debootstrap failed (exit {proc.returncode}):\n{tail}")
        if image.drop:
            status = (rootfs / "var/lib/dpkg/status").read_text()
            unneeded = unneeded_packages(status, image.packages, image.drop)
            progress(f"{image.tag}: purging {len(unneeded)} packages only {', '.join(image.drop)} needed")
            subprocess.run(["chroot", str(rootfs), "dpkg", "--purge", "--force-depends", *unneeded],
                           check=True, capture_output=True, env={"PATH": _PATH, "DEBIAN_FRONTEND": "noninteractive"})
        for rel in _STRIP:
            target = rootfs / rel
            if target.is_dir():
                shutil.rmtree(target)
                target.mkdir()
        python = rootfs / "usr/bin/python"
        if not python.exists():  # the name most scripts and users type
            python.symlink_to("python3")
        progress(f"{image.tag}: importing into Docker")
        archive = Path(tmp) / "rootfs.tar"
        subprocess.run(["tar", "-C", str(rootfs), "--numeric-owner", "-cf", str(archive), "."], check=True)
        repo, tag = _split(image.tag)
        with archive.open("rb") as f:
            client.api.import_image_from_data(
                f, repository=repo, tag=tag,
                changes=[f"ENV PATH={_PATH}", "ENV LANG=C.UTF-8", 'CMD ["python3"]'],
            )
        size = archive.stat().st_size
    progress(f"{image.tag}: imported {size / 1e6:.0f} MB in {time.monotonic() - started:.0f}s")
    return [image.tag]


def build_images(client: docker.DockerClient | None = None, *, python: bool = True, sci: bool = True,
                 progress: Progress = _say) -> list[str]:
    """Build the base images that are missing; return the names built (or tagged) now.

    ``python``: the Debian images too (``shoal/python:3``, and with ``sci`` ``shoal/python-sci``).

    Raises:
        docker.errors.DockerException: the daemon does not answer.
        RuntimeError: a Debian tool is missing and cannot be installed, or debootstrap failed.
    """
    client = client or docker.from_env()
    docker_seccomp.ensure(client.version().get("Version"), progress)  # not an image, but what jobs run under
    built = build_busybox(client, progress)
    for image in DEBIAN_IMAGES if python else ():
        if sci or image.tag != PYTHON_SCI_TAG:
            built += build_debian(client, image, progress)
    return built


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print("usage: python -m executors.images [--no-python] [--no-sci]\n\nBuild missing base images offline: "
              f"{', '.join(IMAGES)} (--no-python: busybox only; --no-sci: not {PYTHON_SCI_TAG}).")
        return 0
    try:
        client = docker.from_env()
    except docker.errors.DockerException as e:
        print(f"[images] the Docker daemon does not answer ({e}); run scripts/install-docker", file=sys.stderr)
        return 1
    try:
        built = build_images(client, python="--no-python" not in args, sci="--no-sci" not in args)
    except (RuntimeError, subprocess.CalledProcessError, docker.errors.APIError) as e:
        print(f"[images] failed: {e}", file=sys.stderr)
        return 1
    _say(f"done: built {', '.join(built)}" if built else "done: all images present")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

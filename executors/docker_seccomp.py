"""The seccomp profile of docker jobs: Docker's default, with sockets of the internet and unix families only.

Docker's default profile lets a container make a socket of any family. Netlink and ICMP ("ping")
sockets hold their queued messages in kernel memory that no memory cgroup counts: a 64 MiB job held
977 MiB of unread netlink replies, and as much again in ping sockets (those are refused by a sysctl,
``executors.docker.NO_PING``). ``AF_VSOCK`` reaches the hypervisor whatever the container's network.
So a job's profile is Docker's own, with ``socket`` allowed for ``AF_UNIX``, ``AF_INET`` and
``AF_INET6`` only, ``socketpair`` for ``AF_UNIX``, no ``io_uring`` (it makes sockets without calling
``socket``; Docker dropped it from its default in version 25), and no 32-bit calls: 32-bit x86 makes
sockets through ``socketcall``, with arguments seccomp cannot read (a job made netlink and vsock
sockets so, with ``int 0x80``). Listing network interfaces (``getifaddrs``) takes netlink, so it fails.
``fallocate`` says EOPNOTSUPP: it took 20 GiB of disk in one call, between two looks of the disk watch,
and in its ``KEEP_SIZE`` mode past the file size limit too (glibc's ``posix_fallocate`` writes instead).

A custom profile replaces Docker's default rather than adding to it, and the daemon does not hand its
default out, so ``ensure`` fetches the one of the daemon's version from the Go module proxy, once:
``shoal images build`` does (``scripts/setup``, a cluster's startup), else the node before its first
docker job. Where it cannot be had, jobs run under Docker's default profile, and the node logs why.
"""

from __future__ import annotations

import contextlib
import http.client
import io
import json
import logging
import os
import re
import sys
import threading
import urllib.request
import zipfile
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("shoal.executors.docker")

# Docker's default profile, as fetched: beside this module (shared by a cluster's root setup and its node's
# user), else in the user's cache where that is not writable
PROFILE = Path(__file__).with_name("docker-seccomp.json")
USER_PROFILE = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shoal" / "docker-seccomp.json"
PINNED_VERSION = "20.10.24"  # Debian 12's docker.io: fetched when the daemon's own version is not on the proxy
SOCKET_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6
DENYING = {"SCMP_ACT_ERRNO", "SCMP_ACT_KILL", "SCMP_ACT_KILL_PROCESS", "SCMP_ACT_KILL_THREAD", "SCMP_ACT_TRAP"}
MAX_PROFILE = 1 << 20  # bytes of a default profile (Docker's: 13 KB) ...
MAX_MODULE = 64 << 20  # ... and of the module archive it comes in (4.6 MB)
REFUSED = {"socket", "socketpair", "socketcall", "io_uring_setup", "io_uring_enter", "io_uring_register", "fallocate"}
EOPNOTSUPP = 95


def job_profile(default: dict) -> dict:
    """Docker's ``default`` profile with the socket families of ``SOCKET_FAMILIES`` only (see the module).
    ValueError when ``default`` is not a profile that refuses what it does not name (it came over the network)."""
    if not isinstance(default, dict) or default.get("defaultAction") not in DENYING \
            or not isinstance(default.get("syscalls"), list):
        raise ValueError(f"not a profile that refuses what it does not name: default action "
                         f"{default.get('defaultAction') if isinstance(default, dict) else None!r}")
    rules = []
    for rule in default["syscalls"]:
        names = [name for name in rule["names"] if name not in REFUSED]
        if names:
            rules.append({**rule, "names": names})
    rules += [{"names": ["socket"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": family,
                                                                           "op": "SCMP_CMP_EQ"}]}
              for family in SOCKET_FAMILIES]
    # a pair only of unix sockets (another family's pair would load its kernel module, TIPC's for one)
    rules.append({"names": ["socketpair"], "action": "SCMP_ACT_ALLOW",
                  "args": [{"index": 0, "value": SOCKET_FAMILIES[0], "op": "SCMP_CMP_EQ"}]})
    rules.append({"names": ["fallocate"], "action": "SCMP_ACT_ERRNO", "errnoRet": EOPNOTSUPP})
    # no 32-bit calls (a process that makes one is killed): on x86 the kernel takes sockets through
    # socketcall, and libseccomp makes the socket rules above into socketcall rules blind to the family
    arches = [{**arch, "subArchitectures": []} for arch in default.get("archMap") or ()]
    return {**default, "archMap": arches, "syscalls": rules}


def security_option(daemon_version: str | None) -> str | None:
    """``seccomp=<profile>`` for a job's container, fetching Docker's default first if need be (blocking, at most
    a minute); None (logged) when it cannot be had."""
    path = ensure(daemon_version, log.info)
    profile = None
    try:
        profile = job_profile(json.loads(path.read_text())) if path is not None else None
    except (OSError, ValueError) as e:
        log.warning("cannot use %s: %s", path, e)
    if profile is None:
        log.warning("docker jobs run under Docker's default seccomp profile, which lets them make netlink and "
                    "vsock sockets: it could not be fetched (see above; shoal images build fetches it)")
        return None
    return "seccomp=" + json.dumps(profile, separators=(",", ":"))


def fetch(version: str, proxy: str = "https://proxy.golang.org") -> bytes:
    """Docker's default profile of ``version`` (e.g. 20.10.24), from the moby module on a Go module proxy."""
    url = f"{proxy.rstrip('/')}/github.com/docker/docker/@v/v{version}+incompatible.zip"
    with urllib.request.urlopen(url, timeout=30) as answer:
        body = answer.read(MAX_MODULE + 1)
    if len(body) > MAX_MODULE:
        raise ValueError(f"{url} is larger than {MAX_MODULE} bytes")
    archive = zipfile.ZipFile(io.BytesIO(body))
    member = f"github.com/docker/docker@v{version}+incompatible/profiles/seccomp/default.json"
    if archive.getinfo(member).file_size > MAX_PROFILE:
        raise ValueError(f"{member} is larger than {MAX_PROFILE} bytes")
    profile = archive.read(member)
    job_profile(json.loads(profile))  # a profile it can use, not an error page or one that allows all
    return profile


def ensure(daemon_version: str | None, say: Callable[[str], None] = print) -> Path | None:
    """Where Docker's default profile is, fetched now unless it was before: the daemon's version's, else
    ``PINNED_VERSION``'s. None (said) when neither could be fetched."""
    for path in (PROFILE, USER_PROFILE):
        if path.exists() and path.stat().st_size:
            return path
    proxy = next((p for p in os.environ.get("GOPROXY", "").split(",") if p.startswith("http")),
                 "https://proxy.golang.org")
    found = re.match(r"\d+\.\d+\.\d+", daemon_version or "")
    for version in dict.fromkeys(([found.group()] if found else []) + [PINNED_VERSION]):
        try:
            profile = fetch(version, proxy)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, http.client.HTTPException) as e:
            say(f"cannot fetch Docker {version}'s default seccomp profile from {proxy}: {e}")
            continue
        for path in (PROFILE, USER_PROFILE):
            # whole or not at all, a partial file of its own: nodes starting their first docker jobs at once
            # each write it, and one cut short or moved away by another would leave its jobs without it
            partial = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.part")
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                partial.write_bytes(profile)
                partial.replace(path)
            except OSError as e:
                with contextlib.suppress(OSError):
                    partial.unlink()
                say(f"cannot write {path}: {e}")
                continue
            say(f"Docker {version}'s default seccomp profile, the base of docker jobs': {path}")
            return path
        return None
    return None


if __name__ == "__main__":
    sys.exit(0 if ensure(sys.argv[1] if len(sys.argv) > 1 else None) else 1)

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

A custom profile replaces Docker's default rather than adding to it, and the daemon does not hand its
default out, so ``ensure`` fetches the one of the daemon's version from the Go module proxy into
``PROFILE``: ``shoal images build`` does, and so ``scripts/setup`` and a cluster's nodes. Without it,
jobs run under Docker's default profile, and the node logs why.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import sys
import urllib.request
import zipfile
from collections.abc import Callable
from functools import cache
from pathlib import Path

log = logging.getLogger("shoal.executors.docker")

PROFILE = Path(__file__).with_name("docker-seccomp.json")  # Docker's default profile, as fetched
PINNED_VERSION = "20.10.24"  # Debian 12's docker.io: fetched when the daemon's own version is not on the proxy
SOCKET_FAMILIES = (1, 2, 10)  # AF_UNIX, AF_INET, AF_INET6
REFUSED = {"socket", "socketpair", "socketcall", "io_uring_setup", "io_uring_enter", "io_uring_register"}


def job_profile(default: dict) -> dict:
    """Docker's ``default`` profile with the socket families of ``SOCKET_FAMILIES`` only (see the module)."""
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
    # no 32-bit calls (a process that makes one is killed): on x86 the kernel takes sockets through
    # socketcall, and libseccomp makes the socket rules above into socketcall rules blind to the family
    arches = [{**arch, "subArchitectures": []} for arch in default.get("archMap") or ()]
    return {**default, "archMap": arches, "syscalls": rules}


@cache
def security_option() -> str | None:
    """``seccomp=<profile>`` for a job's container, or None (logged) when Docker's default was never fetched."""
    try:
        default = json.loads(PROFILE.read_text())
    except (OSError, ValueError) as e:
        log.warning("docker jobs run under Docker's default seccomp profile, which lets them make netlink and "
                    "vsock sockets (%s: %s; shoal images build fetches it)", PROFILE, e)
        return None
    return "seccomp=" + json.dumps(job_profile(default), separators=(",", ":"))


def fetch(version: str, proxy: str = "https://proxy.golang.org") -> bytes:
    """Docker's default profile of ``version`` (e.g. 20.10.24), from the moby module on a Go module proxy."""
    url = f"{proxy.rstrip('/')}/github.com/docker/docker/@v/v{version}+incompatible.zip"
    with urllib.request.urlopen(url, timeout=120) as answer:
        archive = zipfile.ZipFile(io.BytesIO(answer.read()))
    member = f"github.com/docker/docker@v{version}+incompatible/profiles/seccomp/default.json"
    profile = archive.read(member)
    json.loads(profile)  # a profile, not an error page
    return profile


def ensure(daemon_version: str | None, say: Callable[[str], None] = print) -> bool:
    """Fetch Docker's default profile into ``PROFILE`` unless it is there: the daemon's version's, else
    ``PINNED_VERSION``'s. False (said) when neither could be fetched."""
    if PROFILE.exists() and PROFILE.stat().st_size:
        return True
    proxy = next((p for p in os.environ.get("GOPROXY", "").split(",") if p.startswith("http")),
                 "https://proxy.golang.org")
    found = re.match(r"\d+\.\d+\.\d+", daemon_version or "")
    for version in dict.fromkeys(([found.group()] if found else []) + [PINNED_VERSION]):
        try:
            partial = PROFILE.with_suffix(".part")
            partial.write_bytes(fetch(version, proxy))
            partial.replace(PROFILE)  # whole or not at all: a profile cut short is never taken for one
            say(f"Docker {version}'s default seccomp profile, the base of docker jobs': {PROFILE}")
            return True
        except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
            say(f"cannot fetch Docker {version}'s default seccomp profile from {proxy}: {e}")
    return False


if __name__ == "__main__":
    sys.exit(0 if ensure(sys.argv[1] if len(sys.argv) > 1 else None) else 1)

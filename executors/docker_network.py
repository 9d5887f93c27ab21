"""The network docker jobs get when they ask for one: the internet, but not the host or its cloud.

A container on Docker's default bridge reaches the host's own services, the link-local metadata
server at 169.254.169.254 and every private address the host can route to. On GCP that server hands
out the instance's service-account token and its attributes, among them the cluster's network key
(terraform: ``shoal-network-key``), and the private addresses are the VPC: the other nodes' services,
the operator's databases. So a network job runs on its own bridge, ``shoal-jobs``, fenced by iptables
rules that this module keeps in place:

* ``DOCKER-USER`` (traffic the host forwards): nothing from the bridge to 169.254.0.0/16, the private
  ranges (10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16) or the shared one (100.64.0.0/10), except DNS
  (GCP's resolver is the metadata server's address, AWS's and a home router's are private ones);
* ``INPUT`` (traffic to the host itself): nothing from the bridge, on any of the host's addresses.

The bridge also keeps jobs apart (``enable_icc=false``: one container cannot reach another) and has no
IPv6, so a container has none either. Nodes sharing a Docker daemon share the bridge and its rules.

A node running as root checks the rules before every network job's container is created, and puts
back what is missing. A node that is not root cannot read them: root puts them in place at boot
(``shoal docker fence``; a GCP node's unit does so before each start) and leaves ``FENCED``, holding
the boot's id and a digest of the rules, as the sign that it did. Without that sign, or when the rules
cannot be put in place, a network job is refused here, retryably, and runs on a node that can fence it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import docker
import docker.errors

from executors.base import ExecutorError

JOBS_NETWORK = "shoal-jobs"
BRIDGE = "shoal-jobs0"  # the host's name for the network's bridge (at most 15 characters)
# link-local (the metadata server), private (RFC 1918: the VPC) and shared (RFC 6598: carrier-grade NAT, VPNs)
CLOUD = ("169.254.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10")
IPTABLES_TIMEOUT = 10.0  # seconds per iptables call (-w waits for another program's lock)
FENCED = Path("/run/shoal/docker-fence")  # the boot's id and the rules', once root has put them in place
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")

# (chain, rule) in the filter table, each chain's in the order they must match. `-i BRIDGE` matches only
# what a container sends: replies coming back to it arrive on the host's other interfaces. DNS passes
# to any address: Docker's embedded resolver forwards a container's queries from its own namespace, so
# they cross the bridge to the host's resolver, which may be in CLOUD (and elsewhere, DNS is the internet).
RULES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("DOCKER-USER", ("-i", BRIDGE, "-p", "udp", "--dport", "53", "-j", "RETURN")),
    ("DOCKER-USER", ("-i", BRIDGE, "-p", "tcp", "--dport", "53", "-j", "RETURN")),
    *(("DOCKER-USER", ("-i", BRIDGE, "-d", cidr, "-j", "REJECT")) for cidr in CLOUD),
    ("INPUT", ("-i", BRIDGE, "-j", "REJECT")),
)


def fenced_network(api: docker.APIClient) -> str:
    """Blocking: the name of the fenced network, after making sure it and its rules are in place.

    Raises:
        ExecutorError: the fence is not in place and this node cannot put it there (retryable: another
            node may run the job).
    """
    if not _is_root():
        if not _fenced_this_boot():
            raise _refused("no fence was put in place since boot: as root, run `shoal docker fence`")
        _check_network(_inspect(api))
        return JOBS_NETWORK
    _ensure_network(api)
    _ensure_rules()
    with contextlib.suppress(OSError):  # only nodes that are not root read it
        FENCED.parent.mkdir(parents=True, exist_ok=True)
        FENCED.write_text(_fence_id())
    return JOBS_NETWORK


def _is_root() -> bool:
    return os.geteuid() == 0


def _fence_id() -> str:
    """This boot's id and a digest of RULES: a node upgraded to new rules without a reboot must not trust the
    old ones (a fence put in place by the last release let jobs reach the VPC)."""
    rules = hashlib.sha256(repr(RULES).encode()).hexdigest()[:16]
    return f"{_boot_id()} {rules}"


def _boot_id() -> str:
    try:
        return BOOT_ID.read_text().strip()
    except OSError:
        return "unknown"


def _fenced_this_boot() -> bool:
    try:
        return FENCED.read_text() == _fence_id()
    except OSError:
        return False


def _inspect(api: docker.APIClient) -> dict | None:
    try:
        return api.inspect_network(JOBS_NETWORK)
    except docker.errors.NotFound:
        return None
    except docker.errors.DockerException as e:
        raise _refused(f"the Docker daemon did not describe network {JOBS_NETWORK}: {e}") from e


def _ensure_network(api: docker.APIClient) -> None:
    found = _inspect(api)
    if found is None:
        try:
            api.create_network(JOBS_NETWORK, driver="bridge", check_duplicate=True, labels={"shoal.network": "jobs"},
                               options={"com.docker.network.bridge.name": BRIDGE,
                                        "com.docker.network.bridge.enable_icc": "false"})
            return
        except docker.errors.APIError as e:
            if e.status_code != 409:  # 409: another node on this daemon made it first
                raise _refused(f"the Docker daemon did not create network {JOBS_NETWORK}: {e}") from e
            found = _inspect(api)
    _check_network(found)


def _check_network(found: dict | None) -> None:
    if found is None:
        raise _refused(f"Docker network {JOBS_NETWORK} is missing: as root, run `shoal docker fence`")
    options = found.get("Options") or {}
    if options.get("com.docker.network.bridge.name") != BRIDGE \
            or options.get("com.docker.network.bridge.enable_icc") != "false":
        raise _refused(f"Docker network {JOBS_NETWORK} exists but was not made by Shoal "
                       f"(its bridge must be {BRIDGE}, with inter-container traffic off): remove it")


def _ensure_rules() -> None:
    """Each chain's rules, in order: when one is missing, the chain's are put back whole (a rule inserted
    alone at the top could shadow the ones meant to match before it)."""
    iptables = shutil.which("iptables") or shutil.which("iptables", path="/usr/sbin:/sbin")
    if iptables is None:
        raise _refused("iptables is not installed")
    for chain in dict.fromkeys(chain for chain, _ in RULES):
        rules = [rule for c, rule in RULES if c == chain]
        if all(_iptables(iptables, "-C", chain, *rule).returncode == 0 for rule in rules):
            continue
        for rule in rules:
            while _iptables(iptables, "-D", chain, *rule).returncode == 0:
                pass
        for rule in reversed(rules):
            done = _iptables(iptables, "-I", chain, *rule)
            if done.returncode != 0:
                raise _refused(f"iptables -I {chain} failed: {done.stderr.strip() or done.returncode}")


def _iptables(iptables: str, *args: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run([iptables, "-w", "-t", "filter", *args], capture_output=True, text=True,
                              timeout=IPTABLES_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise _refused(f"iptables did not run: {e}") from e


def _refused(why: str) -> ExecutorError:
    return ExecutorError(f"this node cannot keep a network job from the host and its cloud's private addresses "
                         f"({why}); the job runs elsewhere", retryable=True)

"""Node settings and their defaults, in one place."""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from jobs.spec import Resources

VERSION = "0.1.0"  # the node's, as the API reports it
NVIDIA_SMI_TIMEOUT = 20.0  # seconds: the driver can be slow to answer on a cold start
_GPU_LINE = re.compile(r"^GPU \d+: ", re.MULTILINE)  # `nvidia-smi -L`: "GPU 0: NVIDIA L4 (UUID: GPU-...)"


def shoal_home() -> Path:
    """``$SHOAL_HOME`` or ``~/.shoal``: client key, devstack state, default node data dir."""
    return Path(os.environ.get("SHOAL_HOME") or Path.home() / ".shoal")


def machine_resources(data_dir: Path | None = None) -> Resources:
    """What this machine has: the default total limits of a compute node. Its disk is the free space where
    the node keeps its jobs' files, ``data_dir`` (it was the home directory's, which may be another disk:
    a node on a 40 MiB data dir offered 70 GiB and took jobs that could not fit)."""
    import shutil

    import psutil

    where = Path(data_dir) if data_dir is not None else Path.home()
    while not where.exists() and where != where.parent:  # a data dir not made yet: the disk it will be on
        where = where.parent
    return Resources(
        cpu=float(os.cpu_count() or 1),
        memory=int(psutil.virtual_memory().total),
        disk=int(shutil.disk_usage(where).free),
        gpu=detect_gpus(),
    )


def count_gpus(listing: str) -> int:
    """The GPUs in the output of ``nvidia-smi -L`` (one ``GPU N: NAME (UUID: ...)`` line each)."""
    return len(_GPU_LINE.findall(listing))


@functools.cache
def detect_gpus() -> int:
    """GPUs the NVIDIA driver sees on this machine: 0 without ``nvidia-smi`` or when it fails."""
    import shutil
    import subprocess

    smi = shutil.which("nvidia-smi")
    if smi is None:
        return 0
    try:
        done = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return count_gpus(done.stdout) if done.returncode == 0 else 0


@dataclass(frozen=True)
class NodeConfig:
    data_dir: Path = field(default_factory=lambda: shoal_home() / "node")
    listen: tuple[str, ...] = ("/ip4/127.0.0.1/tcp/0",)
    peers: tuple[str, ...] = ()
    api_host: str = "127.0.0.1"
    api_port: int = 8700  # 0: pick a free port
    requester: bool = True
    compute: bool = True
    noop: bool = False  # map every engine to the noop executor (transport/scheduler benchmarks)
    labels: Mapping[str, str] = field(default_factory=dict)  # the compute node's, for job selectors (--label)
    limit_total: Resources | None = None  # None: what the machine has
    limit_job: Resources | None = None  # None: the total
    backlog_size: int = 10_000
    pending_bid_timeout: float = 120.0  # longest a bid answered "pending" holds capacity (seconds)
    ipfs_api: str | None = "http://127.0.0.1:5001"  # Kubo RPC; None or unreachable: results kept locally
    require_ipfs: bool = False  # --ipfs-api given: the node waits for that Kubo at start, and starts only with it
    allow_private_urls: bool = False  # let jobs download inputs from private/loopback addresses (devstack)
    retention: float = 7 * 24 * 3600.0  # seconds results (and contexts) stay pinned after a job ends
    ttl: float = 30 * 24 * 3600.0  # seconds finished jobs, sweeps and executions are kept, then deleted
    bad_actor: bool = False  # report wrong results (to test verification and quarantine)
    quarantine_after: int = 3  # rejected results after which a node's bids are refused
    log_level: str = "INFO"
    unsandboxed_python: bool = False  # run python jobs without the OS sandbox (unsafe; logged loudly)
    allow_images: tuple[str, ...] = ()  # docker images jobs may use (patterns); empty: base and pulled ones
    max_image_size: int = 10 * 1024**3  # bytes one image pulled for a job may take (executors.docker_pulls)
    image_cache_size: int | None = None  # bytes of images pulled for jobs kept; None: 20 GiB, at most disk/4
    allow_network: bool = False  # give docker jobs that ask for it network access (off: such jobs are refused)
    max_output_entries: int | None = None  # files and folders one job's outputs may hold; None: 50,000
    network_key: Path | None = None  # private network: only peers holding this key connect (node.net.admission)
    trusted_peers: Path | None = None  # file of peer ids: only these peers connect (with the key, if one is set)
    authorized_keys: Path | None = None  # client keys the API lets in (node.api.access); None: any key
    open_api: bool = False  # let any key in on an API reachable from other machines (explicit choice)
    tls_cert: Path | None = None  # serve the API over HTTPS with this certificate (PEM) ...
    tls_key: Path | None = None  # ... and its private key (PEM)
    api_names: tuple[str, ...] = ()  # Host values (beyond the API address) that signed requests may name
    quota_jobs_in_flight: int = 10_000  # per client: live jobs on this node (429 past it)
    quota_spec_bytes_in_flight: int = 256 * 1024**2  # per client: their specs together
    quota_submits_per_second: float = 1_000.0  # per client: job and sweep submissions (bursts of twice this)
    quota_event_streams: int = 256  # per client: open event streams
    quota_context_bytes_per_hour: int = 2 * 1024**3  # per client: working directories and specs stored
    quota_sweep_indexes_per_hour: int = 2_000_000  # per client: indexes of the sweeps it submits
    peer_rate_limit: float = 1000.0  # direct requests/s one peer may make, bursts of twice that; 0: no limit

    @property
    def peer_rate_burst(self) -> float:
        return max(1.0, 2 * self.peer_rate_limit)

"""What a user asks for: the job spec, its engine, resources, deal and deadlines.

The spec is immutable once submitted; validation gathers every problem at once (pydantic)
and names the field, so the API can answer 422 with all of them.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from jobs.selector import MAX_SELECTOR_CHARS, matches, parse_selector

_UNITS = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3, "t": 1000**4, "tb": 1000**4,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "ti": 1024**4, "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def _finite(number: int | float) -> float:
    """``number`` as a float; an integer too large for one (JSON allows any) becomes infinity, refused
    by the caller, instead of an OverflowError no validator turns into a clear refusal."""
    try:
        return float(number)
    except OverflowError:
        return math.inf


def parse_bytes(value: int | float | str) -> int:
    """``"512MiB"`` → 536870912; plain numbers are bytes. Raises ValueError with a clear message."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string like '512MiB'")
    if isinstance(value, int | float):
        number, unit = _finite(value), ""
    elif not isinstance(value, str):
        raise ValueError("a size must be a number of bytes or a string like '512MiB'")
    else:
        m = _SIZE.match(value)
        if not m or m.group(2).lower() not in _UNITS:
            raise ValueError(f"cannot read size {value!r}: use bytes or a unit such as 512MiB, 2GB")
        number, unit = float(m.group(1)), m.group(2).lower()
    if not math.isfinite(number):  # JSON's Infinity, NaN, or 1e400
        raise ValueError("a size must be a finite number of bytes")
    if number < 0:
        raise ValueError("a size cannot be negative")
    return int(number * _UNITS[unit])


_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DURATION = re.compile(r"^(?:(\d+(?:\.\d+)?)([smhd]))+$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")


def parse_duration(value: float | str) -> float:
    """``"10m"`` → 600.0, ``"1h30m"`` → 5400.0 (units s, m, h, d); plain numbers are seconds.

    Raises ValueError with a clear message; the range is the caller's to check.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("a duration must be a number of seconds or a string like '10m' or '1h30m'")
    text = value.strip().lower().replace(" ", "") if isinstance(value, str) else ""
    if isinstance(value, int | float):
        seconds = _finite(value)
    elif re.fullmatch(r"\d+(?:\.\d+)?", text):
        seconds = float(text)
    elif _DURATION.match(text):
        seconds = sum(float(n) * _DURATION_UNITS[unit] for n, unit in _DURATION_PART.findall(text))
    else:
        raise ValueError(f"cannot read duration {value!r}: use seconds or units such as 90s, 10m, 1h30m, 2d")
    if not math.isfinite(seconds):
        raise ValueError("a duration must be a finite number of seconds")
    return seconds


def format_bytes(n: int) -> str:
    for unit, size in (("TiB", 1024**4), ("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{n} B"


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True,  # never echo a secret_env
                              allow_inf_nan=False)  # every number a job names is finite


MAX_SPEC_BYTES = 1 << 20  # a job or sweep spec as a request body to a node, inline code and all
MAX_GPUS = 64  # per job and per node: more than one machine holds
# What a run takes of a node at least, whatever its job asks: no engine runs a job on less (Docker's CPU
# quota floor is 1% of a core, and it refuses smaller memory limits). A job asking for less once reserved
# nothing, and a node ran 151 of them at once with its capacity showing free.
MIN_CPU = 0.01
MIN_MEMORY = 6 * 1024**2
# The disk of a job that states none (``resources.disk`` 0), reserved and enforced like any other (less where
# the node's per-job disk is less). Such jobs once reserved nothing yet could each write the node's whole
# per-job disk, so two at once could fill what ``--limit-total-disk`` was to keep free. Nomad's default
# ephemeral disk is 300 MB; inputs count against it too.
DEFAULT_DISK = 1024**3
# ends the error of a run stopped midway by its disk limit: what the disk watch, looking every 0.1 s, saw of the
# outputs then (``JobSpec.speaks_of_the_node``)
SEEN_WHILE_RUNNING = " (seen while it ran)"
RESOURCE_DIMS = ("cpu", "memory", "disk", "gpu")


class Resources(_Frozen):
    """What one execution of the job needs (and what a node reserves when it bids)."""

    cpu: float = Field(0.1, ge=0, le=1024, description="CPU cores")
    memory: int = Field(64 * 1024**2, ge=0, description="bytes; accepts strings like '512MiB'")
    disk: int = Field(0, ge=0, description="bytes of scratch disk, inputs and outputs; accepts strings like '1GiB' "
                                           "(0: 1 GiB, or the node's per-job disk where that is less)")
    # Whole GPUs (docker jobs get them as device requests). Left out of the JSON when 0, so specs
    # written before GPUs existed keep their hash.
    gpu: int = Field(0, ge=0, le=MAX_GPUS, exclude_if=lambda v: not v, description="GPUs (whole devices)")

    def reserved(self, node_max: Resources | None = None) -> Resources:
        """What a run asking for this takes of a node whose per-job maximum is ``node_max``: at least
        ``MIN_CPU`` and ``MIN_MEMORY``, and ``DEFAULT_DISK`` (at most the node's) when it states no disk.
        Without ``node_max`` a job stating no disk takes none (an engine run on its own: no limit)."""
        disk = self.disk or (min(DEFAULT_DISK, node_max.disk) if node_max else 0)
        if self.cpu >= MIN_CPU and self.memory >= MIN_MEMORY and disk == self.disk:
            return self
        return self.model_copy(update={"cpu": max(self.cpu, MIN_CPU), "memory": max(self.memory, MIN_MEMORY),
                                       "disk": disk})

    @field_validator("memory", "disk", mode="before", json_schema_input_type=int | str)
    @classmethod
    def _sizes(cls, v: Any) -> int:
        return parse_bytes(v)

    @field_validator("cpu", mode="before", json_schema_input_type=float | str)
    @classmethod
    def _cpu(cls, v: Any) -> Any:
        if isinstance(v, str) and v.endswith("m"):  # Kubernetes-style millicores
            return float(v[:-1]) / 1000
        return v

    def fits_in(self, other: Resources) -> bool:
        return (self.cpu <= other.cpu and self.memory <= other.memory and self.disk <= other.disk
                and self.gpu <= other.gpu)

    # CPU sums are rounded to a millionth of a core: 0.1 + 0.2 is not 0.3 in floating point, and a node's
    # free CPU, added to and taken from for every job, drifted below its total (4 cores free showed as
    # 3.999999999999999, and a job asking for all 4 never fitted again)
    def __add__(self, other: Resources) -> Resources:
        return Resources(cpu=round(self.cpu + other.cpu, 6), memory=self.memory + other.memory,
                         disk=self.disk + other.disk, gpu=self.gpu + other.gpu)

    def __sub__(self, other: Resources) -> Resources:
        return Resources(
            cpu=max(0.0, round(self.cpu - other.cpu, 6)),
            memory=max(0, self.memory - other.memory),
            disk=max(0, self.disk - other.disk),
            gpu=max(0, self.gpu - other.gpu),
        )

    def shortfall(self, limit: Resources) -> list[str]:
        """Human descriptions of what does not fit in ``limit``."""
        return self.amounts(self.short_of(limit))

    def short_of(self, limit: Resources) -> list[str]:
        """The dimensions (of RESOURCE_DIMS) in which this is more than ``limit``."""
        return [dim for dim in RESOURCE_DIMS if getattr(self, dim) > getattr(limit, dim)]

    def amounts(self, dims: Iterable[str]) -> list[str]:
        """``dims`` of this, for people: 8 CPU, 2 GiB memory."""
        return [f"{self.cpu:g} CPU" if dim == "cpu" else f"{self.gpu} GPU" if dim == "gpu"
                else f"{format_bytes(getattr(self, dim))} {dim}" for dim in dims]


class Deal(_Frozen):
    concurrency: int = Field(1, ge=1, le=100, description="how many nodes run the job")
    confidence: int = Field(0, ge=0, le=100, description="matching results needed to verify (0: no check)")
    min_bids: int = Field(0, ge=0, le=100, description="bids to wait for before choosing")

    @model_validator(mode="after")
    def _consistent(self) -> Deal:
        if self.confidence > self.concurrency:
            raise ValueError("confidence cannot exceed concurrency")
        return self


MAX_BID_DEADLINE = 24 * 3600.0  # the longest a job may wait for bids: every job ends in finite time
MIN_SILENCE = 1.0  # the shortest deadlines.silence: a sweep's node reports three times in each, and no more often
MAX_RETRIES = 10  # runs of a job (or a sweep index) after the first that failed
# What a node may spend before a run's timeout starts (``compute.runner`` holds it to these; a requester
# waiting for the result counts them too):
INPUT_DEADLINE = 120.0  # staging all of a job's inputs
MAX_TIMEOUT = 7 * 24 * 3600  # seconds one run may take at most
PREPARE_DEADLINE = 900.0  # readying its engine: pulling an image (the others take seconds, within result_grace)


class Deadlines(_Frozen):
    """Seconds allowed for each phase of a job.

    ``bid`` is the queue timeout (``--queue-timeout``): how long a job waits for nodes, from its
    submission or its last retry. By default as long as any job may wait, ``MAX_BID_DEADLINE``, so a
    batch larger than its cluster queues rather than fails (the first release waited 600 s). The API
    refuses ``null`` (once "no limit": a job re-announced for ever); a job stored by an older node
    with ``null`` or more waits ``bid_limit``, the cap.
    """

    bid: float | None = Field(MAX_BID_DEADLINE, gt=0, description="the queue timeout: waiting for enough "
                              f"bids (queued jobs wait here); at most {MAX_BID_DEADLINE:g}")
    min_bids: float = Field(10.0, gt=0, description="waiting for min_bids before choosing among fewer")
    silence: float = Field(10.0, gt=0, description="a node running the job may be unreachable this long")
    result_grace: float = Field(60.0, gt=0, description="after the run timeout, before giving up on a result")

    @field_validator("bid", "min_bids", "silence", "result_grace", mode="before",
                     json_schema_input_type=float | str | None)
    @classmethod
    def _durations(cls, v: Any) -> Any:
        return v if v is None else parse_duration(v)

    @property
    def bid_limit(self) -> float:
        """The bid deadline in force: ``bid``, capped at ``MAX_BID_DEADLINE``."""
        return MAX_BID_DEADLINE if self.bid is None else min(self.bid, MAX_BID_DEADLINE)

    def finite_problem(self) -> str | None:
        """Why a new submission's deadlines are refused, or None (see the class docstring). A silence or
        a grace without bound would let a job whose node died run for ever."""
        if self.bid is None:
            return (f"deadlines.bid: null (no limit) is not accepted: every job has a finite deadline "
                    f"(at most {MAX_BID_DEADLINE:g} s)")
        for name in ("bid", "min_bids", "silence", "result_grace"):
            if getattr(self, name) > MAX_BID_DEADLINE:
                return f"deadlines.{name}: at most {MAX_BID_DEADLINE:g} s"
        if self.silence < MIN_SILENCE:
            return (f"deadlines.silence: at least {MIN_SILENCE:g} s (a node running a sweep's indexes reports "
                    "three times in each)")
        return None


class _Engine(_Frozen):
    """What every engine says about itself: what a node must offer to run it, and how it may be checked."""

    @property
    def executor(self) -> str:
        """The engine a node must offer (in its ``engines``) to run this one."""
        return self.name

    @property
    def deterministic(self) -> bool:
        """Whether the same job gives the same bytes on every node (so its result may be cached)."""
        return self.name in DETERMINISTIC_ENGINES

    @property
    def sealed(self) -> bool:
        """Whether nothing of the node reaches the job's result but what the engine makes the same everywhere,
        so that, on the same inputs, a node whose result differs is wrong (``JobSpec.judged_exactly``)."""
        return self.name in SEALED_ENGINES

    @property
    def needs_network(self) -> bool:
        return False


class NoopEngine(_Engine):
    """Runs nothing and succeeds: for trying the network, tests and benchmarks."""

    name: Literal["noop"] = "noop"
    delay: float = Field(0.0, ge=0, le=3600, description="seconds the run takes (to simulate work)")


KERNEL_VIEWS = ("proc", "sys", "dev")  # no container's working directory is under these
_NAME_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_HOST_PART = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?"
# Docker's image reference (distribution/reference): [host[:port]/]name[/name...][:tag][@algorithm:hex]
_IMAGE_REFERENCE = re.compile(
    rf"(?P<name>(?:{_HOST_PART}(?:\.{_HOST_PART})*(?::[0-9]+)?/)?{_NAME_PART}(?:/{_NAME_PART})*)"
    r"(?::\w[\w.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,128})?", re.ASCII)
MAX_IMAGE_NAME = 255  # Docker's bound on an image's name (before its tag and digest)


def image_problem(image: str) -> str | None:
    """Why no Docker daemon would take ``image`` as a reference, or None. Not a model rule: a job an older
    node stored keeps loading (and fails on its nodes as before); a new submission is refused at once."""
    found = _IMAGE_REFERENCE.fullmatch(image)
    if found is None:
        shown = image if len(image) <= 80 else image[:80] + "…"
        return (f"image {shown!r}: not an image reference (a lower-case name, as in busybox, python:3.11-slim or "
                "ghcr.io/org/name@sha256:HEX)")
    if len(found["name"]) > MAX_IMAGE_NAME:
        return f"image: a name of {len(found['name']):,} characters; at most {MAX_IMAGE_NAME} are allowed"
    return None


class DockerEngine(_Engine):
    name: Literal["docker"] = "docker"
    image: str = Field(min_length=1)
    entrypoint: list[str] = []
    args: list[str] = []
    workdir: str | None = None
    network: bool = False

    @property
    def needs_network(self) -> bool:
        return self.network

    def workdir_problem(self) -> str | None:
        """Why no node runs a container in ``workdir``, or None: it is an absolute path without '..', outside
        the kernel's views (``/proc/self/fd/N`` took an older runc's container to the host's files:
        CVE-2024-21626). Not a model rule: a job an older node stored keeps loading."""
        if self.workdir is None:
            return None
        parts = [p for p in self.workdir.split("/") if p not in ("", ".")]
        if not self.workdir.startswith("/") or ".." in parts:
            return f"workdir {self.workdir!r}: an absolute path without '..'"
        if parts and parts[0] in KERNEL_VIEWS:
            return f"workdir {self.workdir!r}: not under /{parts[0]} (the kernel's view of the host)"
        return None


class WasmEngine(_Engine):
    name: Literal["wasm"] = "wasm"
    module: str = Field(min_length=1, description="path of the module inside the job's inputs, or ipfs://CID")
    entrypoint: str = "_start"
    args: list[str] = []


class PythonEngine(_Engine):
    """``python main.py ARGS`` or ``python -c CODE ARGS``: in Pyodide (offline, deterministic), or, with
    ``image``, in that Docker image's ``python3`` (numpy, scipy, pandas: ``shoal/python-sci``), run by the
    docker executor with the same conventions (``executors.docker.python_container``)."""

    name: Literal["python"] = "python"
    main: str | None = Field(None, description="script inside the job's context, e.g. main.py")
    code: str | None = Field(None, description="inline code (python -c)")
    args: list[str] = []
    requirements: list[str] = []
    image: str | None = Field(None, min_length=1, max_length=256, pattern=r"^[^\s]+$",
                              exclude_if=lambda image: image is None,
                              description="run with this Docker image's python3 instead of Pyodide, "
                                          "e.g. shoal/python-sci")
    # (no ``image`` key when unset: a Pyodide job's spec, and so its digest, cache key and seed, stay the
    # bytes they were before the field existed, and that older nodes compute)

    @model_validator(mode="after")
    def _one_program(self) -> PythonEngine:
        if (self.main is None) == (self.code is None):
            raise ValueError("give exactly one of 'main' or 'code'")
        return self

    @property
    def executor(self) -> str:
        return "python" if self.image is None else "docker"

    @property
    def deterministic(self) -> bool:
        """In Pyodide, yes; in an image, only as far as the program seeds itself: entropy and clocks are
        real there, and images of one name may differ between nodes, so results are verified, not cached."""
        return self.image is None


DETERMINISTIC_ENGINES = frozenset({"noop", "wasm", "python"})
# Not python: Pyodide gives honest code the same results everywhere, but job code can reach Node.js (its `js`
# module; driver.py's refusal is a courtesy) and read there what differs between nodes (real clocks, memory
# use, the node's paths, its builtin modules): a client had honest nodes outvoted at will.
SEALED_ENGINES = frozenset({"noop", "wasm"})
# Bumped when an engine's behaviour changes, so cached results of the old one are not reused.
ENGINE_VERSIONS = {"noop": "1", "docker": "1", "wasm": "1", "python": "1"}

EngineSpec = Annotated[NoopEngine | DockerEngine | WasmEngine | PythonEngine, Field(discriminator="name")]
ENGINES: tuple[str, ...] = ("noop", "docker", "wasm", "python")


class Shard(_Frozen):
    """Which part of a directory input a job sees: its files, sorted by path, cut into ``count``
    contiguous runs; the job gets run number ``index``."""

    index: int = Field(ge=0)
    count: int = Field(ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _in_range(self) -> Shard:
        if self.index >= self.count:
            raise ValueError(f"shard index {self.index} is not below the shard count {self.count}")
        return self

    def pick(self, names: list[str]) -> list[str]:
        """This shard's part of ``names`` (sorted first): sizes differ by at most one."""
        names = sorted(names)
        n = len(names)
        return names[n * self.index // self.count : n * (self.index + 1) // self.count]


# What a node can fetch: ipfs://CID[/path], /ipfs/CID[/path], CID[/path] (a CID is 46 or more letters and
# digits), or an http(s) URL. Storage checks the CID itself; this only tells a mistyped or local path apart.
MAX_SOURCE_CHARS = 8192  # what HTTP servers commonly read of a URL
_FETCHABLE = re.compile(r"(ipfs://|/ipfs/)?[A-Za-z0-9]{46,}(/.*)?|https?://\S+", re.DOTALL)


class InputSpec(_Frozen):
    source: str = Field(min_length=1, description="ipfs://CID, CID, or https://… URL")
    path: str = Field(description="absolute path where the job sees it")
    shard: Shard | None = Field(None, description="only this shard of the directory's files (sweeps set it)")

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/") or ".." in v.split("/"):
            raise ValueError("must be an absolute path without '..'")
        return v

    def source_problem(self) -> str | None:
        """Why no node could ever fetch ``source``, or None. Checked on new submissions only: a job an
        older node stored keeps loading, and fails on its nodes as before."""
        if len(self.source) > MAX_SOURCE_CHARS:
            return f"{len(self.source):,} characters; at most {MAX_SOURCE_CHARS:,} are allowed"
        if _FETCHABLE.fullmatch(self.source):
            return None
        return (f"{self.source!r} is neither ipfs://CID, a CID nor an http(s):// URL (a local file travels "
                "in the job's working directory, seen under /context, or is added to IPFS first)")


class OutputSpec(_Frozen):
    name: str = Field(pattern=r"^[A-Za-z0-9._-]{1,64}$", description="the folder it is published as")
    path: str

    @field_validator("name")
    @classmethod
    def _folder_name(cls, v: str) -> str:
        # '..' named the folder above the outputs, the node's own: a docker job linked its stdout file
        # there to any host path, and the node wrote the job's output into it as root
        if v in (".", ".."):
            raise ValueError("an output's name is a folder name: not '.' or '..'")
        return v

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/") or ".." in v.split("/"):
            raise ValueError("must be an absolute path without '..'")
        return v


_ENV_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")  # \Z: "$" also matches before a final newline
MAX_SECRETS = 64  # secret variables per job
MAX_SECRET_BYTES = 64 * 1024  # their names and values together (UTF-8): they travel in a bid's reply


MAX_ENV = 256  # variables in a job's environment (a sweep's index: its template's, its parameters and SHOAL_*)


def check_env_names(env: dict[str, str], limit: int = MAX_ENV) -> dict[str, str]:
    """The rules every environment a job gets must follow; the error names keys, never values."""
    bad = [k for k in env if not _ENV_KEY.match(k)]
    if bad:
        raise ValueError(f"invalid environment variable names: {', '.join(sorted(bad))}")
    if nul := [k for k, v in env.items() if "\0" in v]:  # no OS passes one: the run failed on the compute node
        raise ValueError(f"a NUL character in the value of: {', '.join(sorted(nul))} (an environment cannot hold one)")
    if len(env) > limit:
        raise ValueError(f"at most {limit} environment variables")
    return env


def check_secret_env(env: dict[str, str]) -> dict[str, str]:
    check_env_names(env, MAX_SECRETS)
    size = sum(len(k.encode(errors="replace")) + len(v.encode(errors="replace")) for k, v in env.items())
    if size > MAX_SECRET_BYTES:
        raise ValueError(f"secret variables take {size} bytes: at most {MAX_SECRET_BYTES}")
    return env


class Offer(Protocol):
    """What a compute node offers every job: its ``NodeInfo`` as a requester heard it, or the node itself."""

    labels: Mapping[str, str]
    engines: Sequence[str]
    network: bool  # jobs that ask for network get it (shoal serve --allow-network)
    max_per_job: Resources


class JobSpec(_Frozen):
    """A job as its client asks for it.

    ``secret_env`` is merged into the environment of the run, like ``env``, but never leaves the
    requester except to an accepted node, with the acceptance: announcements, the store's job
    records, the API's views and results carry ``without_secrets()``.
    """

    engine: EngineSpec
    env: dict[str, str] = {}
    secret_env: dict[str, str] = Field(default={}, repr=False, description=(
        "environment variables sent only to the nodes that run the job, and kept by the requester only while "
        "it lives; never shown, never cached"))
    inputs: list[InputSpec] = Field(default=[], max_length=64)
    outputs: list[OutputSpec] = Field(default=[], max_length=64)
    resources: Resources = Resources()
    timeout: float = Field(600.0, gt=0, le=MAX_TIMEOUT, description="seconds one run may take; accepts "
                           "strings like '10m' or '1h30m'")
    deal: Deal = Deal()
    deadlines: Deadlines = Deadlines()
    cache: bool = Field(True, description="complete at once with the verified result of an identical earlier "
                        "job, when there is one (deterministic engines only); false forces a run")
    retries: int = Field(0, ge=0, le=MAX_RETRIES, exclude_if=lambda v: not v, description=(
        "how many times to run the job again, with backoff, after it failed with a non-zero exit code or a "
        "node error (in a sweep: each index)"))
    # Left out of the JSON when empty: such a spec reads, hashes and travels exactly as before selectors
    # (and retries) existed.
    selector: str = Field("", max_length=MAX_SELECTOR_CHARS, exclude_if=lambda v: not v, description=(
        "which nodes may run the job, by their labels, as a Kubernetes label selector: "
        "'zone=eu,gpu in (a100,h100),!spot'; empty: any node"))

    @field_validator("timeout", mode="before", json_schema_input_type=float | str)
    @classmethod
    def _timeout(cls, v: Any) -> float:
        seconds = parse_duration(v)
        if seconds > MAX_TIMEOUT:
            raise ValueError(f"at most 7d ({MAX_TIMEOUT} s)")
        return seconds

    @field_validator("resources")
    @classmethod
    def _positive(cls, v: Resources) -> Resources:
        """A job reserves what it runs with: zero CPU or memory would reserve nothing and limit nothing."""
        if v.cpu <= 0:
            raise ValueError("cpu must be greater than 0 (leave it out for the default, 0.1)")
        if v.memory <= 0:
            raise ValueError("memory must be greater than 0 (leave it out for the default, 64 MiB)")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_env_names(v)

    @field_validator("secret_env")
    @classmethod
    def _secret_env(cls, v: dict[str, str]) -> dict[str, str]:
        return check_secret_env(v)

    @field_validator("selector")
    @classmethod
    def _valid_selector(cls, v: str) -> str:
        parse_selector(v)  # the text is kept as given; a LabelError is a ValueError, so a 422 naming the position
        return v

    @model_validator(mode="after")
    def _secrets_apart(self) -> JobSpec:
        both = sorted(set(self.env) & set(self.secret_env))
        if both:
            raise ValueError(f"set in both env and secret_env: {', '.join(both)}")
        return self

    def without_secrets(self) -> JobSpec:
        """The spec as it may be announced, stored and shown."""
        return self.model_copy(update={"secret_env": {}}) if self.secret_env else self

    def canonical_json(self) -> bytes:
        """Stable bytes for hashing (idempotency, seeds). Secret values are left out (names stay):
        nothing derived from them outlives the job."""
        data = self.model_dump(mode="json", exclude={"secret_env"})  # as before secrets existed
        if self.secret_env:
            data["secret_env"] = sorted(self.secret_env)
        return json.dumps(data, sort_keys=True, separators=(",", ":")).encode()

    def digest(self) -> str:
        return hashlib.sha256(self.canonical_json()).hexdigest()

    def submission_problem(self) -> str | None:
        """Why a new submission of this spec is refused, or None: what no node could ever run, though a
        spec stored by an older node may hold it (it keeps loading)."""
        if problem := self.deadlines.finite_problem():
            return problem
        if self.resources.cpu < MIN_CPU:
            return f"resources.cpu: at least {MIN_CPU:g} (10m): no engine runs a job on less"
        if self.resources.memory < MIN_MEMORY:
            return f"resources.memory: at least {format_bytes(MIN_MEMORY)}: no engine runs a job on less"
        for i, spec in enumerate(self.inputs):
            if why := spec.source_problem():
                return f"inputs.{i}.source: {why}"
        if isinstance(self.engine, DockerEngine) and (why := self.engine.workdir_problem()):
            return f"engine.{why}"
        image = getattr(self.engine, "image", None)
        if image is not None and (why := image_problem(image)):
            return f"engine.{why}"
        return None

    def refusal_by(self, node: Offer) -> str | None:
        """Why ``node`` could never run this job, or None: it could, with room now or later. The one rule a
        compute node bids by and a requester chooses whom to ask by."""
        if not matches(self.selector, node.labels):
            return f"this node's labels do not match selector {self.selector!r}"
        if self.engine.executor not in node.engines:
            return f"engine {self.engine.executor!r} not available here (have: {', '.join(node.engines) or 'none'})"
        if self.engine.needs_network and not node.network:
            return "this node gives jobs no network access (its operator can allow it: shoal serve --allow-network)"
        if over := self.resources.shortfall(node.max_per_job):
            return f"needs more than this node offers per job: {', '.join(over)}"
        return None

    def timed_out(self) -> str:
        """The error a node reports when the run's ``timeout`` ended it (``requester.trust`` knows it)."""
        return f"timed out after {self.timeout:g} s"

    def speaks_of_the_node(self, error: str | None) -> bool:
        """Whether a node's error for this job is one an honest node may report and another not: the run's
        timeout (its speed is its own), or its disk limit passed while the run went on (``SEEN_WHILE_RUNNING``:
        whether the disk watch saw a passing overshoot depends on when it looked). Never held against it."""
        return error == self.timed_out() or (error or "").endswith(SEEN_WHILE_RUNNING)

    def result_deadline(self) -> float:
        """Seconds from a node's acceptance of the job until its requester gives up on the result: staging
        the inputs and pulling the image may take their own deadlines before the run's ``timeout``
        starts, and ``deadlines.result_grace`` covers publishing and delivery. A node silent for
        ``deadlines.silence`` is given up on long before."""
        preparing = (INPUT_DEADLINE if self.inputs else 0.0) + (PREPARE_DEADLINE if self.engine.executor == "docker"
                                                              else 0.0)
        return preparing + self.timeout + self.deadlines.result_grace

    def outcome_spec(self) -> JobSpec:
        """The spec with what only changes scheduling (deadlines, min_bids, selector, retries, cache) at its
        defaults: jobs that differ only there share it, and so their seed and cache key."""
        return self.model_copy(update={"deadlines": Deadlines(), "deal": self.deal.model_copy(update={"min_bids": 0}),
                                       "cache": True, "selector": "", "retries": 0})

    def seed(self) -> bytes:
        """What a deterministic run's clocks and randomness start from (the same on every node). A spec whose
        scheduling fields are the defaults seeds as it did before this method existed."""
        return hashlib.sha256(self.outcome_spec().canonical_json()).digest()

    def repeats_exactly(self) -> bool:
        """Whether every run gives the same result: a deterministic engine on content-addressed inputs only (a
        URL's content may change). Such a job's result may be cached, and its non-zero exit is not retried."""
        return self.engine.deterministic and not any(i.source.startswith(("http://", "https://"))
                                                     for i in self.inputs)

    def judged_exactly(self) -> bool:
        """Whether a node whose result (or error) differs from the agreeing others' is held to be wrong: the job
        repeats exactly on an engine that keeps the node from it (``_Engine.sealed``). Else honest nodes may
        differ: the outvoted result is refused, and held against no one."""
        return self.repeats_exactly() and self.engine.sealed

    def cache_key(self) -> str | None:
        """Key of a reusable result, or None when the result may differ between runs.

        Only deterministic engines, and only content-addressed inputs (a URL may change): the
        key covers what the seed covers, everything that can change the outputs (engine, env, inputs
        by CID, outputs, resources, how strongly it is verified), plus the engine's version. A job
        with secrets is never cached: its result may depend on values no cache key may hold.
        """
        if not self.repeats_exactly() or self.secret_env:
            return None
        material = json.loads(self.outcome_spec().canonical_json())
        material["engine_version"] = ENGINE_VERSIONS[self.engine.name]
        return hashlib.sha256(json.dumps(material, sort_keys=True, separators=(",", ":")).encode()).hexdigest()

"""The flags every run command shares, added to each command by one decorator.

Typer reads a command's parameters from its signature, so ``job_options`` appends the shared
options to the wrapped function's signature and hands them to it packed as ``flags``
(shaping the spec) and ``opts`` (what to do after submitting). Writing them out four times
would let the run commands drift apart. The packs are plain data (``cli.specs`` turns ``flags``
into a spec, ``cli.waiting`` follows ``opts``), light enough for every start of ``shoal``.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

import typer


def duration(text: str) -> float:
    """The value of a ``--…timeout`` flag: seconds, or with units (``90s``, ``10m``, ``1h30m``, ``2d``)."""
    from jobs.spec import parse_duration

    try:
        seconds = parse_duration(text)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if seconds <= 0:
        raise typer.BadParameter("a duration must be more than 0 seconds")
    return seconds


@dataclass(frozen=True)
class SweepFlags:
    """The flags that turn a run into a sweep; all unset (the default) means a single job."""

    params: list[str] = field(default_factory=list)  # --param KEY=V1,V2,...
    file: Path | None = None  # --sweep FILE
    shard_inputs: int | None = None
    shard_path: str | None = None
    success: str | None = None  # "all" | "any"
    success_output: str | None = None
    max_failures: int | None = None

    def __bool__(self) -> bool:
        return bool(self.params) or any(
            v is not None
            for v in (self.file, self.shard_inputs, self.shard_path, self.success, self.success_output,
                      self.max_failures)
        )


@dataclass(frozen=True)
class JobFlags:
    """The spec-shaping flags shared by every run command, as typed on the command line."""

    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    secret_env: list[str] = field(default_factory=list)
    cpu: str | None = None
    memory: str | None = None
    disk: str | None = None
    gpu: int | None = None
    timeout: float | None = None
    concurrency: int | None = None
    confidence: int | None = None
    min_bids: int | None = None
    selector: str | None = None
    queue_timeout: float | None = None
    retries: int | None = None
    sweep: SweepFlags = field(default_factory=SweepFlags)


@dataclass(frozen=True)
class RunOptions:
    """What to do after submitting (the flags that do not shape the spec)."""

    wait: bool = True
    wait_timeout: float | None = None
    id_only: bool = False
    json: bool = False
    idempotency_key: str | None = None
    cache: bool = True


_JOB = "Job"  # help panel
_SWEEP = "Sweep"
_AFTER = "After submitting"


def _opt(*decls: str, panel: str = _JOB, **kw: Any) -> Any:
    return typer.Option(*decls, rich_help_panel=panel, **kw)


_SHARED: list[tuple[str, Any, Any]] = [
    # (parameter name, annotation, default)
    ("inputs", Annotated[list[str] | None, _opt("--input", "-i", metavar="SRC:PATH",
        help="Mount SRC (ipfs://CID, CID or https://…) at PATH; repeatable.")], None),
    ("outputs", Annotated[list[str] | None, _opt("--output", "-o", metavar="NAME:PATH",
        help="Publish the folder PATH as NAME; repeatable.")], None),
    ("env", Annotated[list[str] | None, _opt("--env", "-e", metavar="KEY=VALUE",
        help="Environment variable; a bare KEY takes its value from here. Repeatable.")], None),
    ("secret_env", Annotated[list[str] | None, _opt("--secret-env", metavar="KEY=VALUE",
        help="Secret environment variable: sent only to the nodes that run the job, never shown or cached; "
             "a bare KEY takes its value from here (keeps it out of your shell history). Repeatable.")], None),
    ("cpu", Annotated[str | None, _opt("--cpu", metavar="CORES",
        help="CPU cores, e.g. 0.5 or 500m (default 0.1).")], None),
    ("memory", Annotated[str | None, _opt("--memory", metavar="SIZE",
        help="Memory, e.g. 512MiB (default 64MiB).")], None),
    ("disk", Annotated[str | None, _opt("--disk", metavar="SIZE",
        help="Disk for inputs and outputs, e.g. 4GiB (default 1GiB).")], None),
    ("gpu", Annotated[int | None, _opt("--gpu", metavar="N",
        help="Whole GPUs (docker jobs; only nodes that have them bid).")], None),
    ("timeout", Annotated[float | None, _opt("--timeout", metavar="DURATION", parser=duration,
        help="How long one run may take: seconds, or 10m, 1h30m, 2d (default 10m).")], None),
    ("concurrency", Annotated[int | None, _opt("--concurrency", metavar="N",
        help="How many nodes run the job.")], None),
    ("confidence", Annotated[int | None, _opt("--confidence", metavar="N",
        help="Matching results needed to verify (0: no check; a sweep: for each index).")], None),
    ("min_bids", Annotated[int | None, _opt("--min-bids", metavar="N",
        help="Bids to wait for before choosing.")], None),
    ("selector", Annotated[str | None, _opt("--selector", metavar="SELECTOR",
        help="Only nodes whose labels match, e.g. 'zone=eu,gpu in (a100,h100),!spot'.")], None),
    ("queue_timeout", Annotated[float | None, _opt("--queue-timeout", metavar="DURATION", parser=duration,
        help="How long the job may wait for nodes before it fails (default 1d: as long as any job may).")],
        None),
    ("retries", Annotated[int | None, _opt("--retries", metavar="N",
        help="Run again, with backoff, up to N times after a non-zero exit or a node error (a sweep: each "
             "index).")], None),
    ("params", Annotated[list[str] | None, _opt("--param", metavar="KEY=V1,V2,...", panel=_SWEEP,
        help="Run the job once per value (a sweep; $KEY holds the value, and a python or wasm job's args "
             "take it as '$KEY'); A..B[..STEP] is the numbers from A to B. Repeatable: every combination.")], None),
    ("sweep_file", Annotated[str | None, _opt("--sweep", metavar="FILE", panel=_SWEEP,
        help="Sweep from a YAML/JSON file: grid, zip, items, shard_inputs, shard_path, success, "
             "success_output.")], None),
    ("shard_inputs", Annotated[int | None, _opt("--shard-inputs", metavar="N", min=1, panel=_SWEEP,
        help="Split the --input directory into N shards, one per index ($SHOAL_SHARD).")], None),
    ("shard_path", Annotated[str | None, _opt("--shard-path", metavar="PATH", panel=_SWEEP,
        help="The input to shard, by mount path (needed with several inputs).")], None),
    ("success", Annotated[Literal["all", "any"] | None, _opt("--success", panel=_SWEEP,
        help="all: every index must succeed (default); any: the first success wins, the rest stop.")], None),
    ("max_failures", Annotated[int | None, _opt("--max-failures", metavar="N", min=0, panel=_SWEEP,
        help="Stop the sweep once more than N indexes failed (0: at the first), cancelling what has not run.")],
     None),
    ("success_output", Annotated[str | None, _opt("--success-output", metavar="NAME", panel=_SWEEP,
        help="With --success any: a success must also write something to this --output.")], None),
    ("wait", Annotated[bool, _opt("--wait/--no-wait", panel=_AFTER,
        help="Wait for the job (or sweep) to finish, then print its stdout (a sweep: its ranges).")], True),
    ("wait_timeout", Annotated[float | None, _opt("--wait-timeout", metavar="DURATION", parser=duration,
                                                  panel=_AFTER,
        help="Stop waiting after this long (exit 124; the job goes on).")], None),
    ("id_only", Annotated[bool, _opt("--id-only", panel=_AFTER,
        help="Print only the job (or sweep) id (at once), then wait quietly unless --no-wait.")], False),
    ("json_", Annotated[bool, _opt("--json", panel=_AFTER,
        help="Print the job (or sweep) description as JSON.")], False),
    ("idempotency_key", Annotated[str | None, _opt("--idempotency-key", metavar="KEY", panel=_AFTER,
        help="Submitting again with the same key returns the same job (or sweep).")], None),
    ("cache", Annotated[bool, _opt("--cache/--no-cache", panel=_AFTER,
        help="Reuse a verified result of the same deterministic job (noop, wasm, python).")], True),
]  # fmt: skip
_FLAG_NAMES = ("inputs", "outputs", "env", "secret_env", "cpu", "memory", "disk", "gpu", "timeout", "concurrency",
               "confidence", "min_bids", "selector", "queue_timeout", "retries")


def flag_defaults() -> dict[str, Any]:
    """The shared flags' built-in defaults by parameter name (None: the job spec's default)."""
    return {name: default for name, _, default in _SHARED}


def _configured(ctx: typer.Context | None) -> dict[str, Any]:
    """The config file's ``[run]`` defaults for the flags not given here (flag > config file > built-in)."""
    if ctx is None:
        return {}
    from cli.config import load_config
    from cli.connect import given_by

    return {name: value for name, value in load_config().run_defaults().items() if not given_by(ctx, name)}


def job_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add the shared job flags to a run command; it receives them as ``flags=`` and ``opts=``.

    A flag not given takes the config file's ``[run]`` default, if any (``cli.config``); the
    command takes the typer context as ``ctx``.
    """
    own = [p for name, p in inspect.signature(func, eval_str=True).parameters.items() if name not in ("flags", "opts")]
    shared = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a) for n, a, d in _SHARED]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name, _, _ in _SHARED}
        values.update(_configured(kwargs.get("ctx")))
        for repeatable in ("inputs", "outputs", "env", "secret_env"):
            values[repeatable] = values[repeatable] or []
        sweep = SweepFlags(
            params=values["params"] or [],
            file=None if values["sweep_file"] is None else Path(values["sweep_file"]),
            shard_inputs=values["shard_inputs"],
            shard_path=values["shard_path"],
            success=values["success"],
            success_output=values["success_output"],
            max_failures=values["max_failures"],
        )
        flags = JobFlags(**{k: values[k] for k in _FLAG_NAMES}, sweep=sweep)
        return func(*args, flags=flags, opts=_run_options(values), **kwargs)

    params = own + shared
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper


def _run_options(values: dict[str, Any]) -> RunOptions:
    return RunOptions(
        wait=values["wait"],
        wait_timeout=values["wait_timeout"],
        id_only=values["id_only"],
        json=values["json_"],
        idempotency_key=values["idempotency_key"],
        cache=values["cache"],
    )


_AFTER_NAMES = ("wait", "wait_timeout", "id_only", "json_", "idempotency_key", "cache")


def run_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Add only the after-submitting flags (``--wait``, ``--json``, …), as ``opts=``: for a command
    whose spec comes whole from elsewhere (``shoal job run FILE``)."""
    own = [p for name, p in inspect.signature(func, eval_str=True).parameters.items() if name != "opts"]
    after = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
             for n, a, d in _SHARED if n in _AFTER_NAMES]

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {name: kwargs.pop(name) for name in _AFTER_NAMES}
        return func(*args, opts=_run_options(values), **kwargs)

    params = own + after
    wrapper.__signature__ = inspect.Signature(params)  # type: ignore[attr-defined]
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    return wrapper

"""Job flags from the command line → a validated ``jobs.JobSpec``.

Every problem is reported at once, one line each, naming both the spec field and the flag
that sets it, so a user fixes all of them in one go.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cli.errors import EXIT_USAGE, CLIError

if TYPE_CHECKING:  # imported when used: pydantic and the job model are slow to import
    from pydantic import ValidationError

    from jobs import JobSpec

# Spec field (dotted) → the flag that sets it, for error messages.
_FLAGS = {
    "resources.cpu": "--cpu",
    "resources.memory": "--memory",
    "resources.disk": "--disk",
    "timeout": "--timeout",
    "deal": "--confidence/--concurrency",  # its one model-level check compares the two
    "deal.concurrency": "--concurrency",
    "deal.confidence": "--confidence",
    "deal.min_bids": "--min-bids",
    "env": "--env",
    "inputs": "--input",
    "outputs": "--output",
}


@dataclass(frozen=True)
class JobFlags:
    """The spec-shaping flags shared by every run command, as typed on the command line."""

    inputs: list[str] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=list)
    cpu: str | None = None
    memory: str | None = None
    disk: str | None = None
    timeout: float | None = None
    concurrency: int | None = None
    confidence: int | None = None
    min_bids: int | None = None


def split_input(value: str) -> tuple[str, str]:
    """``SRC:PATH`` → (SRC, PATH), splitting at the last ':' that starts an absolute path.

    ``https://x/y:/data`` → (``https://x/y``, ``/data``). A ``://`` is a URL scheme, never the split.
    """
    i = len(value)
    while (i := value.rfind(":", 0, i)) > 0:
        rest = value[i + 1 :]
        if rest.startswith("/") and not rest.startswith("//"):
            return value[:i], rest
    raise CLIError(
        f"--input {value!r}: expected SRC:PATH, e.g. ipfs://CID:/inputs or https://host/file:/data/file",
        code=EXIT_USAGE,
    )


def split_output(value: str) -> tuple[str, str]:
    """``NAME:PATH`` → (NAME, PATH)."""
    name, sep, path = value.partition(":")
    if not sep or not name or not path:
        raise CLIError(f"--output {value!r}: expected NAME:PATH, e.g. results:/outputs", code=EXIT_USAGE)
    return name, path


def split_env(value: str) -> tuple[str, str]:
    """``KEY=VALUE``; a bare ``KEY`` takes its value from this shell's environment (like docker)."""
    key, sep, val = value.partition("=")
    if sep:
        return key, val
    if key in os.environ:
        return key, os.environ[key]
    raise CLIError(f"--env {value!r}: expected KEY=VALUE ({key} is not set here either)", code=EXIT_USAGE)


def build_spec(engine: dict[str, Any], flags: JobFlags) -> JobSpec:
    """Validate the whole spec; raise CLIError (exit 2) listing every problem."""
    from pydantic import ValidationError

    from jobs import JobSpec

    data: dict[str, Any] = {"engine": engine}
    if flags.inputs:
        data["inputs"] = [dict(zip(("source", "path"), split_input(v), strict=True)) for v in flags.inputs]
    if flags.outputs:
        data["outputs"] = [dict(zip(("name", "path"), split_output(v), strict=True)) for v in flags.outputs]
    if flags.env:
        data["env"] = dict(split_env(v) for v in flags.env)
    resources = {k: v for k, v in (("cpu", flags.cpu), ("memory", flags.memory), ("disk", flags.disk)) if v}
    if resources:
        data["resources"] = resources
    deal = {
        k: v
        for k, v in (
            ("concurrency", flags.concurrency),
            ("confidence", flags.confidence),
            ("min_bids", flags.min_bids),
        )
        if v is not None
    }
    if deal:
        data["deal"] = deal
    if flags.timeout is not None:
        data["timeout"] = flags.timeout
    try:
        return JobSpec.model_validate(data)
    except ValidationError as exc:
        raise CLIError(*validation_lines(exc), code=EXIT_USAGE) from None


def validation_lines(exc: ValidationError) -> list[str]:
    """One ``field (--flag): message`` line per problem pydantic found."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        if loc[:1] == ["engine"] and len(loc) > 1:
            loc.pop(1)  # the union's tag: engine.docker.image → engine.image
        dotted = ".".join(loc) or "spec"
        flag = _FLAGS.get(dotted) or _FLAGS.get(loc[0] if loc else "")
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        lines.append(f"{dotted} ({flag}): {message}" if flag else f"{dotted}: {message}")
    return lines

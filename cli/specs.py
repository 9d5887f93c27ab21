"""Job flags from the command line → a validated ``jobs.JobSpec`` (and, with any sweep flag, a
``jobs.sweep.SweepSpec`` around it).

Every problem is reported at once, one line each, naming both the spec field and the flag
that sets it, so a user fixes all of them in one go.
"""

from __future__ import annotations

import json
import os
import re
from typing import TYPE_CHECKING, Any

from cli.errors import EXIT_USAGE, CLIError
from cli.options import JobFlags, SweepFlags

if TYPE_CHECKING:  # imported when used: pydantic and the job model are slow to import
    from pathlib import Path

    from pydantic import ValidationError

    from jobs import JobSpec
    from jobs.sweep import SweepSpec

# Spec field (dotted) → the flag that sets it, for error messages.
_FLAGS = {
    "resources.cpu": "--cpu",
    "resources.memory": "--memory",
    "resources.disk": "--disk",
    "resources.gpu": "--gpu",
    "timeout": "--timeout",
    "deal": "--confidence/--concurrency",  # its one model-level check compares the two
    "deal.concurrency": "--concurrency",
    "deal.confidence": "--confidence",
    "deal.min_bids": "--min-bids",
    "env": "--env",
    "secret_env": "--secret-env",
    "inputs": "--input",
    "outputs": "--output",
    "selector": "--selector",
    "deadlines.bid": "--queue-timeout",
    "retries": "--retries",
}


def parse_size(value: str | None, flag: str) -> int | None:
    """A size option such as ``--max-bytes 10GiB`` in bytes (None: not given)."""
    from jobs.spec import parse_bytes

    try:
        return None if value is None else parse_bytes(value)
    except ValueError as e:
        raise CLIError(f"{flag}: {e}", code=EXIT_USAGE) from None


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


def split_env(value: str, flag: str = "--env") -> tuple[str, str]:
    """``KEY=VALUE``; a bare ``KEY`` takes its value from this shell's environment (like docker).

    The error quotes only a bare KEY, never a value (``--secret-env`` uses it too)."""
    key, sep, val = value.partition("=")
    if sep:
        return key, val
    if key in os.environ:
        return key, os.environ[key]
    raise CLIError(f"{flag} {key!r}: expected KEY=VALUE ({key} is not set here either)", code=EXIT_USAGE)


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
    if flags.secret_env:
        data["secret_env"] = dict(split_env(v, "--secret-env") for v in flags.secret_env)
    resources = {k: v for k, v in (("cpu", flags.cpu), ("memory", flags.memory), ("disk", flags.disk),
                                   ("gpu", flags.gpu)) if v}
    if resources:
        data["resources"] = resources
    deal = {
        k: v
        for k, v in (
            ("concurrency", flags.concurrency),
            ("confidence", None if flags.sweep else flags.confidence),  # a sweep's is its own: build_sweep
            ("min_bids", flags.min_bids),
        )
        if v is not None
    }
    if deal:
        data["deal"] = deal
    if flags.timeout is not None:
        data["timeout"] = flags.timeout
    if flags.selector:
        data["selector"] = flags.selector
    if flags.retries is not None:
        data["retries"] = flags.retries
    if flags.queue_timeout is not None:
        if flags.sweep:
            raise CLIError("--queue-timeout: a sweep's indexes wait for nodes until they run or the sweep is "
                           "cancelled; the flag is for a single job", code=EXIT_USAGE)
        data["deadlines"] = {"bid": flags.queue_timeout}
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


# -- sweeps -------------------------------------------------------------------------------------

# What a --sweep file may hold: the sweep spec's fields except the job, which the command builds.
SWEEP_FILE_KEYS = ("grid", "zip", "items", "shard_inputs", "shard_path", "success", "success_output",
                   "confidence", "max_failures")
# Sweep spec field → the flag(s) that set it, for error messages.
_SWEEP_FLAGS = {
    "grid": "--param/--sweep",
    "zip": "--sweep",
    "items": "--sweep",
    "shard_inputs": "--shard-inputs",
    "shard_path": "--shard-path",
    "success": "--success",
    "success_output": "--success-output",
    "confidence": "--confidence",
    "max_failures": "--max-failures",
}
# The sweep spec's own checks come as one message of "; "-separated problems; each is told
# apart by how it starts, and named by the flag that fixes it.
_SWEEP_PROBLEMS = (
    ("invalid parameter names", "--param/--sweep"),
    ("SHOAL_", "--param/--sweep"),
    ("a parameter is given twice", "--param/--sweep"),
    ("zip:", "--sweep"),
    ("items:", "--sweep"),
    ("secret_env", "--secret-env"),
    ("a sweep runs each index once", "--concurrency/--min-bids"),
    ("shard_inputs:", "--shard-inputs/--shard-path"),
    ("shard_path:", "--shard-path"),
    ("success_output", "--success-output"),
    ("a sweep needs parameters", "--param/--sweep/--shard-inputs"),
)


def split_param(value: str) -> tuple[str, list[str]]:
    """``KEY=V1,V2,...`` → (KEY, [V1, V2, ...]): one axis of the grid. A value ``A..B`` or ``A..B..STEP`` of
    numbers stands for the numbers from A to B, both included, as the shell's ``{0..999}`` does."""
    key, sep, values = value.partition("=")
    if not sep or not key.strip():
        raise CLIError(f"--param {value!r}: expected KEY=V1,V2,… or KEY=FIRST..LAST, e.g. --param lr=0.1,0.01",
                       code=EXIT_USAGE)
    if not values:
        raise CLIError(f"--param {value!r}: give at least one value after '=', e.g. {key}=1,2,3", code=EXIT_USAGE)
    axis: list[str] = []
    for item in values.split(","):
        axis += number_range(key, item.strip())  # "S0=90, 100" means 100, not " 100"
    return key, axis


_NUMBER = r"-?(?:\d+(?:\.\d*)?|\.\d+)"
_RANGE = re.compile(rf"({_NUMBER})\.\.({_NUMBER})(?:\.\.({_NUMBER}))?")


def number_range(key: str, item: str) -> list[str]:
    """``0..4`` → 0 1 2 3 4; ``1..0..0.25`` → 1 0.75 0.5 0.25 0 (decimal steps, so no 0.30000000000000004);
    any other value is itself."""
    from decimal import Decimal

    from jobs.sweep import MAX_INDEXES

    match = _RANGE.fullmatch(item)
    if match is None:
        ends = item.split("..")
        if len(ends) > 1 and (_is_number(ends[0]) or _is_number(ends[-1])):  # "0..", "1e3..1e6": a range gone wrong
            raise CLIError(f"--param {key}={item}: a range is FIRST..LAST or FIRST..LAST..STEP, in plain numbers "
                           "(e.g. 0..99 or 0.1..0.5..0.1)", code=EXIT_USAGE)
        return [item]
    first, last = Decimal(match[1]), Decimal(match[2])
    step = abs(Decimal(match[3] or 1))
    if step == 0:
        raise CLIError(f"--param {key}={item}: the step must not be 0", code=EXIT_USAGE)
    count = int(abs(last - first) // step) + 1
    if count > MAX_INDEXES:
        raise CLIError(f"--param {key}={item}: {count:,} values; a sweep has at most {MAX_INDEXES:,} indexes",
                       code=EXIT_USAGE)
    step = step if last >= first else -step
    return [format((first + i * step).normalize(), "f") for i in range(count)]


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def load_sweep_file(path: Path) -> dict[str, Any]:
    """A ``--sweep`` file (YAML or JSON: JSON is YAML too) → the sweep spec's fields, values as text."""
    try:
        text = path.read_text()
    except OSError as e:
        raise CLIError(f"--sweep {path}: cannot read it ({e.strerror or e})", code=EXIT_USAGE) from None
    data = _parse_yaml_or_json(text, path)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise CLIError(f"--sweep {path}: expected a mapping with keys {', '.join(SWEEP_FILE_KEYS)}", code=EXIT_USAGE)
    problems = []
    unknown = [str(k) for k in data if k not in SWEEP_FILE_KEYS]
    if unknown:
        hint = " (the job comes from the command line)" if "job" in unknown else ""
        problems.append(f"unknown key(s) {', '.join(unknown)}{hint}; expected {', '.join(SWEEP_FILE_KEYS)}")
    from jobs.sweep import as_text

    out: dict[str, Any] = {k: v for k, v in data.items() if k in SWEEP_FILE_KEYS}
    for axis in ("grid", "zip"):
        if axis not in out:
            continue
        if not isinstance(out[axis], dict):
            problems.append(f"{axis}: expected a mapping of KEY: [values]")
            continue
        for key, values in out[axis].items():
            if not isinstance(values, list) or not all(_is_scalar(v) for v in values):
                problems.append(f"{axis}.{key}: expected a list of values, e.g. [1, 2, 3]")
            else:
                out[axis][key] = [as_text(v) for v in values]
        out[axis] = {str(k): v for k, v in out[axis].items()}
    if "items" in out:
        items = out["items"]
        if not isinstance(items, list) or not all(
            isinstance(item, dict) and all(_is_scalar(v) for v in item.values()) for item in items
        ):
            problems.append("items: expected a list of mappings of KEY: value, e.g. [{x: 1, y: a}, {x: 2, y: b}]")
        else:
            out["items"] = [{str(k): as_text(v) for k, v in item.items()} for item in items]
    if problems:
        raise CLIError(*(f"--sweep {path}: {p}" for p in problems), code=EXIT_USAGE)
    return out


def _parse_yaml_or_json(text: str, path: Path) -> Any:
    try:
        import yaml
    except ImportError:  # PyYAML is optional: JSON files still work without it
        import json

        try:
            return json.loads(text) if text.strip() else None
        except ValueError as e:
            raise CLIError(f"--sweep {path}: not valid JSON ({e}); for YAML files install PyYAML",
                           code=EXIT_USAGE) from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise CLIError(f"--sweep {path}: not valid YAML or JSON{at}: {problem}", code=EXIT_USAGE) from None


def _is_scalar(value: object) -> bool:
    return isinstance(value, str | int | float | bool)


def build_sweep(job: JobSpec, flags: SweepFlags, confidence: int | None = None) -> SweepSpec | None:
    """The sweep the flags describe around ``job``; None without sweep flags (a single job).
    ``confidence`` (``--confidence``) verifies each index.

    Flags add to (``--param``) or override (the rest) what the ``--sweep`` file says.
    """
    if not flags:
        return None
    from pydantic import ValidationError

    from jobs.spec import MAX_SPEC_BYTES
    from jobs.sweep import SweepSpec
    from jobs.views import SweepSubmitRequest

    data: dict[str, Any] = load_sweep_file(flags.file) if flags.file is not None else {}
    grid: dict[str, list[str]] = dict(data.get("grid", {}))
    seen: set[str] = set()
    for value in flags.params:
        key, values = split_param(value)
        if key in seen:
            raise CLIError(f"--param {key} is given twice: give all its values at once ({key}=V1,V2,…)",
                           code=EXIT_USAGE)
        if key in grid:
            raise CLIError(f"--param {key}: {key} is in the --sweep file's grid already", code=EXIT_USAGE)
        seen.add(key)
        grid[key] = values
    if grid:
        data["grid"] = grid
    if both := sorted(set(grid) & set(job.env)):  # the parameter would win, and -e be silently lost
        raise CLIError(f"--param {both[0]}: {both[0]} is set with -e too; a parameter gives each index its value",
                       code=EXIT_USAGE)
    for name in ("shard_inputs", "shard_path", "success", "success_output", "max_failures"):
        value = getattr(flags, name)
        if value is not None:
            data[name] = value
    if confidence is not None:
        data["confidence"] = confidence
    try:
        sweep = SweepSpec.model_validate({**data, "job": job})
    except ValidationError as exc:
        raise CLIError(*sweep_validation_lines(exc), code=EXIT_USAGE) from None
    size = len(SweepSubmitRequest.model_construct(spec=sweep).model_dump_json().encode())  # the request body's bytes
    if size > MAX_SPEC_BYTES:  # refused by the node otherwise, less clearly
        raise CLIError(_too_large(size, flags.params, grid), code=EXIT_USAGE)
    return sweep


def _too_large(size: int, params: list[str], grid: dict[str, list[str]]) -> str:
    """Why a sweep's spec of ``size`` bytes cannot be sent, naming the --param that makes it so if one does."""
    from jobs.spec import MAX_SPEC_BYTES

    over = f"about {size / (1 << 20):.1f} MiB of spec, over the {MAX_SPEC_BYTES >> 20} MiB limit"
    biggest = max(params, key=lambda value: len(grid[value.partition("=")[0]]), default="")
    key = biggest.partition("=")[0]
    if not key or len(json.dumps(grid[key])) < size // 2:
        return f"the sweep takes {over}: give fewer or shorter values (long ones in a file the job reads)"
    count = len(grid[key])
    return (f"--param {biggest} expands to {count:,} values ({over}): split it into two --param grids, e.g. "
            f"--param {key}_hi=0..{-(-count // 1000) - 1} --param {key}_lo=0..999 with {key} = {key}_hi * 1000 + "
            f"{key}_lo computed in the job")


def sweep_validation_lines(exc: ValidationError) -> list[str]:
    """One ``field (--flag): message`` line per problem, like ``validation_lines`` for the job."""
    lines = []
    for err in exc.errors():
        loc = [str(p) for p in err["loc"]]
        message = err["msg"].removeprefix("Value error, ")
        if loc[:1] == ["job"]:  # the job was validated on its own already; here only for completeness
            lines.append(".".join(loc[1:] or ["job"]) + f": {message}")
            continue
        if not loc:  # the spec's own checks: "problem; problem; ..."
            for problem in message.split("; "):
                flag = next((f for start, f in _SWEEP_PROBLEMS if problem.startswith(start)), None)
                if flag is None and "indexes: a sweep has at most" in problem:
                    flag = "--param/--sweep"
                lines.append(f"sweep ({flag}): {problem}" if flag else f"sweep: {problem}")
            continue
        if err["type"] == "extra_forbidden":
            message = "unknown field"
        flag = _SWEEP_FLAGS.get(loc[0])
        dotted = ".".join(loc)
        lines.append(f"{dotted} ({flag}): {message}" if flag else f"{dotted}: {message}")
    return lines

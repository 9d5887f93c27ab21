"""Job files: a job or a sweep kept in YAML or JSON, in the API's own schema.

A file holds one of:

- a job spec (``jobs.JobSpec``: ``engine:``, ``resources:``, …), which submits one job;
- a sweep spec (``jobs.sweep.SweepSpec``: ``job:`` plus ``grid:``/``zip:``/``items:``/
  ``shard_inputs:``), which submits a sweep;
- a description as ``shoal describe ID --output yaml|json`` prints it: its ``spec`` is taken as
  recorded (no templating) and the rest (state, executions) is ignored, so a job or a sweep
  can be run again from what the node says about it.

Reading a file is a pipeline of pure functions, each tested on its own:
``parse`` (text → data, and the line of each value) → ``spec_part`` (a description's spec) →
``substitute`` (``${VAR}``) → ``override`` (``--set a.b=v``) → ``as_texts`` (YAML's ``3`` where
the model wants the string ``"3"``) → ``validate``. Every problem is a ``CLIError`` (exit 2)
naming the field and, where known, the line.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cli.errors import EXIT_USAGE, CLIError

if TYPE_CHECKING:
    from pydantic import ValidationError

    from jobs import JobSpec
    from jobs.sweep import SweepSpec

MAX_FILE_BYTES = 1024 * 1024  # a job file is a page of text; the node caps what it accepts anyway
MAX_VALUES = 200_000  # values one file may expand to: YAML aliases can make a small file a huge tree
MAX_DEPTH = 32  # a job file is a few levels deep; an alias inside its own anchor (a: &a [*a]) is infinitely deep

FieldPath = tuple[str | int, ...]  # where a value sits: ("resources", "cpu"), ("inputs", 0)
SWEEP_KEYS = ("job", "grid", "zip", "items", "shard_inputs", "shard_path", "success", "success_output")
_VARIABLE = re.compile(r"\$(?:\$|\{([^}]*)\})")  # $$ or ${NAME}
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class Parsed:
    """A file's data, and the line (1-based) where each value starts, by its path."""

    data: Any
    lines: dict[FieldPath, int] = field(default_factory=dict)

    def line(self, path: FieldPath) -> int | None:
        """The line of ``path``, or of its nearest ancestor that has one."""
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


def parse(text: str, source: str) -> Parsed:
    """YAML or JSON text (JSON is YAML) → its data and lines; a syntax error names the line."""
    import yaml

    if len(text.encode(errors="replace")) > MAX_FILE_BYTES:
        raise CLIError(f"{source}: larger than {MAX_FILE_BYTES // 1024} KiB; a job file is a page of text",
                       code=EXIT_USAGE)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else loader.construct_document(node)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise CLIError(f"{source}{at}: not valid YAML or JSON: {problem}", code=EXIT_USAGE) from None
    except RecursionError:  # PyYAML composes nested nodes recursively
        raise _too_deep(source) from None
    finally:
        loader.dispose()
    lines: dict[FieldPath, int] = {}
    if node is not None:
        _record_lines(node, (), lines, source)
    return Parsed(data, lines)


def _record_lines(node: Any, path: FieldPath, lines: dict[FieldPath, int], source: str) -> None:
    """Walks the tree as aliases expand it, so it also refuses a file too deep or too big once expanded,
    before anything else walks its data."""
    import yaml

    stack = [(node, path)]
    while stack:
        node, path = stack.pop()
        if len(path) > MAX_DEPTH:
            raise _too_deep(source)
        if len(lines) > MAX_VALUES:
            raise CLIError(f"{source}: more than {MAX_VALUES} values (YAML aliases?)", code=EXIT_USAGE)
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if isinstance(key, yaml.ScalarNode):
                    lines[(*path, key.value)] = key.start_mark.line + 1
                    stack.append((value, (*path, key.value)))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[(*path, i)] = item.start_mark.line + 1
                stack.append((item, (*path, i)))


def _too_deep(source: str) -> CLIError:
    return CLIError(f"{source}: nested more than {MAX_DEPTH} levels deep (or a YAML alias inside its own anchor)",
                    code=EXIT_USAGE)


def spec_part(data: Any, source: str) -> tuple[dict[str, Any], FieldPath, bool]:
    """The spec in a file: (its data, where it sits in the file, whether it is a description's).

    A description's spec is ``job.spec`` (a job) or ``sweep.spec`` (a sweep); a sweep spec's
    ``job`` is a job spec, which has no ``spec`` key, so the three shapes cannot be confused.
    """
    if not isinstance(data, dict):
        raise CLIError(f"{source}: expected a mapping: a job spec (engine: …), a sweep spec (job: …, grid: …) "
                       "or what 'shoal describe ID --output yaml' prints", code=EXIT_USAGE)
    for kind in ("job", "sweep"):
        record = data.get(kind)
        if isinstance(record, dict) and "spec" in record:
            if not isinstance(record["spec"], dict):
                raise CLIError(f"{source}: {kind}.spec: expected a mapping", code=EXIT_USAGE)
            return record["spec"], (kind, "spec"), True
    return data, (), False


def substitute(data: Any, variables: Mapping[str, str], source: str = "", parsed: Parsed | None = None) -> Any:
    """``${NAME}`` in every string value → ``variables[NAME]``; ``$$`` → ``$``; keys stay as they are.

    A lone ``$NAME`` is left alone: it is how a command reads its environment (and a sweep's
    parameters) when it runs. An undefined variable is an error naming it, its field and (given
    ``parsed``) its line, once per field.
    """
    count = 0
    problems: list[str] = []

    def text(value: str, path: FieldPath) -> str:
        def one(match: re.Match[str]) -> str:
            name = match.group(1)
            if name is None:
                return "$"
            line = parsed.line(path) if parsed is not None else None
            where = f"{source}:{line}" if line else source
            field = ".".join(str(p) for p in path) or "the file"
            if not _NAME.match(name):
                problems.append(f"{where}: {field}: ${{{name}}} is not a variable name (write $$ for a literal $)")
            elif name not in variables:
                problems.append(f"{where}: {field}: undefined variable {name}: give --var {name}=VALUE or set it "
                                "in the environment (write $$ for a literal $)")
            else:
                return variables[name]
            return ""

        return _VARIABLE.sub(one, value)

    def walk(value: Any, path: FieldPath) -> Any:
        nonlocal count
        count += 1
        if count > MAX_VALUES:
            raise CLIError(f"{source}: more than {MAX_VALUES} values (YAML aliases?)", code=EXIT_USAGE)
        if isinstance(value, str):
            return text(value, path)
        if isinstance(value, dict):
            return {k: walk(v, (*path, k)) for k, v in value.items()}
        if isinstance(value, list):
            return [walk(v, (*path, i)) for i, v in enumerate(value)]
        return value

    out = walk(data, ())
    if problems:
        raise CLIError(*dict.fromkeys(problems), code=EXIT_USAGE)
    return out


def parse_variables(pairs: list[str]) -> dict[str, str]:
    """``--var NAME=VALUE`` flags → a mapping."""
    out: dict[str, str] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not _NAME.match(name):
            raise CLIError(f"--var {name!r}: expected NAME=VALUE, e.g. --var SEED=42", code=EXIT_USAGE)
        out[name] = value
    return out


def override(data: dict[str, Any], assignments: list[str], sweep: bool) -> dict[str, Any]:
    """``--set a.b.c=VALUE`` flags applied to a copy of ``data``; VALUE is read as a YAML scalar or
    list (``2``, ``true``, ``null``, ``[a, b]``), else as text, so ``--set resources.cpu=2`` sets a
    number. A list item is named by its index (``inputs.0.path``). In a sweep, a path outside the
    sweep's own keys is the job's: ``--set resources.cpu=2`` means ``job.resources.cpu``.
    """
    import copy

    import yaml

    out = copy.deepcopy(data)
    for assignment in assignments:
        dotted, _, raw = assignment.partition("=")
        keys = set_path(assignment, sweep)
        try:
            value = yaml.safe_load(raw) if raw.strip() else raw
        except yaml.YAMLError:
            value = raw
        if isinstance(value, dict):  # "a: b" is meant as text; a mapping is set key by key
            value = raw
        target: Any = out
        for depth, key in enumerate(keys):
            last = depth == len(keys) - 1
            where = ".".join(keys[:depth]) or "the file"
            if isinstance(target, list):
                if not key.isdigit() or int(key) >= len(target):
                    raise CLIError(f"--set {dotted}: {where} is a list of {len(target)}: give an index below that",
                                   code=EXIT_USAGE)
                if last:
                    target[int(key)] = value
                else:
                    target = target[int(key)]
            elif isinstance(target, dict):
                if last:
                    target[key] = value
                else:
                    target = target.setdefault(key, {})
            else:
                raise CLIError(f"--set {dotted}: {where} is a value, not a mapping", code=EXIT_USAGE)
    return out


def set_path(assignment: str, sweep: bool) -> list[str]:
    """The keys a ``--set KEY.PATH=VALUE`` sets, from the file's top (a sweep's job: under ``job``)."""
    dotted, sep, _ = assignment.partition("=")
    keys = dotted.split(".")
    if not sep or not all(keys):
        raise CLIError(f"--set {dotted!r}: expected KEY.PATH=VALUE, e.g. --set resources.cpu=2", code=EXIT_USAGE)
    return ["job", *keys] if sweep and keys[0] not in SWEEP_KEYS else keys


# Where a model wants text, YAML's 3, 0.5 and true are meant as "3", "0.5" and "true".
_JOB_TEXTS = (("env", "*"), ("secret_env", "*"), ("engine", "args", "*"), ("engine", "entrypoint", "*"))
_SWEEP_TEXTS = (("grid", "*", "*"), ("zip", "*", "*"), ("items", "*", "*"))


def as_texts(data: dict[str, Any], sweep: bool) -> dict[str, Any]:
    """Numbers and booleans where the spec wants strings (env values, args, sweep values) as text."""
    from jobs.sweep import as_text

    patterns = ([("job", *p) for p in _JOB_TEXTS] + list(_SWEEP_TEXTS)) if sweep else list(_JOB_TEXTS)

    def convert(value: Any, pattern: tuple[str, ...]) -> Any:
        if not pattern:
            return as_text(value) if isinstance(value, int | float | bool) else value
        head, rest = pattern[0], pattern[1:]
        if isinstance(value, dict):
            return {k: convert(v, rest) if head in ("*", k) else v for k, v in value.items()}
        if isinstance(value, list) and head == "*":
            return [convert(v, rest) for v in value]
        return value

    for pattern in patterns:
        data = convert(data, pattern)
    return data


def validate(data: dict[str, Any], sweep: bool, parsed: Parsed, prefix: FieldPath, source: str,
             overridden: frozenset[FieldPath] = frozenset()) -> JobSpec | SweepSpec:  # fmt: skip
    """The data as a ``JobSpec`` or a ``SweepSpec``; every problem on its own line."""
    from pydantic import ValidationError

    from jobs import JobSpec
    from jobs.sweep import SweepSpec

    try:
        return SweepSpec.model_validate(data) if sweep else JobSpec.model_validate(data)
    except ValidationError as exc:
        raise CLIError(*problem_lines(exc, parsed, prefix, source, overridden), code=EXIT_USAGE) from None


def problem_lines(exc: ValidationError, parsed: Parsed, prefix: FieldPath, source: str,
                  overridden: frozenset[FieldPath] = frozenset()) -> list[str]:  # fmt: skip
    """``FILE:LINE: field: message`` for each problem pydantic found: the line where known, or
    ``(--set)`` for a value ``overridden`` by a ``--set`` flag."""
    lines = []
    for err in exc.errors():
        loc: list[str | int] = list(err["loc"])
        for at in (0, 1):  # the union's tag: engine.docker.image (or job.engine.…) → engine.image
            if len(loc) > at + 1 and loc[at] == "engine":
                loc.pop(at + 1)
        message = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            message = "unknown field"
            if loc and loc[-1] in SWEEP_KEYS[1:] and len(loc) == 1:
                message += " (a sweep spec puts the job under job: and its axes beside it)"
        line = parsed.line((*prefix, *loc))
        where = f"{source}:{line}" if line else source
        if any(tuple(loc[: len(path)]) == path for path in overridden):
            where = f"{source} (--set)"
        dotted = ".".join(str(p) for p in loc)
        for part in message.split("; ") if not loc else [message]:  # a model's own checks: "a; b; c"
            lines.append(f"{where}: {dotted}: {part}" if dotted else f"{where}: {part}")
    return lines


@dataclass(frozen=True)
class JobFile:
    """What a job file asks for: a job or a sweep, and whether it was read from a description."""

    spec: JobSpec | SweepSpec
    from_description: bool

    @property
    def is_sweep(self) -> bool:
        from jobs.sweep import SweepSpec

        return isinstance(self.spec, SweepSpec)


def load(text: str, source: str, variables: Mapping[str, str], assignments: list[str]) -> JobFile:
    """A job file's text → its validated spec, with ``${VAR}`` from ``variables`` and ``--set`` applied."""
    parsed = parse(text, source)
    data, prefix, described = spec_part(parsed.data, source)
    if not described:
        data = substitute(data, variables, source, parsed)
    sweep = "job" in data
    data = as_texts(override(data, assignments, sweep), sweep)
    overridden = frozenset(tuple(set_path(a, sweep)) for a in assignments)
    return JobFile(validate(data, sweep, parsed, prefix, source, overridden), described)


def schema() -> dict[str, Any]:
    """The JSON Schema of a job file, from the models: a job spec or a sweep spec."""
    from pydantic import TypeAdapter

    from jobs import JobSpec
    from jobs.sweep import SweepSpec

    out = TypeAdapter(JobSpec | SweepSpec).json_schema()
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "Shoal job file",
        "description": "A job spec (submits one job) or a sweep spec (job: plus grid/zip/items/shard_inputs; "
                       "submits a sweep), as the API takes them. ${NAME} is replaced by a variable, $$ by $.",
        **out,
    }

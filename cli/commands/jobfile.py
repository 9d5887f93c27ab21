"""``shoal job run``, ``job validate``, ``job schema``: jobs and sweeps kept in files (``cli.jobfile``)."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.options import RunOptions, run_options  # typer evaluates the commands' annotations

if TYPE_CHECKING:
    from cli.jobfile import JobFile

File = Annotated[str, typer.Argument(metavar="FILE", help="A job file (YAML or JSON), or - for stdin.")]
Sets = Annotated[list[str] | None, typer.Option("--set", metavar="KEY.PATH=VALUE",
    help="Set a field, e.g. --set resources.cpu=2 (VALUE is read as YAML); after templating. Repeatable.")]
Vars = Annotated[list[str] | None, typer.Option("--var", metavar="NAME=VALUE",
    help="A value for ${NAME} in the file (else the environment's); repeatable.")]


@run_options
def job_run(
    ctx: typer.Context,
    file: File,
    sets: Sets = None,
    variables: Vars = None,
    context: Annotated[Path | None, typer.Option("--context", metavar="DIR", file_okay=False, exists=True,
        help="Pack DIR and mount it at /context (where a python main or a local wasm module is).")] = None,
    *,
    opts: RunOptions,
) -> int:  # fmt: skip
    """Run the job (or sweep) a file describes: shoal job run job.yaml --set resources.cpu=2"""
    from cli.commands.run import refuse_conflicts, submit

    refuse_conflicts(opts)
    job_file = _load(file, sets, variables)  # before any connection: a bad file fails without a node
    return submit(ctx, job_file.spec, opts, context)


def job_validate(file: File, sets: Sets = None, variables: Vars = None) -> None:
    """Check a job file (with its --set and --var) without submitting it; print what it would run."""
    from cli.render import engine_summary, fmt_resources, sweep_params

    job_file = _load(file, sets, variables)
    spec, source = job_file.spec, _source(file)
    if job_file.is_sweep:
        print(f"{source}: a sweep of {spec.count} indexes ({sweep_params(spec)}) of "
              f"{engine_summary(spec.job)}; {fmt_resources(spec.job.resources, job=True)} each")
    else:
        print(f"{source}: a job: {engine_summary(spec)}; {fmt_resources(spec.resources, job=True)}, "
              f"on {spec.deal.concurrency} node(s)")


def job_schema() -> None:
    """Print the JSON Schema of a job file (for editors and linters)."""
    import json

    from cli.jobfile import schema

    print(json.dumps(schema(), indent=2))


def _source(file: str) -> str:
    return "<stdin>" if file == "-" else file


def _load(file: str, sets: list[str] | None, variables: list[str] | None) -> JobFile:
    from cli.errors import EXIT_USAGE, CLIError
    from cli.jobfile import MAX_FILE_BYTES, load, parse_variables

    source = _source(file)
    try:
        if file == "-":
            text = sys.stdin.read(MAX_FILE_BYTES + 1)
        else:
            with open(file, encoding="utf-8") as f:
                text = f.read(MAX_FILE_BYTES + 1)
    except OSError as e:
        raise CLIError(f"{source}: cannot read it ({e.strerror or e})", code=EXIT_USAGE) from None
    except UnicodeDecodeError:
        raise CLIError(f"{source}: not UTF-8 text", code=EXIT_USAGE) from None
    return load(text, source, {**os.environ, **parse_variables(variables or [])}, sets or [])

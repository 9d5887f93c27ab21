"""``shoal docker run``, ``shoal wasm run``, ``shoal run python``, ``shoal run noop``: submit a job
(or, with sweep flags, a sweep) and follow it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from cli.connect import client, given_by
from cli.exits import EXIT_USAGE
from cli.options import JobFlags, RunOptions, job_options  # typer evaluates the commands' annotations

if TYPE_CHECKING:
    from jobs import JobSpec
    from jobs.sweep import SweepSpec


@job_options
def docker_run(
    ctx: typer.Context,
    image: Annotated[str, typer.Argument(metavar="IMAGE", help="Image, e.g. ubuntu:24.04")],
    command: Annotated[list[str] | None, typer.Argument(metavar="-- CMD ARGS", show_default=False,
        help="Command and its arguments; put them after -- if they start with a dash.")] = None,
    workdir: Annotated[str | None, typer.Option("--workdir", "-w", metavar="DIR",
        help="Working directory inside.")] = None,
    network: Annotated[bool, typer.Option("--network", help="Allow network access.")] = False,
    *,
    flags: JobFlags,
    opts: RunOptions,
) -> int:  # fmt: skip
    """Run a command in a Docker container: shoal docker run ubuntu -- echo hello"""
    command = command or []
    engine: dict[str, Any] = {"name": "docker", "image": image, "entrypoint": command[:1], "args": command[1:]}
    if workdir is not None:
        engine["workdir"] = workdir
    if network:
        engine["network"] = True
    return _run(ctx, engine, flags, opts)


@job_options
def wasm_run(
    ctx: typer.Context,
    module: Annotated[str, typer.Argument(metavar="MODULE", help="Module: a path inside the job's inputs, or ipfs://CID")],
    args: Annotated[list[str] | None, typer.Argument(metavar="-- ARGS", show_default=False)] = None,
    entrypoint: Annotated[str | None, typer.Option("--entrypoint", metavar="NAME",
        help="Exported function (default _start).")] = None,
    *,
    flags: JobFlags,
    opts: RunOptions,
) -> int:  # fmt: skip
    """Run a WebAssembly (WASI) module: shoal wasm run module.wasm -- arg1 arg2 (or ipfs://CID)"""
    engine: dict[str, Any] = {"name": "wasm", "module": module, "args": args or []}
    if entrypoint is not None:
        engine["entrypoint"] = entrypoint
    if module.startswith(("ipfs://", "/")):
        return _run(ctx, engine, flags, opts)
    # a local module travels with the job: the current directory is packed as its context
    engine["module"] = "/context/" + _local_file(module, "the module").as_posix()
    return _run(ctx, engine, flags, opts, context=Path.cwd())


@job_options
def run_python(
    ctx: typer.Context,
    argv: Annotated[list[str] | None, typer.Argument(metavar="MAIN.PY ARGS", show_default=False,
        help="Script and its arguments (with -c: only arguments); after -- if they start with a dash.")] = None,
    code: Annotated[str | None, typer.Option("--code", "-c", metavar="CODE",
        help="Inline code instead of a script.")] = None,
    requirements: Annotated[list[str] | None, typer.Option("--requirement", "-r", metavar="PKG",
        help="Package to install first; repeatable.")] = None,
    image: Annotated[str | None, typer.Option("--image", metavar="IMAGE",
        help="Run with this Docker image's python3 instead of Pyodide, e.g. shoal/python-sci (numpy, scipy, "
             "pandas).")] = None,
    *,
    flags: JobFlags,
    opts: RunOptions,
) -> int:  # fmt: skip
    """Run Python: shoal run python main.py ARGS, or shoal run python -c CODE

    By default in Pyodide (Python 3.14 in WebAssembly): the standard library and pure-Python wheels (-r),
    deterministic, cached; numpy, scipy and pandas run with --image shoal/python-sci (Python 3.11).
    """
    argv = argv or []
    engine: dict[str, Any] = {"name": "python"}
    if image is not None:
        engine["image"] = image
    if code is not None:
        engine.update(code=code, args=argv)
    elif argv:
        engine.update(main=_local_file(argv[0], "the script").as_posix(), args=argv[1:])
    else:
        from cli.errors import CLIError

        raise CLIError("give a script (shoal run python main.py) or code (shoal run python -c CODE)", code=EXIT_USAGE)
    if requirements:
        from cli.wheels import fetch_wheels

        engine["requirements"] = fetch_wheels(requirements, Path.cwd())
    # a script's directory is its context, as when running Python locally; inline code needs none
    # unless wheels travel with it
    needs_context = code is None or bool(engine.get("requirements"))
    return _run(ctx, engine, flags, opts, context=Path.cwd() if needs_context else None)


@job_options
def run_noop(ctx: typer.Context, *, flags: JobFlags, opts: RunOptions) -> int:
    """Run a job that does nothing: smoke tests and benchmarks of the network itself."""
    return _run(ctx, {"name": "noop"}, flags, opts)


def _run(ctx: typer.Context, engine: dict[str, Any], flags: JobFlags, opts: RunOptions,
         context: Path | None = None) -> int:
    """The spec the flags describe, submitted and followed (see ``submit``). With sweep flags, the
    job is the template of a sweep, which is submitted and followed instead."""
    from cli.specs import build_spec, build_sweep

    refuse_conflicts(opts)
    spec = build_spec(engine, flags)  # before any connection: a bad spec fails without a node
    sweep = build_sweep(spec, flags.sweep, flags.confidence)  # None: no sweep flags, a single job
    return submit(ctx, spec if sweep is None else sweep, opts, context)


def refuse_conflicts(opts: RunOptions) -> None:
    """Checked first by every run command, before it reads or builds anything."""
    if opts.id_only and opts.json:
        from cli.errors import CLIError

        raise CLIError("--id-only and --json cannot be used together", code=EXIT_USAGE)


def submit(ctx: typer.Context, spec: JobSpec | SweepSpec, opts: RunOptions, context: Path | None = None) -> int:
    """Submit a job or a sweep and follow it; with ``context``, that directory is packed, stored on
    the node and given to the job as its working directory (``/context``; a sweep's: in its template)."""
    from cli.errors import CLIError
    from cli.waiting import submit_and_follow, submit_and_follow_sweep
    from jobs.sweep import SweepSpec

    job = spec.job if isinstance(spec, SweepSpec) else spec
    # a sweep's indexes are never served from the cache: a --cache would go unsaid (--no-cache is what happens)
    if isinstance(spec, SweepSpec) and opts.cache and given_by(ctx, "cache") == "COMMANDLINE":
        raise CLIError("--cache does not apply to a sweep: sweep indexes are never served from the cache",
                       code=EXIT_USAGE)
    if context is not None:
        from cli.terminal import printable
        from jobs import InputSpec
        from shoal._context import ContextTooLarge, left_out_note, pack_context

        left_out: list[str] = []
        try:
            archive = pack_context(context, left_out=left_out)
        except ContextTooLarge as e:
            raise CLIError(str(e), code=EXIT_USAGE) from None
        if left_out:
            print(printable(left_out_note(left_out)), file=sys.stderr)
        cid = client(ctx).upload_context(archive)
        job = job.model_copy(update={"inputs": [*job.inputs, InputSpec(source=f"ipfs://{cid}", path="/context")]})
    if isinstance(spec, SweepSpec):
        return submit_and_follow_sweep(client(ctx), spec.model_copy(update={"job": job}), opts)
    return submit_and_follow(client(ctx), lambda: client(ctx), job, opts)


def _local_file(name: str, what: str) -> Path:
    from cli.errors import CLIError

    path = Path(name)
    if path.is_absolute() or ".." in path.parts:
        raise CLIError(f"{what} {name!r} must be a path inside the current directory (it is sent with the job)",
                       code=EXIT_USAGE)
    if not path.is_file():
        raise CLIError(f"no such file: {name} (in {Path.cwd()})", code=EXIT_USAGE)
    return path

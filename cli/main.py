"""The ``shoal`` command: parse arguments, call the SDK (or the node/devstack), render.

No business logic lives here. Commands return an exit code (or None for 0); every exception
becomes one ``Error: …`` line in ``ShoalGroup.main`` (see ``cli.errors`` for the codes).
Rich, pydantic and the SDK are imported inside commands so ``shoal --help`` starts fast.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer

from cli.errors import EXIT_USAGE, CLIError, ShoalGroup
from cli.options import job_options

# Needed at runtime, not only for type checking: typer evaluates command annotations.
from cli.specs import JobFlags
from cli.waiting import RunOptions

if TYPE_CHECKING:
    from jobs.states import JobState
    from jobs.views import JobDescription, SweepDescription
    from shoal import Client

JobStateName = Literal["pending", "running", "completed", "failed", "cancelled"]  # jobs.JobState values
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def make_client(api_url: str | None, *, timeout: float = 30.0, ca_cert: Path | None = None) -> Client:
    """Every command gets its SDK client here; tests replace this with a fake.

    With no URL the SDK finds one (``SHOAL_API`` is read by the ``--api`` option already,
    then a running devstack's state file).

    Optional imports of httpx's that a client command never uses are skipped; each is made
    to fail fast, which httpx and httpcore handle: h2 (HTTP/2, which the SDK does not speak;
    installed for hypercorn) and ``httpx._main`` (httpx's own command line: click, rich's
    syntax highlighting, pygments) are about half of ``import httpx`` (measured 120 ms → 65 ms),
    and trio, which httpcore imports whenever it is installed, with the first transport
    (~150 ms; only ``serve`` and ``devstack`` run trio, and they never get here).
    """
    for optional in ("trio", "h2", "httpx._main"):
        if optional not in sys.modules:
            sys.modules[optional] = None  # type: ignore[assignment]  # makes the import fail fast
    from shoal import Client

    return Client(api_url, timeout=timeout, ca_cert=ca_cert)


_SETTINGS = {"help_option_names": ["-h", "--help"]}
app = typer.Typer(
    cls=ShoalGroup,
    name="shoal",
    help="Shoal: run jobs on a peer-to-peer compute network.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rich's help renderer costs ~150 ms of imports
    context_settings=_SETTINGS,
)
docker_app = typer.Typer(help="Run Docker containers.", no_args_is_help=True, rich_markup_mode=None)
wasm_app = typer.Typer(help="Run WebAssembly modules.", no_args_is_help=True, rich_markup_mode=None)
run_app = typer.Typer(help="Run Python or noop jobs.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(docker_app, name="docker")
app.add_typer(wasm_app, name="wasm")
app.add_typer(run_app, name="run")
images_app = typer.Typer(help="Container images for the docker engine.", no_args_is_help=True, rich_markup_mode=None)
app.add_typer(images_app, name="images")
network_key_app = typer.Typer(help="The shared key of a private network (serve --network-key).",
                              no_args_is_help=True, rich_markup_mode=None)
app.add_typer(network_key_app, name="network-key")


@dataclass(frozen=True)
class Settings:
    api: str | None = None
    ca_cert: Path | None = None


@app.callback()
def _root(
    ctx: typer.Context,
    api: Annotated[str | None, typer.Option("--api", envvar="SHOAL_API", metavar="URL",
        help="Node API URL (default: $SHOAL_API, else the running devstack).")] = None,
    ca_cert: Annotated[Path | None, typer.Option("--ca-cert", envvar="SHOAL_CA_CERT", metavar="FILE",
        help="For an https:// API: trust only this certificate (PEM): the node's own, or its CA's.")] = None,
) -> None:  # fmt: skip
    ctx.obj = Settings(api=api, ca_cert=ca_cert)


def _client(ctx: typer.Context, timeout: float = 30.0) -> Client:
    settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings()
    return make_client(settings.api, timeout=timeout, ca_cert=settings.ca_cert)


# ---------------------------------------------------------------------------------------- run


def _run(ctx: typer.Context, engine: dict[str, Any], flags: JobFlags, opts: RunOptions,
         context: Path | None = None) -> int:
    """Submit and follow; with ``context``, that directory is packed, stored on the node and
    given to the job as its working directory (``/context``). With sweep flags, the job is the
    template of a sweep, which is submitted and followed instead."""
    from cli.specs import build_spec, build_sweep
    from cli.waiting import submit_and_follow, submit_and_follow_sweep

    if opts.id_only and opts.json:
        raise CLIError("--id-only and --json cannot be used together", code=EXIT_USAGE)
    spec = build_spec(engine, flags)  # before any connection: a bad spec fails without a node
    sweep = build_sweep(spec, flags.sweep)  # None: no sweep flags, a single job
    if context is not None:
        from jobs import InputSpec
        from shoal._context import ContextTooLarge, pack_context

        try:
            archive = pack_context(context)
        except ContextTooLarge as e:
            raise CLIError(str(e), code=EXIT_USAGE) from None
        cid = _client(ctx).upload_context(archive)
        spec = spec.model_copy(update={"inputs": [*spec.inputs, InputSpec(source=f"ipfs://{cid}", path="/context")]})
    if sweep is not None:
        return submit_and_follow_sweep(_client(ctx), sweep.model_copy(update={"job": spec}), opts)
    return submit_and_follow(_client(ctx), lambda: _client(ctx), spec, opts)


def _local_file(name: str, what: str) -> Path:
    path = Path(name)
    if path.is_absolute() or ".." in path.parts:
        raise CLIError(f"{what} {name!r} must be a path inside the current directory (it is sent with the job)",
                       code=EXIT_USAGE)
    if not path.is_file():
        raise CLIError(f"no such file: {name} (in {Path.cwd()})", code=EXIT_USAGE)
    return path


@docker_app.command("run", context_settings=_SETTINGS)
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


@wasm_app.command("run", context_settings=_SETTINGS)
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


@run_app.command("python", context_settings=_SETTINGS)
@job_options
def run_python(
    ctx: typer.Context,
    argv: Annotated[list[str] | None, typer.Argument(metavar="MAIN.PY ARGS", show_default=False,
        help="Script and its arguments (with -c: only arguments); after -- if they start with a dash.")] = None,
    code: Annotated[str | None, typer.Option("--code", "-c", metavar="CODE",
        help="Inline code instead of a script.")] = None,
    requirements: Annotated[list[str] | None, typer.Option("--requirement", "-r", metavar="PKG",
        help="Package to install first; repeatable.")] = None,
    *,
    flags: JobFlags,
    opts: RunOptions,
) -> int:  # fmt: skip
    """Run Python: shoal run python main.py ARGS, or shoal run python -c CODE"""
    argv = argv or []
    engine: dict[str, Any] = {"name": "python"}
    if code is not None:
        engine.update(code=code, args=argv)
    elif argv:
        engine.update(main=_local_file(argv[0], "the script").as_posix(), args=argv[1:])
    else:
        raise CLIError("give a script (shoal run python main.py) or code (shoal run python -c CODE)", code=EXIT_USAGE)
    if requirements:
        from cli.wheels import fetch_wheels

        engine["requirements"] = fetch_wheels(requirements, Path.cwd())
    # a script's directory is its context, as when running Python locally; inline code needs none
    # unless wheels travel with it
    needs_context = code is None or bool(engine.get("requirements"))
    return _run(ctx, engine, flags, opts, context=Path.cwd() if needs_context else None)


@run_app.command("noop", context_settings=_SETTINGS)
@job_options
def run_noop(ctx: typer.Context, *, flags: JobFlags, opts: RunOptions) -> int:
    """Run a job that does nothing: smoke tests and benchmarks of the network itself."""
    return _run(ctx, {"name": "noop"}, flags, opts)


# ----------------------------------------------------------------------------------- jobs

_Json = Annotated[bool, typer.Option("--json", help="Print JSON only.")]
_JobId = Annotated[str, typer.Argument(metavar="ID", help="Job id (or a unique prefix of it).")]
_AnyId = Annotated[str, typer.Argument(metavar="ID", help="Job id, or sweep id (s-…), or a unique prefix of one.")]
_SweepId = Annotated[str, typer.Argument(metavar="ID", help="Sweep id (or a unique prefix of it).")]


def _resolve(client: Client, job_id: str) -> str:
    """A full job id for ``job_id``, which may be the short prefix ``shoal list`` shows."""
    return _describe(client, job_id).job.id


def _describe(client: Client, job_id: str) -> JobDescription:
    from shoal import NotFound, ShoalAPIError

    try:
        return client.describe(job_id)
    except NotFound:
        try:
            newest = client.list(limit=1000).jobs  # our own: describe only shows us our jobs anyway
            matches = [j.id for j in newest if j.id.startswith(job_id)]
        except ShoalAPIError:
            matches = []
        if len(matches) > 1:
            shown = ", ".join(matches[:5])
            raise CLIError(f"job id prefix {job_id!r} is ambiguous: {shown}", code=EXIT_USAGE) from None
        if not matches:
            raise
        return client.describe(matches[0])


def _is_sweep(some_id: str) -> bool:
    return some_id.startswith("s-")


def _not_a_sweep(some_id: str, instead: str) -> None:
    if _is_sweep(some_id):
        raise CLIError(f"{some_id} is a sweep: its indexes have their own {instead}", code=EXIT_USAGE)


def _describe_sweep(client: Client, sweep_id: str) -> SweepDescription:
    """Like ``_describe``: the sweep, found by its full id or a unique prefix of it."""
    from shoal import NotFound, ShoalAPIError

    try:
        return client.describe_sweep(sweep_id)
    except NotFound:
        try:
            newest = client.list_sweeps(limit=1000).sweeps
            matches = [s.id for s in newest if s.id.startswith(sweep_id)]
        except ShoalAPIError:
            matches = []
        if len(matches) > 1:
            shown = ", ".join(matches[:5])
            raise CLIError(f"sweep id prefix {sweep_id!r} is ambiguous: {shown}", code=EXIT_USAGE) from None
        if not matches:
            raise
        return client.describe_sweep(matches[0])


@app.command("list")
def list_jobs(
    ctx: typer.Context,
    state: Annotated[JobStateName | None, typer.Option("--state", help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option("--limit", metavar="N", min=1, help="At most this many jobs.")] = 50,
    json_: _Json = False,
) -> None:
    """List your jobs, newest first (a node shows each client only its own jobs)."""
    result = _client(ctx).list(state=state, limit=limit)
    if json_:
        from cli.render import print_json

        return print_json(result)
    from cli.render import jobs_table, show

    if not result.jobs:
        print("No jobs.", file=sys.stderr)
        return None
    show(jobs_table(result.jobs, time.time()))
    if result.total > len(result.jobs):
        print(f"Showing {len(result.jobs)} of {result.total} jobs (use --limit).", file=sys.stderr)
    return None


@app.command()
def describe(ctx: typer.Context, job_id: _AnyId, json_: _Json = False) -> None:
    """Show a job or a sweep: state, why, executions or ranges of indexes, timings."""
    if _is_sweep(job_id):
        sweep = _describe_sweep(_client(ctx), job_id)
        from cli.render import print_json, show, sweep_view

        return print_json(sweep) if json_ else show(sweep_view(sweep, time.time()))
    desc = _describe(_client(ctx), job_id)
    from cli.render import describe_view, print_json, show

    if json_:
        return print_json(desc)
    show(describe_view(desc, time.time()))
    return None


@app.command()
def logs(
    ctx: typer.Context,
    job_id: _JobId,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    stderr: Annotated[bool, typer.Option("--stderr", help="The job's stderr instead of its stdout.")] = False,
) -> None:
    """Print a job's stdout (or stderr)."""
    _not_a_sweep(job_id, "logs: shoal sweep logs ID INDEX")
    client = _client(ctx)
    job_id = _resolve(client, job_id)
    stream = "stderr" if stderr else "stdout"
    if follow:
        for chunk in client.follow_logs(job_id, stream):
            sys.stdout.write(chunk)
            sys.stdout.flush()
    else:
        sys.stdout.write(client.logs(job_id, stream))


_MaxBytes = Annotated[str | None, typer.Option("--max-bytes", metavar="SIZE",
    help="Refuse a download larger than this, e.g. 10GiB (default: twice the recorded result sizes + 64 MiB).")]


def _size(value: str | None, flag: str) -> int | None:
    from jobs.spec import parse_bytes

    try:
        return None if value is None else parse_bytes(value)
    except ValueError as e:
        raise CLIError(f"{flag}: {e}", code=EXIT_USAGE) from None


@app.command()
def get(
    ctx: typer.Context,
    job_id: _JobId,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", metavar="DIR",
        help="Where to put the results (default: ./job-<id>).")] = None,
    max_bytes: _MaxBytes = None,
) -> None:  # fmt: skip
    """Download a job's results (stdout, stderr, exit code, outputs), checked against the CID in its record."""
    from cli.render import short_id

    _not_a_sweep(job_id, "results: shoal sweep get ID INDEX")
    limit = _size(max_bytes, "--max-bytes")
    client = _client(ctx)
    job_id = _resolve(client, job_id)
    path = client.download(job_id, output_dir or Path(f"job-{short_id(job_id)}"), max_bytes=limit)
    print(path)


@app.command()
def cancel(ctx: typer.Context, job_id: _AnyId, json_: _Json = False) -> None:
    """Cancel a job, or a sweep (every index that has not finished)."""
    client = _client(ctx)
    if _is_sweep(job_id):
        return _cancel_sweep(client, job_id, json_)
    before = _describe(client, job_id)
    desc = client.cancel(before.job.id)
    if json_:
        from cli.render import print_json

        return print_json(desc)
    return _say_cancelled("Job", desc.job.id, before.job.state, desc.job.state)


def _say_cancelled(what: str, ident: str, before: JobState, now: JobState) -> None:
    """One line on what cancelling did to a job or a sweep (both move through JobState)."""
    if before.is_terminal:
        print(f"{what} {ident} already {before}; nothing to cancel")
    elif now == "cancelled":
        print(f"{what} {ident} cancelled")
    elif now.is_terminal:
        print(f"{what} {ident} {now} before it could be cancelled")
    else:
        print(f"{what} {ident} is being cancelled (now {now})")


@app.command()
def events(ctx: typer.Context, job_id: _AnyId, json_: _Json = False) -> None:
    """Print a job's (or sweep's) events until it ends (--json: JSON lines)."""
    import json

    from cli.render import event_line

    client = _client(ctx)
    job_id = _describe_sweep(client, job_id).sweep.id if _is_sweep(job_id) else _resolve(client, job_id)
    start: float | None = None
    for event in client.events(job_id):
        if json_:
            print(json.dumps(event.model_dump(mode="json")), flush=True)
            continue
        start = event.at if start is None else start
        print(event_line(event, start), flush=True)


@app.command()
def share(
    ctx: typer.Context,
    some_id: _AnyId,
    key: Annotated[str, typer.Argument(metavar="KEY", help="The reader's public key, as 'shoal key show' prints it.")],
) -> None:  # fmt: skip
    """Let another client key read one of your jobs or sweeps: describe, events, logs, get; nothing else."""
    from shoal._auth import parse_public_key

    try:
        parse_public_key(key)
    except ValueError as e:
        raise CLIError(str(e), code=EXIT_USAGE) from None
    client = _client(ctx)
    some_id = _describe_sweep(client, some_id).sweep.id if _is_sweep(some_id) else _resolve(client, some_id)
    shared = client.share(some_id, key)
    print(f"{'Sweep' if _is_sweep(shared.id) else 'Job'} {shared.id} can now be read by client {shared.key}")


key_app = typer.Typer(help="Your client key: the identity your requests are signed with and your jobs belong to.",
                      no_args_is_help=True, rich_markup_mode=None)
app.add_typer(key_app, name="key")


@key_app.command("show")
def key_show() -> None:
    """Print your public key on one line (what a node's --authorized-keys file lists; created on first use)."""
    from shoal._auth import ClientKey

    print(ClientKey.load_or_create().public_key_b64)


# ------------------------------------------------------------------------------------ sweeps

sweep_app = typer.Typer(help="Sweeps of many jobs, made by run … --param K=V1,V2.",
                        no_args_is_help=True, rich_markup_mode=None)
app.add_typer(sweep_app, name="sweep")
_Index = Annotated[int, typer.Argument(metavar="INDEX", min=0, help="Index of the sweep (0, 1, …).")]


def _cancel_sweep(client: Client, sweep_id: str, json_: bool) -> None:
    before = _describe_sweep(client, sweep_id)
    desc = client.cancel_sweep(before.sweep.id)
    if json_:
        from cli.render import print_json

        return print_json(desc)
    return _say_cancelled("Sweep", desc.sweep.id, before.sweep.state, desc.sweep.state)


@sweep_app.command("list")
def sweep_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", metavar="N", min=1, max=1000, help="At most this many.")] = 50,
    json_: _Json = False,
) -> None:
    """List your sweeps, newest first."""
    result = _client(ctx).list_sweeps(limit=limit)
    from cli.render import print_json, show, sweeps_table

    if json_:
        return print_json(result)
    if not result.sweeps:
        print("No sweeps.", file=sys.stderr)
        return None
    show(sweeps_table(result.sweeps, time.time()))
    if result.total > len(result.sweeps):
        print(f"Showing {len(result.sweeps)} of {result.total} sweeps (use --limit).", file=sys.stderr)
    return None


@sweep_app.command("indexes")
def sweep_indexes(
    ctx: typer.Context,
    sweep_id: _SweepId,
    state: Annotated[JobStateName | None, typer.Option("--state", help="Only indexes in this state.")] = None,
    first: Annotated[int, typer.Option("--first", metavar="N", min=0, help="From this index on.")] = 0,
    limit: Annotated[int, typer.Option("--limit", metavar="N", min=1, max=10_000, help="At most this many.")] = 100,
    json_: _Json = False,
) -> None:
    """Indexes of a sweep in order: state, node, exit code, parameters, reason."""
    client = _client(ctx)
    desc = _describe_sweep(client, sweep_id)
    result = client.sweep_indexes(desc.sweep.id, state=state, first=first, limit=limit)
    from cli.render import indexes_table, print_json, show

    if json_:
        return print_json(result)
    if not result.indexes:
        print(f"No {state + ' ' if state else ''}indexes" + (f" from {first} on." if first else "."), file=sys.stderr)
        return None
    show(indexes_table(result.indexes, desc.sweep.spec))
    if len(result.indexes) == limit:
        after = result.indexes[-1].index + 1
        print(f"Showing {len(result.indexes)} of {result.total}{' ' + state if state else ''} indexes; "
              f"more with --first {after}.", file=sys.stderr)
    return None


@sweep_app.command("retry", context_settings=_SETTINGS)
def sweep_retry(
    ctx: typer.Context,
    sweep_id: _SweepId,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the sweep to its end.")] = True,
    wait_timeout: Annotated[float | None, typer.Option("--wait-timeout", metavar="SECONDS",
        help="Stop waiting after this long (exit 124; the sweep goes on).")] = None,
    id_only: Annotated[bool, typer.Option("--id-only", help="Print only the sweep id.")] = False,
    json_: _Json = False,
) -> int:  # fmt: skip
    """Run a sweep's failed indexes again (a failed sweep runs again), then follow it."""
    from cli.waiting import follow_sweep
    from jobs import JobState

    if id_only and json_:
        raise CLIError("--id-only and --json cannot be used together", code=EXIT_USAGE)
    client = _client(ctx)
    before = _describe_sweep(client, sweep_id)
    desc = client.retry_sweep(before.sweep.id)
    failed = before.sweep.counts.get(JobState.FAILED, 0)
    message = (f"Sweep {desc.sweep.id}: {failed} failed indexes put back to run" if failed
               else f"Sweep {desc.sweep.id} has no failed indexes; nothing to retry")
    opts = RunOptions(wait=wait, wait_timeout=wait_timeout, id_only=id_only, json=json_)
    return follow_sweep(client, desc, opts, message)


@sweep_app.command("get")
def sweep_get(
    ctx: typer.Context,
    sweep_id: _SweepId,
    index: _Index,
    dest: Annotated[Path | None, typer.Argument(metavar="DEST",
        help="Where to put the results (default: ./sweep-<id>-<index>).")] = None,
    max_bytes: _MaxBytes = None,
) -> None:  # fmt: skip
    """Download one index's results (stdout, stderr, exit code, outputs), checked against their recorded CID."""
    from cli.render import short_id

    limit = _size(max_bytes, "--max-bytes")
    client = _client(ctx)
    sweep_id = _describe_sweep(client, sweep_id).sweep.id
    path = client.download_index(sweep_id, index, dest or Path(f"sweep-{short_id(sweep_id)}-{index}"),
                                 max_bytes=limit)
    print(path)


@sweep_app.command("logs")
def sweep_logs(
    ctx: typer.Context,
    sweep_id: _SweepId,
    index: _Index,
    stderr: Annotated[bool, typer.Option("--stderr", help="The index's stderr instead of its stdout.")] = False,
) -> None:
    """Print one index's stdout (or stderr)."""
    client = _client(ctx)
    sweep_id = _describe_sweep(client, sweep_id).sweep.id
    sys.stdout.write(client.index_logs(sweep_id, index, "stderr" if stderr else "stdout"))


# ---------------------------------------------------------------------------------- network


@app.command("id")
def node_id(ctx: typer.Context, json_: _Json = False) -> None:
    """This node: peer id, addresses, roles, engines and capacity."""
    status = _client(ctx, timeout=10).node()
    from cli.render import node_view, print_json, show

    if json_:
        return print_json(status)
    show(node_view(status))
    return None


@app.command()
def peers(ctx: typer.Context, json_: _Json = False) -> None:
    """Peers this node is connected to, one per line."""
    result = _client(ctx, timeout=10).peers()
    if json_:
        from cli.render import print_json

        return print_json(result)
    for peer in result.peers:
        print(peer)
    return None


@app.command()
def nodes(ctx: typer.Context, json_: _Json = False) -> None:
    """Compute nodes: engines and free/total capacity."""
    result = _client(ctx, timeout=10).nodes()
    from cli.render import nodes_table, print_json, show

    if json_:
        return print_json(result)
    if not result.nodes:
        print("No compute nodes known yet.", file=sys.stderr)
        return None
    show(nodes_table(result))
    return None


@app.command()
def version(ctx: typer.Context, json_: _Json = False) -> None:
    """The CLI's version, and the node's if one is reachable."""
    from shoal import ShoalAPIError

    cli_version = _cli_version()
    try:
        node_version: str | None = _client(ctx, timeout=5).version()
        problem = ""
    except ShoalAPIError as exc:
        node_version, problem = None, " ".join(str(exc).split())
    if json_:
        from cli.render import print_json

        return print_json({"cli": cli_version, "node": node_version})
    print(f"shoal {cli_version}")
    print(f"node  {node_version}" if node_version else f"node  not reachable ({problem})")
    return None


def _cli_version() -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("shoal")
    except PackageNotFoundError:
        return "unknown (not installed)"


# ----------------------------------------------------------------------------------- daemons

_Size = Annotated[str | None, typer.Option(metavar="SIZE", help="e.g. 4GiB (defaults: as for CPU).")]


@app.command(context_settings=_SETTINGS)
def serve(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", metavar="DIR",
        help="Keys and store (default ~/.shoal/node).")] = None,
    listen: Annotated[list[str] | None, typer.Option("--listen", metavar="MULTIADDR",
        help="libp2p listen address; repeatable.")] = None,
    peer: Annotated[list[str] | None, typer.Option("--peer", metavar="MULTIADDR",
        help="Peer to connect to; repeatable.")] = None,
    api_host: Annotated[str | None, typer.Option("--api-host", metavar="HOST", help="API bind address.")] = None,
    api_port: Annotated[int | None, typer.Option("--api-port", metavar="PORT",
        help="API port (default 8700; 0: any free port).")] = None,
    no_requester: Annotated[bool, typer.Option("--no-requester", help="Do not orchestrate jobs.")] = False,
    no_compute: Annotated[bool, typer.Option("--no-compute", help="Do not run jobs.")] = False,
    noop: Annotated[bool, typer.Option("--noop", help="Run every engine as noop (benchmarks).")] = False,
    limit_total_cpu: Annotated[str | None, typer.Option(metavar="CORES",
        help="CPU for all jobs together; a total limit not given is what the machine has.")] = None,
    limit_total_memory: _Size = None,
    limit_total_disk: _Size = None,
    limit_job_cpu: Annotated[str | None, typer.Option(metavar="CORES",
        help="CPU for one job; a per-job limit not given is the total.")] = None,
    limit_job_memory: _Size = None,
    limit_job_disk: _Size = None,
    log_level: Annotated[LogLevel | None, typer.Option("--log-level", case_sensitive=False,
        help="Default INFO.")] = None,
    ipfs_api: Annotated[str | None, typer.Option("--ipfs-api", metavar="URL",
        help="Kubo RPC (default http://127.0.0.1:5001; 'none': keep results in the data dir).")] = None,
    allow_private_urls: Annotated[bool, typer.Option("--allow-private-urls",
        help="Let jobs download inputs from loopback/private addresses.")] = False,
    bad_actor: Annotated[bool, typer.Option("--bad-actor",
        help="Report wrong results (to test verification).")] = False,
    retention: Annotated[float | None, typer.Option("--retention", metavar="SECONDS", min=1,
        help="Unpin results this long after a job ends (default 7 days).")] = None,
    ttl: Annotated[float | None, typer.Option("--ttl", metavar="SECONDS", min=1,
        help="Delete finished jobs, sweeps and their results this long after they end (default 30 days).")] = None,
    pending_bid_timeout: Annotated[float | None, typer.Option("--pending-bid-timeout", metavar="SECONDS", min=0.1,
        help="Longest a bid the requester left undecided holds capacity (default 120; a job's own wait for "
             "min_bids plus 10 s when shorter).")] = None,
    unsafe_unsandboxed_python: Annotated[bool, typer.Option("--unsafe-unsandboxed-python",
        help="UNSAFE: run python jobs without the OS sandbox (when bubblewrap cannot work here).")] = False,
    allow_images: Annotated[list[str] | None, typer.Option("--allow-images", metavar="PATTERN",
        help="Docker images jobs may use (e.g. 'python:*'); repeatable. Default: Shoal's base images and "
             "images pulled for jobs, never other local ones.")] = None,
    network_key: Annotated[Path | None, typer.Option("--network-key", metavar="FILE",
        help="Private network: connect only with peers holding this key (shoal network-key new).")] = None,
    trusted_peers: Annotated[Path | None, typer.Option("--trusted-peers", metavar="FILE",
        help="Connect only with these peers (one peer id per line).")] = None,
    authorized_keys: Annotated[Path | None, typer.Option("--authorized-keys", metavar="FILE",
        help="Only these client keys may use the API: one per line (as 'shoal key show' prints it), "
             "optionally followed by capabilities submit, read, cancel, admin (none listed: all). "
             "Re-read when it changes.")] = None,
    open_api: Annotated[bool, typer.Option("--open-api",
        help="Let any client key in although the API listens beyond loopback (otherwise such a node needs "
             "--authorized-keys).")] = False,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", metavar="FILE",
        help="Serve the API over HTTPS with this certificate (PEM); needs --tls-key.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", metavar="FILE",
        help="The private key (PEM) of --tls-cert.")] = None,
    api_name: Annotated[list[str] | None, typer.Option("--api-name", metavar="HOST[:PORT]",
        help="A name clients reach the API by (DNS name, public IP, proxy); repeatable. Signed requests "
             "name their host, and a node refuses those made for another.")] = None,
    quota_jobs_in_flight: Annotated[int | None, typer.Option("--quota-jobs-in-flight", metavar="N", min=1,
        help="Per client: live jobs on this node (default 10000); then 429.")] = None,
    quota_submits_per_second: Annotated[float | None, typer.Option("--quota-submits-per-second", metavar="N",
        min=0.001, help="Per client: job and sweep submissions per second, bursts of twice that "
                        "(default 1000); then 429.")] = None,
    quota_event_streams: Annotated[int | None, typer.Option("--quota-event-streams", metavar="N", min=1,
        help="Per client: open event streams (default 256); then 429.")] = None,
    peer_rate_limit: Annotated[float | None, typer.Option("--peer-rate-limit", metavar="N", min=0,
        help="Direct requests per second one peer may make, in bursts of up to 2N; more are refused "
             "(default 1000; 0: no limit).")] = None,
) -> None:  # fmt: skip
    """Run a Shoal node in the foreground until Ctrl-C."""
    from cli.daemon import Limit, build_node_config, stop_on_signals

    config = build_node_config(
        data_dir=data_dir,
        listen=listen,
        peers=peer,
        api_host=api_host,
        api_port=api_port,
        requester=not no_requester,
        compute=not no_compute,
        noop=noop,
        limit_total=Limit(limit_total_cpu, limit_total_memory, limit_total_disk),
        limit_job=Limit(limit_job_cpu, limit_job_memory, limit_job_disk),
        log_level=log_level,
        ipfs_api=ipfs_api,
        allow_private_urls=allow_private_urls,
        bad_actor=bad_actor,
        retention=retention,
        ttl=ttl,
        pending_bid_timeout=pending_bid_timeout,
        unsandboxed_python=unsafe_unsandboxed_python,
        allow_images=allow_images,
        network_key=network_key,
        trusted_peers=trusted_peers,
        authorized_keys=authorized_keys,
        open_api=open_api,
        tls_cert=tls_cert,
        tls_key=tls_key,
        api_limits={"api_names": tuple(api_name) if api_name else None,
                    "quota_jobs_in_flight": quota_jobs_in_flight,
                    "quota_submits_per_second": quota_submits_per_second,
                    "quota_event_streams": quota_event_streams},
        peer_rate_limit=peer_rate_limit,
    )
    from node.daemon import main as run_node

    with stop_on_signals():
        run_node(config)


@app.command(context_settings=_SETTINGS)
def devstack(
    nodes: Annotated[int, typer.Option("--nodes", "-n", metavar="N", min=1, help="How many nodes.")] = 3,
    noop: Annotated[bool, typer.Option("--noop", help="Run every engine as noop (benchmarks).")] = False,
    base_dir: Annotated[Path | None, typer.Option("--base-dir", metavar="DIR",
        help="Data dirs and state file (default under ~/.shoal).")] = None,
    base_port: Annotated[int | None, typer.Option("--base-port", metavar="PORT",
        help="First API port; node i uses PORT+i.")] = None,
    kubo: Annotated[bool | None, typer.Option("--kubo/--no-kubo",
        help="One Kubo (IPFS) daemon per node (default: when Kubo is installed).")] = None,
    bad_actors: Annotated[int, typer.Option("--bad-actors", metavar="M", min=0,
        help="The last M nodes report wrong results (to watch verification).")] = 0,
    retention: Annotated[float | None, typer.Option("--retention", metavar="SECONDS", min=1,
        help="Every node's --retention (results unpinned after).")] = None,
    ttl: Annotated[float | None, typer.Option("--ttl", metavar="SECONDS", min=1,
        help="Every node's --ttl (finished jobs and sweeps deleted after).")] = None,
) -> None:  # fmt: skip
    """Run N local nodes for development until Ctrl-C.

    Other commands find the devstack on their own (no --api needed).
    """
    from cli.daemon import stop_on_signals
    from devstack.stack import main as run_stack

    extra: dict[str, Any] = {}
    if base_dir is not None:
        extra["base_dir"] = base_dir
    if base_port is not None:
        extra["base_port"] = base_port
    if kubo is not None:
        extra["kubo"] = kubo
    if bad_actors:
        extra["bad_actors"] = bad_actors
    serve_args = [*(["--retention", f"{retention:g}"] if retention else []), *(["--ttl", f"{ttl:g}"] if ttl else [])]
    if serve_args:
        extra["extra_args"] = serve_args
    with stop_on_signals():
        run_stack(nodes=nodes, noop=noop, **extra)


@network_key_app.command("new")
def network_key_new() -> None:
    """Print a new random network key: shoal network-key new > FILE.

    32 random bytes in libp2p's swarm.key format. Give every node of the network the same file
    (shoal serve --network-key FILE) and keep it secret.
    """
    from node.net.admission import new_network_key

    sys.stdout.write(new_network_key())


from cli.tools import bench, images_build  # noqa: E402 - thin, typer-only module

app.command(context_settings=_SETTINGS)(bench)
images_app.command("build", context_settings=_SETTINGS)(images_build)


def main() -> None:
    """Console script entry point."""
    app(prog_name="shoal")


if __name__ == "__main__":
    main()

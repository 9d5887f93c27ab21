"""``shoal list``, ``describe``, ``wait``, ``logs``, ``get``, ``cancel``, ``events``, ``share``: one job (or,
where the id is a sweep's, one sweep) after it was submitted."""

from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path
from typing import Annotated

import typer

from cli.arguments import AnyId, JobId, JobStateName, Json, MaxBytes, Output
from cli.connect import client
from cli.exits import EXIT_USAGE
from cli.options import duration


def list_jobs(
    ctx: typer.Context,
    state: Annotated[JobStateName | None, typer.Option("--state", help="Only jobs in this state.")] = None,
    limit: Annotated[int, typer.Option("--limit", metavar="N", min=1, max=1000, help="At most this many jobs.")] = 50,
    offset: Annotated[int, typer.Option("--offset", metavar="N", min=0, help="Skip this many of the newest.")] = 0,
    selector: Annotated[str | None, typer.Option("--selector", metavar="TEXT",
                                                 help="Only jobs whose selector contains TEXT, e.g. zone=eu.")] = None,
    json_: Json = False,
    output: Output = None,
) -> None:
    """List your jobs, newest first (a node shows each client only its own jobs)."""
    from cli.render import emit, jobs_table, output_format, show_list

    fmt = output_format(json_, output)
    sdk = client(ctx)
    result = sdk.list(state=state, limit=limit, offset=offset, selector=selector)
    emit(result, fmt, lambda: show_list(result.jobs, result.total, "jobs", jobs_table, offset))
    if fmt == "table" and state is None and selector is None:  # a sweep's indexes are not jobs: say where they are
        sweeps = sdk.list_sweeps(limit=1).total
        if sweeps:
            print(f"And {sweeps} sweep{'s' if sweeps > 1 else ''}: shoal sweep list", file=sys.stderr)


def describe(ctx: typer.Context, job_id: AnyId, json_: Json = False, output: Output = None) -> None:
    """Show a job or a sweep: state, why, executions or ranges of indexes, timings.

    As YAML or JSON it is also a job file: 'shoal job run FILE' runs its spec again."""
    from cli.lookup import find_job, find_sweep, is_sweep
    from cli.render import describe_view, emit, output_format, show, sweep_view

    fmt = output_format(json_, output)
    if is_sweep(job_id):
        sweep = find_sweep(client(ctx), job_id)
        return emit(sweep, fmt, lambda: show(sweep_view(sweep, time.time())))
    desc = find_job(client(ctx), job_id)
    return emit(desc, fmt, lambda: show(describe_view(desc, time.time())))


def wait(
    ctx: typer.Context,
    job_id: AnyId,
    timeout: Annotated[float | None, typer.Option("--timeout", metavar="DURATION", parser=duration,
        help="Stop waiting after this long (exit 124; the job goes on).")] = None,
    json_: Json = False,
) -> int:  # fmt: skip
    """Follow a job or a sweep submitted earlier (--no-wait, another shell, before the laptop closed) to its end,
    as run does: live status, then the job's stdout (a sweep: its ranges) and run's exit code."""
    from cli.lookup import find_job, find_sweep, is_sweep
    from cli.options import RunOptions
    from cli.waiting import follow_job, follow_sweep

    sdk = client(ctx)
    opts = RunOptions(wait_timeout=timeout, json=json_)
    if is_sweep(job_id):
        desc = find_sweep(sdk, job_id)
        return follow_sweep(sdk, desc, opts, f"Sweep {desc.sweep.id}: {desc.sweep.state}")
    return follow_job(sdk, lambda: client(ctx), find_job(sdk, job_id), opts)


def logs(
    ctx: typer.Context,
    job_id: JobId,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    stderr: Annotated[bool, typer.Option("--stderr", help="The job's stderr instead of its stdout.")] = False,
) -> None:
    """Print a job's stdout (or stderr)."""
    from cli.lookup import job_id as full_id
    from cli.lookup import refuse_sweep
    from cli.render import truncation_note
    from cli.terminal import write_output

    refuse_sweep(job_id, "logs: shoal sweep logs ID INDEX")
    sdk = client(ctx)
    job_id = full_id(sdk, job_id)
    stream = "stderr" if stderr else "stdout"
    write_output(sdk.follow_logs(job_id, stream) if follow else [sdk.logs(job_id, stream)])
    if note := truncation_note(sdk.describe(job_id).shown_result(), stream, f"shoal get {job_id}"):
        print(note, file=sys.stderr)


def get(
    ctx: typer.Context,
    job_id: AnyId,
    output_dir: Annotated[Path | None, typer.Option("--output-dir", "-o", metavar="DIR",
        help="Where to put the results (default: ./job-<short id>, the id as shoal list shows it; a sweep's: "
             "./sweep-<short id>, an index a folder). Into an existing folder, nothing there is replaced: a "
             "name the results hold already there with other content stops it.")] = None,
    max_bytes: MaxBytes = None,
) -> None:  # fmt: skip
    """Download a job's results (stdout, stderr, exit code, outputs), checked against the CID in its record; for a
    sweep, those of every completed index, each in a folder named by its index (one: shoal sweep get ID INDEX)."""
    from cli.lookup import find_sweep, is_sweep
    from cli.lookup import job_id as full_id
    from cli.render import results_dir
    from cli.specs import parse_size

    limit = parse_size(max_bytes, "--max-bytes")
    sdk = client(ctx)
    if is_sweep(job_id):
        from cli.render import console
        from jobs import JobState

        sweep = find_sweep(sdk, job_id).sweep
        dest = output_dir or results_dir("sweep", sweep.id)
        completed = sweep.counts.get(JobState.COMPLETED, 0)
        line = f"Downloading the results of {completed:,} completed indexes into {dest}"
        with console(stderr=True).status(line) as status:  # thousands take a while: say how far it is
            paths = sdk.download_sweep(sweep.id, dest, max_bytes=limit,
                                       progress=lambda done: status.update(f"{line}: {done:,} done"))
        left = sweep.count - len(paths)
        print(f"{len(paths)} completed indexes downloaded" + (f"; the other {left} did not complete "
              f"(shoal describe {sweep.id})" if left else ""), file=sys.stderr)
        print(dest)
        return
    job_id = full_id(sdk, job_id)
    with warnings.catch_warnings(record=True) as notes:  # the SDK's word of a cut stdout, as a line of ours
        warnings.simplefilter("always", UserWarning)
        path = sdk.download(job_id, output_dir or results_dir("job", job_id), max_bytes=limit)
    for note in notes:
        print(note.message, file=sys.stderr)
    print(path)


def cancel(ctx: typer.Context, job_id: AnyId, json_: Json = False) -> None:
    """Cancel a job, or a sweep (every index that has not finished)."""
    from cli.lookup import find_job, find_sweep, is_sweep
    from cli.render import cancelled_line

    sdk = client(ctx)
    if is_sweep(job_id):
        before_sweep = find_sweep(sdk, job_id)
        sweep = sdk.cancel_sweep(before_sweep.sweep.id)
        if json_:
            from cli.render import print_json

            return print_json(sweep)
        print(cancelled_line("Sweep", sweep.sweep.id, before_sweep.sweep.state, sweep.sweep.state))
        return None
    before = find_job(sdk, job_id)
    desc = sdk.cancel(before.job.id)
    if json_:
        from cli.render import print_json

        return print_json(desc)
    print(cancelled_line("Job", desc.job.id, before.job.state, desc.job.state))
    return None


def events(ctx: typer.Context, job_id: AnyId, json_: Json = False, output: Output = None) -> None:
    """Print a job's (or sweep's) events until it ends (--json: JSON lines; --output yaml: YAML documents)."""
    import json

    from cli.lookup import some_id
    from cli.render import event_line, output_format, print_yaml

    fmt = output_format(json_, output)
    sdk = client(ctx)
    job_id = some_id(sdk, job_id)
    start: float | None = None
    for event in sdk.events(job_id):
        if fmt == "json":
            print(json.dumps(event.model_dump(mode="json")), flush=True)
            continue
        if fmt == "yaml":
            print("---")
            print_yaml(event)
            sys.stdout.flush()
            continue
        start = event.at if start is None else start
        print(event_line(event, start), flush=True)


def share(
    ctx: typer.Context,
    some_id: AnyId,
    key: Annotated[str, typer.Argument(metavar="KEY", help="The reader's public key, as 'shoal key show' prints it.")],
) -> None:  # fmt: skip
    """Let another client key read one of your jobs or sweeps: describe, events, logs, get; nothing else."""
    from cli import lookup
    from cli.errors import CLIError
    from cli.terminal import printable
    from shoal._auth import parse_public_key

    try:
        parse_public_key(key)
    except ValueError as e:
        raise CLIError(str(e), code=EXIT_USAGE) from None
    sdk = client(ctx)
    some_id = lookup.some_id(sdk, some_id)
    shared = sdk.share(some_id, key)
    print(printable(f"{'Sweep' if lookup.is_sweep(shared.id) else 'Job'} {shared.id} can now be read by client "
                    f"{shared.key}"))

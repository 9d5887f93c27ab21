"""``shoal sweep list``, ``indexes``, ``retry``, ``get``, ``logs``: sweeps made by
``run … --param K=V1,V2`` and their indexes (``describe``, ``cancel``, ``events`` and ``share``
take a sweep's id too: ``cli.commands.jobs``)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from cli.arguments import Index, JobStateName, Json, MaxBytes, Output, SweepId
from cli.connect import client
from cli.exits import EXIT_USAGE
from cli.options import duration

if TYPE_CHECKING:
    from collections.abc import Iterator

    from jobs.views import IndexList
    from shoal import Client


def sweep_list(
    ctx: typer.Context,
    limit: Annotated[int, typer.Option("--limit", metavar="N", min=1, max=1000, help="At most this many.")] = 50,
    offset: Annotated[int, typer.Option("--offset", metavar="N", min=0, help="Skip this many of the newest.")] = 0,
    json_: Json = False,
    output: Output = None,
) -> None:
    """List your sweeps, newest first."""
    from cli.render import emit, output_format, show_list, sweeps_table

    fmt = output_format(json_, output)
    result = client(ctx).list_sweeps(limit=limit, offset=offset)
    emit(result, fmt, lambda: show_list(result.sweeps, result.total, "sweeps", sweeps_table, offset))


def sweep_indexes(
    ctx: typer.Context,
    sweep_id: SweepId,
    state: Annotated[JobStateName | None, typer.Option("--state", help="Only indexes in this state.")] = None,
    first: Annotated[int, typer.Option("--first", metavar="N", min=0, help="From this index on.")] = 0,
    limit: Annotated[int | None, typer.Option("--limit", metavar="N", min=1, max=10_000,  # jobs.views.MAX_INDEX_PAGE
        help="At most this many (default: 100 in a table, all of them with --json or --output).")] = None,
    json_: Json = False,
    output: Output = None,
) -> None:  # fmt: skip
    """Indexes of a sweep in order: state, node, exit code, parameters, reason."""
    from cli.lookup import find_sweep
    from cli.render import emit, indexes_table, output_format, show

    fmt = output_format(json_, output)
    sdk = client(ctx)
    desc = find_sweep(sdk, sweep_id)
    table = fmt == "table"
    if limit is None and fmt == "json":  # the data, for a script or pandas: the whole sweep, page by page
        return stream_json(index_pages(sdk, desc.sweep.id, state, first))
    from jobs.views import MAX_INDEX_PAGE, IndexList

    following = False  # another page follows the one shown
    if limit is None and not table:
        pages = list(index_pages(sdk, desc.sweep.id, state, first))
        result = IndexList(indexes=[r for page in pages for r in page.indexes], total=pages[-1].total)
    else:
        limit = limit or TABLE_ROWS
        # one more than shown, to know whether a page follows (a count cannot tell, from --first N)
        asked = sdk.sweep_indexes(desc.sweep.id, state=state, first=first, limit=min(limit + 1, MAX_INDEX_PAGE))
        following = len(asked.indexes) > limit or len(asked.indexes) == MAX_INDEX_PAGE
        result = IndexList(indexes=asked.indexes[:limit], total=asked.total)

    def more() -> None:
        after = result.indexes[-1].index + 1 if result.indexes else first
        if following and after < desc.sweep.count:
            print(f"Showing {len(result.indexes)} of {result.total}{' ' + state if state else ''} indexes; "
                  f"more with --first {after}.", file=sys.stderr)

    def human() -> None:
        if not result.indexes:
            print(f"No {state + ' ' if state else ''}indexes" + (f" from {first} on." if first else "."),
                  file=sys.stderr)
            return
        show(indexes_table(result.indexes, desc.sweep.spec))
        more()

    emit(result, fmt, human)
    if not table:
        more()


TABLE_ROWS = 100  # indexes a table shows without --limit
INDEX_PAGE = 1000  # index records asked for at once (the API takes up to 10,000; the SDK's downloads ask 1,000)


def index_pages(sdk: Client, sweep_id: str, state: str | None, first: int) -> Iterator[IndexList]:
    """Every index record from ``first`` on (only those in ``state`` if given), a page at a time."""
    while True:
        page = sdk.sweep_indexes(sweep_id, state=state, first=first, limit=INDEX_PAGE)
        yield page
        if len(page.indexes) < INDEX_PAGE or page.indexes[-1].index < first:  # the last, or one that does not move on
            return
        first = page.indexes[-1].index + 1


def stream_json(pages: Iterator[IndexList]) -> None:
    """``--json`` of every index, written as the pages come: a million records, each with its output's tail,
    would not fit in the client's memory at once."""
    out, sep, total = sys.stdout, "\n", 0
    out.write('{"indexes": [')
    for page in pages:
        for record in page.indexes:
            out.write(f"{sep}  {record.model_dump_json()}")
            sep = ",\n"
        total = page.total
    out.write(f'\n], "total": {total}}}\n')


def sweep_retry(
    ctx: typer.Context,
    sweep_id: SweepId,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the sweep to its end.")] = True,
    wait_timeout: Annotated[float | None, typer.Option("--wait-timeout", metavar="DURATION", parser=duration,
        help="Stop waiting after this long (exit 124; the sweep goes on).")] = None,
    id_only: Annotated[bool, typer.Option("--id-only", help="Print only the sweep id.")] = False,
    json_: Json = False,
) -> int:  # fmt: skip
    """Run a sweep's failed indexes again (a failed sweep runs again; a cancelled one resumes), then follow it."""
    from cli.errors import CLIError
    from cli.lookup import find_sweep
    from cli.options import RunOptions
    from cli.waiting import follow_sweep
    from jobs import JobState

    if id_only and json_:
        raise CLIError("--id-only and --json cannot be used together", code=EXIT_USAGE)
    sdk = client(ctx)
    before = find_sweep(sdk, sweep_id)
    desc = sdk.retry_sweep(before.sweep.id)
    failed = before.sweep.counts.get(JobState.FAILED, 0)
    cancelled = before.sweep.counts.get(JobState.CANCELLED, 0) if before.sweep.state is JobState.CANCELLED else 0
    what = " and ".join(f"{n} {name}" for n, name in ((failed, "failed"), (cancelled, "cancelled")) if n)
    message = (f"Sweep {desc.sweep.id}: {what} indexes put back to run" if what
               else f"Sweep {desc.sweep.id} has no failed indexes; nothing to retry")
    opts = RunOptions(wait=wait, wait_timeout=wait_timeout, id_only=id_only, json=json_)
    return follow_sweep(sdk, desc, opts, message)


def sweep_get(
    ctx: typer.Context,
    sweep_id: SweepId,
    index: Index,
    dest: Annotated[Path | None, typer.Argument(metavar="DEST",
        help="Where to put the results (default: ./sweep-<short id>-<index>).")] = None,
    max_bytes: MaxBytes = None,
) -> None:  # fmt: skip
    """Download one index's results (stdout, stderr, exit code, outputs), checked against their recorded CID."""
    from cli.lookup import find_sweep
    from cli.render import results_dir
    from cli.specs import parse_size

    limit = parse_size(max_bytes, "--max-bytes")
    sdk = client(ctx)
    sweep_id = find_sweep(sdk, sweep_id).sweep.id
    path = sdk.download_index(sweep_id, index, dest or results_dir("sweep", sweep_id, index),
                              max_bytes=limit)
    print(path)


def sweep_logs(
    ctx: typer.Context,
    sweep_id: SweepId,
    index: Index,
    stderr: Annotated[bool, typer.Option("--stderr", help="The index's stderr instead of its stdout.")] = False,
) -> None:
    """Print one index's stdout (or stderr)."""
    from cli.lookup import find_sweep
    from cli.render import truncation_note
    from cli.terminal import write_output

    sdk = client(ctx)
    sweep_id = find_sweep(sdk, sweep_id).sweep.id
    stream = "stderr" if stderr else "stdout"
    write_output([sdk.index_logs(sweep_id, index, stream)])
    if note := truncation_note(sdk.sweep_index(sweep_id, index).result, stream, f"shoal sweep get {sweep_id} {index}"):
        print(note, file=sys.stderr)

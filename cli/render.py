"""How things look: rich tables and views, plain-text helpers, JSON output.

Tables also go through pipes (scripts, tests): with no terminal they are drawn wide and
uncoloured, and ``NO_COLOR`` is honoured by rich itself.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.terminal import printable

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table
    from rich.text import Text

    from jobs import Event, JobSpec, JobState, Resources
    from jobs.model import Job, RunResult
    from jobs.sweep import IndexRecord, Sweep, SweepSpec
    from jobs.views import JobDescription, NodeList, NodeStatus, SweepDescription

_PIPE_WIDTH = 200  # a pipe has no width; rich would assume 80 and squeeze the columns
_STATE_STYLE = {
    "pending": "blue",
    "running": "cyan",
    "completed": "green",
    "failed": "red",
    "cancelled": "yellow",
    "bidding": "blue",
    "accepted": "cyan",
    "proposed": "cyan",
    "rejected": "dim",
}
_PHASES = ("submitted", "announced", "first_bid", "accepted", "started", "proposed", "finished")


def safe(text: str) -> str:
    """``printable`` text to put in rich markup: shown as written, never read as markup."""
    from rich.markup import escape

    return escape(printable(text))


def console(stderr: bool = False) -> Console:
    from rich.console import Console

    width = None
    if not (sys.stderr if stderr else sys.stdout).isatty() and "COLUMNS" not in os.environ:
        width = _PIPE_WIDTH
    return Console(stderr=stderr, width=width, highlight=False, soft_wrap=False)


def show(renderable: RenderableType) -> None:
    """Print to stdout; into a pipe without the trailing spaces rich pads table cells with."""
    out = console()
    if out.is_terminal:
        out.print(renderable)
        return
    with out.capture() as captured:
        out.print(renderable)
    sys.stdout.write("".join(line.rstrip() + "\n" for line in captured.get().splitlines()))


def print_json(data: Any) -> None:
    """``--json``: the model as ``model_dump(mode="json")``, and nothing else on stdout."""
    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json")
    sys.stdout.write(json.dumps(data, indent=2) + "\n")


def print_yaml(data: Any) -> None:
    """``--output yaml``: the same data as ``--json``, as YAML (multi-line strings as ``|`` blocks)."""
    import yaml

    if hasattr(data, "model_dump"):
        data = data.model_dump(mode="json")

    class Dumper(yaml.SafeDumper):
        pass

    def text(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style="|" if "\n" in value else None)

    Dumper.add_representer(str, text)
    out = yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=True)
    if printable(out) != out:  # a bidirectional override or a control YAML leaves as it is: escape all, as JSON does
        out = yaml.dump(data, Dumper=Dumper, sort_keys=False, allow_unicode=False)
    sys.stdout.write(out)


def output_format(json_: bool, output: str | None) -> str:
    """The format a read command prints in: ``--json`` is ``--output json``; the default is the config's
    (``$SHOAL_OUTPUT``, the config file's ``output``), else a table."""
    if json_ and output not in (None, "json"):
        from cli.errors import EXIT_USAGE, CLIError

        raise CLIError(f"--json and --output {output} disagree: give one of them", code=EXIT_USAGE)
    if json_ or output:
        return "json" if json_ else output
    from cli.config import output_format as configured

    return configured()


def emit(data: Any, fmt: str, human: Callable[[], None]) -> None:
    """A read command's answer: ``data`` (a model) as JSON or YAML, or ``human()`` draws it for people."""
    if fmt == "json":
        print_json(data)
    elif fmt == "yaml":
        print_yaml(data)
    else:
        human()


def short_id(value: str, length: int = 12) -> str:
    """A prefix, like docker's: job ids are ``j-`` + 32 hex digits, so 10 of them stay unique."""
    return value if len(value) <= length else value[:length]


def results_dir(kind: str, some_id: str, index: int | None = None) -> Path:
    """Where ``get`` puts results by default: ``job-<short id>`` (``sweep-<short id>[-<index>]``), in the current
    directory. The id is the node's word: the models refuse a separator in one, and so does this, again."""
    name = f"{kind}-{short_id(some_id)}" + ("" if index is None else f"-{index}")
    if "/" in name or "\\" in name:
        from cli.errors import CLIError

        raise CLIError(f"the node gave the id {some_id!r}, which names no directory here: give the destination")
    return Path(name)


def short_peer(peer_id: str) -> str:
    """Ed25519 peer ids all start with ``12D3KooW``; keep 8 characters after that."""
    return short_id(peer_id, 16)


def fmt_duration(seconds: float) -> str:
    """0.0123 → '12ms', 4.56 → '4.6s', 125 → '2m05s', 7300 → '2h01m'."""
    if seconds < 0:
        return "-" + fmt_duration(-seconds)
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"
    return f"{int(seconds // 3600)}h{int(seconds % 3600 // 60):02d}m"


def fmt_age(seconds: float) -> str:
    """Coarse: '12s', '5m', '3h', '2d'."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(seconds)}s"


def fmt_resources(r: Resources, *, job: bool = False) -> str:
    """A node's capacity, or (``job``) what a job asks for, where no disk means the default (``DEFAULT_DISK``,
    less on a node whose per-job disk is less)."""
    from jobs import format_bytes
    from jobs.spec import DEFAULT_DISK

    disk = f"{format_bytes(r.disk)} disk"
    if job and not r.disk:
        disk = f"{format_bytes(DEFAULT_DISK)} disk (the default; less on a node whose per-job limit is less)"
    return f"{r.cpu:g} CPU, {format_bytes(r.memory)} memory, {disk}"


def engine_summary(spec: JobSpec) -> str:
    """One line a user recognises: ``docker ubuntu echo hi``, ``python -c '…'``."""
    e = spec.engine
    if e.name == "docker":
        return shlex.join(["docker", e.image, *e.entrypoint, *e.args])
    if e.name == "wasm":
        return shlex.join(["wasm", e.module, *e.args])
    if e.name == "python":
        from shoal._map import map_title

        if e.main is None and (title := map_title(e.code or "")) is not None:
            return f"python map {title}"  # Client.map's program: the function it runs
        program = [e.main] if e.main is not None else ["-c", _clip(e.code or "", 40)]
        return shlex.join(["python", *program, *e.args])
    return e.name


def state_text(state: str) -> str:
    style = _STATE_STYLE.get(state)
    return f"[{style}]{state}[/]" if style else state


def status_line(job_id: str, state: str, reason: str, width: int = 200) -> Text:
    """The live line shown while waiting, cut to ``width`` so it never wraps (it would flicker)."""
    from rich.text import Text

    tail = f" · {safe(' '.join(reason.split()))}" if reason else ""
    line = Text.from_markup(f"[bold]{short_id(job_id)}[/] {state_text(state)}{tail}")
    line.truncate(width, overflow="ellipsis")
    return line


def sweep_counts(sweep: Sweep) -> str:
    """``812/10000 completed · 3 failed · 40 running``: progress first, then what else is not pending."""
    counts = {str(state): n for state, n in sweep.counts.items()}
    parts = [f"{counts.get('completed', 0)}/{sweep.count} completed"]
    parts += [f"{counts[s]} {s}" for s in ("failed", "cancelled", "running") if counts.get(s)]
    return " · ".join(parts)


def sweep_status_line(sweep: Sweep, width: int = 200) -> Text:
    """The live line while a sweep runs: ``s-1a2b3c4d5e6 running  812/10000 completed · 3 failed``."""
    from rich.text import Text

    line = Text.from_markup(f"[bold]{short_id(sweep.id)}[/] {state_text(sweep.state)}  {sweep_counts(sweep)}")
    line.truncate(width, overflow="ellipsis")
    return line


def range_lines(desc: SweepDescription, limit: int = 20) -> list[str]:
    """The ranges of indexes per state, one per line; the rest counted, not listed."""
    ranges = desc.ranges
    lines = [f"  {printable(_clip(str(r), 160))}" for r in ranges[:limit]]
    more = len(ranges) - limit
    if more > 0 or desc.ranges_truncated:
        lines.append(f"  … {'and more' if desc.ranges_truncated else f'{more} more'} ranges: "
                     f"shoal sweep indexes {desc.sweep.id}")
    return lines


def sweep_params(spec: SweepSpec) -> str:
    """What varies across the indexes, in one line: ``grid x(3) y(2) · 4 shards``."""
    from shoal._map import axis_labels

    parts, label = [], axis_labels([*spec.grid, *spec.zip])
    if spec.grid:
        parts.append("grid " + " ".join(f"{label[k]}({len(v)})" for k, v in spec.grid.items()))
    if spec.zip:
        parts.append(f"zip {', '.join(map(label.get, spec.zip))} ({len(next(iter(spec.zip.values())))})")
    if spec.items:
        parts.append(f"items {', '.join(spec.items[0])} ({len(spec.items)})")
    if spec.shard_inputs:
        parts.append(f"{spec.shard_inputs} shards" + (f" of {spec.shard_path}" if spec.shard_path else ""))
    return " · ".join(parts)


def index_values(spec: SweepSpec, index: int) -> str:
    """``x=1 y=a``: the parameters of one index (as its environment has them; a map's by its argument names)."""
    from shoal._map import axis_labels

    try:
        values = spec.values(index)
    except IndexError:
        return ""
    label = axis_labels(values)
    return " ".join(f"{label[k]}={v}" for k, v in values.items())


def sweep_view(desc: SweepDescription, now: float) -> RenderableType:
    from rich.console import Group

    sweep, spec = desc.sweep, desc.sweep.spec
    info = _grid()
    info.add_row("Sweep", sweep.id)
    info.add_row("State", state_text(sweep.state))
    if sweep.reason:
        info.add_row("Reason", safe(sweep.reason))
    info.add_row("Engine", safe(engine_summary(spec.job)))
    info.add_row("Indexes", f"{sweep.count}: {safe(sweep_params(spec))}")
    info.add_row("Success", spec.success + (f" (output {spec.success_output!r} not empty)"
                                            if spec.success_output else ""))
    if spec.confidence > 1:
        info.add_row("Verified", f"each index's result by {spec.confidence} nodes that agree")
    if sweep.winner is not None:
        info.add_row("Winner", f"index {sweep.winner} ({safe(index_values(spec, sweep.winner))})")
    info.add_row("Resources", fmt_resources(spec.job.resources, job=True))
    if spec.job.selector:
        info.add_row("Selector", safe(spec.job.selector))
    info.add_row("Submitted", f"{fmt_age(now - sweep.created_at)} ago")
    if sweep.requester:
        info.add_row("Requester", sweep.requester)
    info.add_row("Owner", sweep.owner)
    parts: list[RenderableType] = [info, ""]

    counts = _table("STATE", "INDEXES", title="Counts")
    order = ("completed", "failed", "cancelled", "running", "pending")
    for state, n in sorted(sweep.counts.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 9):
        if n:
            counts.add_row(state_text(state), str(n))
    parts += [counts, ""]

    if desc.ranges:
        table = _table("INDEXES", "STATE", "REASON", title="Ranges")
        for r in desc.ranges:
            span = str(r.first) if r.first == r.last else f"{r.first}-{r.last}"
            table.add_row(span, state_text(r.state), safe(r.reason))
        parts.append(table)
        if desc.ranges_truncated:
            parts.append(f"More ranges than shown: shoal sweep indexes {sweep.id}")
    return Group(*parts)


def show_list(rows: list[Any], total: int, noun: str, table: Callable[[list[Any], float], Table],
              offset: int = 0) -> None:
    """``rows`` (from ``offset`` on) as a table, or "No <noun>." on stderr; says so when the list is cut short."""
    if not rows:
        print(f"No {noun}." if not offset else f"No {noun} past the first {total} (--offset {offset}).",
              file=sys.stderr)
        return
    show(table(rows, time.time()))
    if total > len(rows):
        end = offset + len(rows)
        more = f"; --offset {end} for the next {noun}" if end < total else ""
        print(f"Showing {offset + 1}-{end} of {total} {noun} (--limit up to 1000{more}).", file=sys.stderr)


def sweeps_table(sweeps: list[Sweep], now: float) -> Table:
    table = _table("ID", "ENGINE", "STATE", "INDEXES", "PROGRESS", "AGE")
    for sweep in sweeps:
        table.add_row(
            short_id(sweep.id),
            safe(_clip(engine_summary(sweep.spec.job), 40)),
            state_text(sweep.state),
            str(sweep.count),
            sweep_counts(sweep),
            fmt_age(now - sweep.created_at),
        )
    return table


def indexes_table(records: list[IndexRecord], spec: SweepSpec | None) -> Table:
    table = _table("INDEX", "STATE", "NODE", "EXIT", "ATTEMPTS", "PARAMETERS", "OUTPUT", "REASON")
    for r in records:
        table.add_row(
            str(r.index),
            state_text(r.state),
            short_peer(r.node_id) if r.node_id else "",
            "" if r.result is None else str(r.result.exit_code),
            str(r.attempts) + (f" (retry {r.retries})" if r.retries else ""),
            safe(_clip(index_values(spec, r.index), 40)) if spec is not None else "",
            safe(_clip(_said_last(r.result), 40)) if r.result is not None else "",
            safe(r.reason),
        )
    return table


def _said_last(result: RunResult) -> str:
    """An index's last word: the last line of its stderr when it exited non-zero (its error, not the progress
    line before it), else the last line of its stdout (often its answer)."""
    if result.exit_code != 0:
        error = next((line for line in reversed(result.stderr.splitlines()) if line.strip()), "")
        if error:
            return error
    return result.last_line()


def jobs_table(jobs: list[Job], now: float) -> Table:
    table = _table("ID", "ENGINE", "STATE", "REASON", "AGE")
    for job in jobs:
        table.add_row(
            short_id(job.id),
            safe(_clip(engine_summary(job.spec), 40)),
            state_text(job.state),
            safe(job.reason),
            fmt_age(now - job.created_at),
        )
    return table


def truncation_note(result: RunResult | None, stream: str, get: str) -> str:
    """A line for stderr when the node cut ``stream`` of ``result`` (it carries its last part only), else "".
    ``get``: the command that downloads the results, which keep up to its last MiB (``MAX_CAPTURE``)."""
    if result is None or not getattr(result, f"{stream}_truncated"):
        return ""
    return f"Note: the {stream} shown is its last part only (the job wrote more); {get} keeps up to its last 1 MiB"


STDERR_LINES = 10  # of a failed job's stderr, shown where it failed (shoal run, describe)


def stderr_tail(job: Job | IndexRecord) -> str:
    """The last lines of a failed job's (or sweep index's) stderr (its traceback, the memory limit it met), or ""."""
    if job.state.value != "failed" or job.result is None:
        return ""
    lines = job.result.stderr.rstrip("\n").splitlines()[-STDERR_LINES:]
    return "".join(f"{line}\n" for line in lines)


def describe_view(desc: JobDescription, now: float) -> RenderableType:
    from rich.console import Group

    job, spec = desc.job, desc.job.spec
    info = _grid()
    info.add_row("Job", job.id)
    info.add_row("State", state_text(job.state))
    if job.reason:
        info.add_row("Reason", safe(job.reason))
    info.add_row("Engine", safe(engine_summary(spec)))
    info.add_row("Resources", fmt_resources(spec.resources, job=True))
    if spec.selector:
        info.add_row("Selector", safe(spec.selector))
    d = spec.deal
    info.add_row("Deal", f"concurrency {d.concurrency}, confidence {d.confidence}, min bids {d.min_bids}")
    info.add_row("Submitted", f"{fmt_age(now - job.created_at)} ago")
    if spec.retries:
        info.add_row("Retries", f"{job.retried} of {spec.retries} used")
    if job.attempt:
        info.add_row("Attempt", str(job.attempt))
    if job.requester:
        info.add_row("Requester", job.requester)
    info.add_row("Owner", job.owner)
    parts: list[RenderableType] = [info, ""]

    if desc.executions:
        table = _table("NODE", "STATE", "REASON", "EXIT", "RUN TIME", title="Executions")
        for ex in desc.executions:
            result = ex.result
            run_time = ""
            if result and result.started_at and result.finished_at:
                run_time = fmt_duration(result.finished_at - result.started_at)
            table.add_row(
                short_peer(ex.node_id),
                state_text(ex.state),
                safe(ex.error or ex.reason),
                "" if result is None else str(result.exit_code),
                run_time,
            )
        parts += [table, ""]

    start = desc.phases.submitted or job.created_at
    phases = _table("PHASE", "AFTER SUBMIT", title="Phases")
    for name in _PHASES[1:]:
        at = getattr(desc.phases, name)
        if at is not None:
            phases.add_row(name.replace("_", " "), "+" + fmt_duration(at - start))
    if phases.row_count:
        parts.append(phases)
    if tail := stderr_tail(job):
        parts += ["", f"[bold]Stderr[/bold], its last lines (all of it: shoal logs --stderr {job.id}):", safe(tail)]
    return Group(*parts)


def nodes_table(nodes: NodeList) -> Table:
    from jobs import format_bytes
    from jobs.selector import format_labels

    gpus = any(n.total.gpu for n in nodes.nodes)  # the GPU column only where a node has one: the table is wide
    table = _table("NODE", "ENGINES", "LABELS", "CPU FREE/TOTAL", "MEMORY FREE/TOTAL", "DISK FREE/TOTAL",
                   *(["GPU FREE/TOTAL"] if gpus else []), "RUNNING", "BACKLOG", "RESULTS OK/REJECTED")
    for n in nodes.nodes:
        rep = nodes.reputation.get(n.peer_id)
        verified = "—" if rep is None else f"{rep.accepted}/{rep.rejected}"
        if rep is not None and rep.quarantined:
            verified += " QUARANTINED"
            if rep.quarantined_until is not None:
                verified += f" (probation in {fmt_age(max(rep.quarantined_until - time.time(), 0))})"
        elif rep is not None and rep.probation:
            verified += " PROBATION (verified jobs only)"
        table.add_row(
            short_peer(n.peer_id),
            safe(", ".join(n.engines)),
            safe(format_labels(n.labels)) or "—",
            f"{n.free.cpu:g} / {n.total.cpu:g}",
            f"{format_bytes(n.free.memory)} / {format_bytes(n.total.memory)}",
            f"{format_bytes(n.free.disk)} / {format_bytes(n.total.disk)}",
            *([f"{n.free.gpu} / {n.total.gpu}" if n.total.gpu else "—"] if gpus else []),
            str(n.running),
            str(n.backlog),
            verified,
        )
    return table


def node_view(status: NodeStatus) -> Table:
    grid = _grid()
    grid.add_row("Peer ID", safe(status.peer_id))
    grid.add_row("Addresses", safe("\n".join(status.addrs)) or "—")
    grid.add_row("Roles", safe(", ".join(status.roles)) or "—")
    grid.add_row("Engines", safe(", ".join(status.engines)) or "—")
    if status.labels:
        from jobs.selector import format_labels

        grid.add_row("Labels", safe(format_labels(status.labels)))
    for engine, why in sorted(status.unavailable_engines.items()):
        grid.add_row(safe(f"No {engine}"), safe(why))
    for engine, note in sorted(status.containment_notes.items()):
        grid.add_row(safe(f"{engine.capitalize()} jobs"), safe(note))
    grid.add_row("Capacity", fmt_resources(status.capacity.total))
    grid.add_row("Free", fmt_resources(status.capacity.free))
    grid.add_row("Max per job", fmt_resources(status.capacity.max_per_job))
    grid.add_row("Running", str(status.running))
    grid.add_row("Backlog", str(status.backlog))
    grid.add_row("Version", safe(status.version))
    return grid


def event_line(event: Event, start: float) -> str:
    """Plain text, one line per event: ``+12ms  Bid  node 12D3KooW…  message``."""
    node = f"node {printable(short_peer(event.node_id))}" if event.node_id else ""
    fields = [f"+{fmt_duration(event.at - start):>7}", f"{event.kind:<16}", node,
              printable(" ".join(event.message.split()))]
    return "  ".join(f for f in fields if f).rstrip()


def cancelled_line(what: str, ident: str, before: JobState, now: JobState) -> str:
    """What cancelling did to a job or a sweep (both move through JobState)."""
    if before.is_terminal:
        return f"{what} {ident} already {before}; nothing to cancel"
    if now == "cancelled":
        return f"{what} {ident} cancelled"
    if now.is_terminal:
        return f"{what} {ident} {now} before it could be cancelled"
    return f"{what} {ident} is being cancelled (now {now})"


def _table(*columns: str, title: str | None = None) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.title, table.title_justify, table.title_style = title, "left", "bold"
    for name in columns:
        table.add_column(name, no_wrap=name in ("ID", "NODE", "STATE", "AGE", "INDEX", "INDEXES"), overflow="fold")
    return table


def _grid() -> Table:
    from rich.table import Table

    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold", no_wrap=True)
    grid.add_column(overflow="fold")
    return grid


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"

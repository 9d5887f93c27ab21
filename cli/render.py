"""How things look: rich tables and views, plain-text helpers, JSON output.

Tables also go through pipes (scripts, tests): with no terminal they are drawn wide and
uncoloured, and ``NO_COLOR`` is honoured by rich itself.
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table
    from rich.text import Text

    from jobs import Event, JobSpec, Resources
    from jobs.model import Job
    from jobs.views import JobDescription, NodeList, NodeStatus

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


def short_id(value: str, length: int = 12) -> str:
    """A prefix, like docker's: job ids are ``j-`` + 32 hex digits, so 10 of them stay unique."""
    return value if len(value) <= length else value[:length]


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


def fmt_resources(r: Resources) -> str:
    from jobs import format_bytes

    return f"{r.cpu:g} CPU, {format_bytes(r.memory)} memory, {format_bytes(r.disk)} disk"


def engine_summary(spec: JobSpec) -> str:
    """One line a user recognises: ``docker ubuntu echo hi``, ``python -c '…'``."""
    e = spec.engine
    if e.name == "docker":
        return shlex.join(["docker", e.image, *e.entrypoint, *e.args])
    if e.name == "wasm":
        return shlex.join(["wasm", e.module, *e.args])
    if e.name == "python":
        program = [e.main] if e.main is not None else ["-c", _clip(e.code or "", 40)]
        return shlex.join(["python", *program, *e.args])
    return e.name


def state_text(state: str) -> str:
    style = _STATE_STYLE.get(state)
    return f"[{style}]{state}[/]" if style else state


def status_line(job_id: str, state: str, reason: str, width: int = 200) -> Text:
    """The live line shown while waiting, cut to ``width`` so it never wraps (it would flicker)."""
    from rich.markup import escape
    from rich.text import Text

    tail = f" · {escape(' '.join(reason.split()))}" if reason else ""
    line = Text.from_markup(f"[bold]{short_id(job_id)}[/] {state_text(state)}{tail}")
    line.truncate(width, overflow="ellipsis")
    return line


def jobs_table(jobs: list[Job], now: float) -> Table:
    from rich.markup import escape

    table = _table("ID", "ENGINE", "STATE", "REASON", "AGE")
    for job in jobs:
        table.add_row(
            short_id(job.id),
            escape(_clip(engine_summary(job.spec), 40)),
            state_text(job.state),
            escape(job.reason),
            fmt_age(now - job.created_at),
        )
    return table


def describe_view(desc: JobDescription, now: float) -> RenderableType:
    from rich.console import Group
    from rich.markup import escape

    job, spec = desc.job, desc.job.spec
    info = _grid()
    info.add_row("Job", job.id)
    info.add_row("State", state_text(job.state))
    if job.reason:
        info.add_row("Reason", escape(job.reason))
    info.add_row("Engine", escape(engine_summary(spec)))
    info.add_row("Resources", fmt_resources(spec.resources))
    d = spec.deal
    info.add_row("Deal", f"concurrency {d.concurrency}, confidence {d.confidence}, min bids {d.min_bids}")
    info.add_row("Submitted", f"{fmt_age(now - job.created_at)} ago")
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
                escape(ex.error or ex.reason),
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
    return Group(*parts)


def nodes_table(nodes: NodeList) -> Table:
    from jobs import format_bytes

    table = _table("NODE", "ENGINES", "CPU FREE/TOTAL", "MEMORY FREE/TOTAL", "DISK FREE/TOTAL", "RUNNING", "BACKLOG",
                   "RESULTS OK/REJECTED")
    for n in nodes.nodes:
        rep = nodes.reputation.get(n.peer_id)
        verified = "—" if rep is None else f"{rep.accepted}/{rep.rejected}"
        if rep is not None and rep.quarantined:
            verified += " QUARANTINED"
        table.add_row(
            short_peer(n.peer_id),
            ", ".join(n.engines),
            f"{n.free.cpu:g} / {n.total.cpu:g}",
            f"{format_bytes(n.free.memory)} / {format_bytes(n.total.memory)}",
            f"{format_bytes(n.free.disk)} / {format_bytes(n.total.disk)}",
            str(n.running),
            str(n.backlog),
            verified,
        )
    return table


def node_view(status: NodeStatus) -> Table:
    grid = _grid()
    grid.add_row("Peer ID", status.peer_id)
    grid.add_row("Addresses", "\n".join(status.addrs) or "—")
    grid.add_row("Roles", ", ".join(status.roles) or "—")
    grid.add_row("Engines", ", ".join(status.engines) or "—")
    grid.add_row("Capacity", fmt_resources(status.capacity.total))
    grid.add_row("Free", fmt_resources(status.capacity.free))
    grid.add_row("Max per job", fmt_resources(status.capacity.max_per_job))
    grid.add_row("Running", str(status.running))
    grid.add_row("Backlog", str(status.backlog))
    grid.add_row("Version", status.version)
    return grid


def event_line(event: Event, start: float) -> str:
    """Plain text, one line per event: ``+12ms  Bid  node 12D3KooW…  message``."""
    node = f"node {short_peer(event.node_id)}" if event.node_id else ""
    fields = [f"+{fmt_duration(event.at - start):>7}", f"{event.kind:<16}", node, " ".join(event.message.split())]
    return "  ".join(f for f in fields if f).rstrip()


def _table(*columns: str, title: str | None = None) -> Table:
    from rich import box
    from rich.table import Table

    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False)
    table.title, table.title_justify, table.title_style = title, "left", "bold"
    for name in columns:
        table.add_column(name, no_wrap=name in ("ID", "NODE", "STATE", "AGE"), overflow="fold")
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

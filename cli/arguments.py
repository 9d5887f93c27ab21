"""Arguments and options that several commands share, declared once (typer reads them from the
commands' annotations)."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

JobStateName = Literal["pending", "running", "completed", "failed", "cancelled"]  # jobs.JobState values

Json = Annotated[bool, typer.Option("--json", help="Print JSON only (the same as --output json).")]
OutputFormat = Literal["json", "yaml", "table"]
Output = Annotated[OutputFormat | None, typer.Option("--output", "-o", metavar="FORMAT",
    help="json or yaml (the data --json prints), or table (the default: the view for people).")]
JobId = Annotated[str, typer.Argument(metavar="ID", help="Job id (or a unique prefix of one of your newest 1,000).")]
AnyId = Annotated[str, typer.Argument(metavar="ID", help=(
    "Job id, or sweep id (s-…), or a unique prefix of one of your newest 1,000 (a job shared with you: its full id)."))]
SweepId = Annotated[str, typer.Argument(metavar="ID", help=(
    "Sweep id (or a unique prefix of one of your newest 1,000)."))]
Index = Annotated[int, typer.Argument(metavar="INDEX", min=0, help="Index of the sweep (0, 1, …).")]
MaxBytes = Annotated[str | None, typer.Option("--max-bytes", metavar="SIZE",
    help="Refuse a download larger than this, e.g. 10GiB (default: twice the recorded result sizes + 64 MiB).")]

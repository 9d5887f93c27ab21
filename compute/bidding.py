"""Should this node bid on a job? A chain of small checks, each returning a reason when it says no.

Semantic checks ("could it ever run here?") decide to pass over a job for good; the capacity
check ("is there room now?") is the capacity tracker's, and a "not now" sends the job to the
backlog instead.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from jobs import JobSpec, Resources

Check = Callable[[JobSpec], str | None]


def engine_installed(engines: Sequence[str]) -> Check:
    def check(spec: JobSpec) -> str | None:
        if spec.engine.name not in engines:
            return f"engine {spec.engine.name!r} not available here (have: {', '.join(engines) or 'none'})"
        return None

    return check


def within_job_limits(max_per_job: Resources) -> Check:
    def check(spec: JobSpec) -> str | None:
        over = spec.resources.shortfall(max_per_job)
        return f"needs more than this node offers per job: {', '.join(over)}" if over else None

    return check


def inputs_fetchable(problems: Callable[[JobSpec], list[str]]) -> Check:
    def check(spec: JobSpec) -> str | None:
        found = problems(spec)
        return f"cannot fetch its inputs: {'; '.join(found)}" if found else None

    return check


def first_refusal(checks: Sequence[Check], spec: JobSpec) -> str | None:
    """The reason of the first check that says no, or None when every check passes."""
    for check in checks:
        reason = check(spec)
        if reason is not None:
            return reason
    return None

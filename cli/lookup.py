"""Jobs and sweeps found by the ids a user types: a full id or the unique prefix ``shoal list``
shows; a sweep's id starts with ``s-``."""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from cli.errors import EXIT_USAGE, CLIError

if TYPE_CHECKING:
    from collections.abc import Callable

    from jobs.views import JobDescription, SweepDescription
    from shoal import Client

T = TypeVar("T")


def is_sweep(some_id: str) -> bool:
    return some_id.startswith("s-")


def refuse_sweep(some_id: str, instead: str) -> None:
    """A usage error for a job-only command given a sweep's id; ``instead`` says what to use."""
    if is_sweep(some_id):
        raise CLIError(f"{some_id} is a sweep: its indexes have their own {instead}", code=EXIT_USAGE)


def job_id(client: Client, prefix: str) -> str:
    """A full job id for ``prefix``, which may be the short prefix ``shoal list`` shows."""
    return find_job(client, prefix).job.id


def find_job(client: Client, job_id: str) -> JobDescription:
    """The job by its full id or a unique prefix of it (among the client's newest 1000)."""
    return _by_prefix("job", job_id, client.describe, lambda: [j.id for j in client.list(limit=1000).jobs])


def find_sweep(client: Client, sweep_id: str) -> SweepDescription:
    """Like ``find_job``: the sweep, found by its full id or a unique prefix of it."""
    if sweep_id.startswith("j-"):
        raise CLIError(f"{sweep_id} is a job, not a sweep (shoal describe {sweep_id})", code=EXIT_USAGE)
    return _by_prefix("sweep", sweep_id, client.describe_sweep,
                      lambda: [s.id for s in client.list_sweeps(limit=1000).sweeps])


def _by_prefix(what: str, given: str, describe: Callable[[str], T], newest: Callable[[], list[str]]) -> T:
    """``describe(given)``; failing that, the one of our newest ids that starts with ``given``."""
    from shoal import NotFound, ShoalAPIError

    if given in ("", ".", ".."):  # no id (and a prefix of every one): the SDK refuses them as paths
        raise CLIError(f"{what} id {given!r}: expected an id or a unique prefix of one", code=EXIT_USAGE)
    try:
        return describe(given)
    except NotFound:
        try:
            matches = [i for i in newest() if i.startswith(given)]  # our own: describe shows only ours anyway
        except ShoalAPIError:
            matches = []
        if len(matches) > 1:
            shown = ", ".join(matches[:5])
            raise CLIError(f"{what} id prefix {given!r} is ambiguous: {shown}", code=EXIT_USAGE) from None
        if not matches:
            raise
        return describe(matches[0])


def some_id(client: Client, job_or_sweep: str) -> str:
    """The full id of a job or (``s-…``) a sweep."""
    return find_sweep(client, job_or_sweep).sweep.id if is_sweep(job_or_sweep) else job_id(client, job_or_sweep)

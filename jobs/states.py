"""Job and execution states, their predicates, and the transition tables.

Everything that decides whether a state change is legal lives in this file. A state is asked
"are you terminal?"; nobody compares state strings elsewhere.
"""

from __future__ import annotations

from enum import StrEnum

from jobs.errors import InvalidTransition


class JobState(StrEnum):
    PENDING = "pending"  # announced, waiting for enough bids
    RUNNING = "running"  # at least one execution accepted
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_JOB


class ExecutionState(StrEnum):
    """One node's attempt at a job. Requester and compute node each keep their own view."""

    BIDDING = "bidding"  # the node offered to run it; capacity reserved; awaiting decision
    ACCEPTED = "accepted"  # the requester accepted the bid; the node runs it
    PROPOSED = "proposed"  # results proposed to the requester, awaiting its verdict
    COMPLETED = "completed"  # results accepted
    REJECTED = "rejected"  # bid rejected (another node got the slot)
    FAILED = "failed"  # the run could not finish (error, node lost, deadline)
    CANCELLED = "cancelled"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_EXECUTION

    @property
    def holds_slot(self) -> bool:
        """Counts towards the job's ``concurrency`` on the requester."""
        return self in (ExecutionState.ACCEPTED, ExecutionState.PROPOSED, ExecutionState.COMPLETED)


class ExecutionSide(StrEnum):
    """Whose view of an execution: the requester's record or the compute node's own work."""

    REQUESTER = "requester"
    COMPUTE = "compute"


_TERMINAL_JOB = frozenset({JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED})
_TERMINAL_EXECUTION = frozenset(
    {ExecutionState.COMPLETED, ExecutionState.REJECTED, ExecutionState.FAILED, ExecutionState.CANCELLED}
)

JOB_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    JobState.PENDING: frozenset({JobState.RUNNING, JobState.FAILED, JobState.CANCELLED, JobState.COMPLETED}),
    JobState.RUNNING: frozenset({JobState.PENDING, JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED}),
    JobState.COMPLETED: frozenset(),
    JobState.FAILED: frozenset(),
    JobState.CANCELLED: frozenset(),
}

_E = ExecutionState
EXECUTION_TRANSITIONS: dict[ExecutionState, frozenset[ExecutionState]] = {
    # BIDDING -> PROPOSED: a node restarted before its bid was decided reports that as an error outcome
    _E.BIDDING: frozenset({_E.ACCEPTED, _E.PROPOSED, _E.REJECTED, _E.FAILED, _E.CANCELLED}),
    # ACCEPTED -> COMPLETED: the requester accepts results in the same step they are proposed
    # when the job asks for no verification.
    _E.ACCEPTED: frozenset({_E.PROPOSED, _E.COMPLETED, _E.FAILED, _E.CANCELLED}),
    _E.PROPOSED: frozenset({_E.COMPLETED, _E.REJECTED, _E.FAILED, _E.CANCELLED}),
    _E.COMPLETED: frozenset(),
    _E.REJECTED: frozenset(),
    _E.FAILED: frozenset(),
    _E.CANCELLED: frozenset(),
}


# A sweep moves like a job, except that retrying its failed (or cancelled) indexes brings a failed (or
# cancelled) sweep back.
SWEEP_TRANSITIONS: dict[JobState, frozenset[JobState]] = {
    **JOB_TRANSITIONS,
    JobState.FAILED: frozenset({JobState.RUNNING}),
    JobState.CANCELLED: frozenset({JobState.RUNNING}),
}


def check_sweep_transition(old: JobState, new: JobState) -> None:
    if old != new and new not in SWEEP_TRANSITIONS[old]:
        raise InvalidTransition("sweep", old, new)


def check_job_transition(old: JobState, new: JobState) -> None:
    if old != new and new not in JOB_TRANSITIONS[old]:
        raise InvalidTransition("job", old, new)


def check_execution_transition(old: ExecutionState, new: ExecutionState) -> None:
    if old != new and new not in EXECUTION_TRANSITIONS[old]:
        raise InvalidTransition("execution", old, new)

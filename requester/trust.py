"""What the requester believes of what peers tell it: pure rules, no store, network or clock.

May this node bid, does an error end the job, which results are verified (k-of-n), whom a verdict
counts for or against, may a result be served from the cache. Each node's result reaches only the
requester, over a direct stream, so no node sees another's before proposing its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Iterable, Set
from dataclasses import dataclass
from typing import NamedTuple

from jobs import Execution, ExecutionState, JobSpec, RunResult

QUARANTINE_SECONDS = 24 * 3600.0  # a quarantine lasts this long after the node's last rejected result
RETRYABLE_ERRORS_PER_NODE = 2  # a node that reports this many "retry elsewhere" errors for a job is done with it
# pieces of verified work (a job's slot, a sweep's index) a node on probation holds at once on a requester, till
# their verdicts: a liar let out of quarantine lies on one before it is caught again, not on all it can bid on
PROBATION_WORK = 1
CONFIRMING_NODES = 2  # fewest distinct nodes whose errors confirm one another (a job's or a sweep index's)
# how the requester's own clock fails a run that kept its node "running" past the job's result deadline
NO_RESULT_IN_TIME = "no result within"


def bid_refusal(executions: Iterable[Execution], peer: str, attempt: int) -> str | None:
    """Why ``peer`` may not bid on this attempt of a job, or None: one execution per node per attempt (so
    bids with fresh execution ids write nothing), N different nodes for ``concurrency`` N, and none from a
    node done with the job (``nodes_left``)."""
    retryable_errors = 0
    for x in executions:
        if x.node_id != peer:
            continue
        if x.state.holds_slot or not x.state.is_terminal:
            return "this node already runs or ran the job"
        if x.attempt == attempt:
            return "this node already bid on this attempt"
        if x.state is ExecutionState.FAILED and x.error is not None:
            if not x.retryable:
                return "this node reported an error for the job"
            retryable_errors += 1
    if retryable_errors >= RETRYABLE_ERRORS_PER_NODE:
        return f"this node failed the job {retryable_errors} times"
    return None


def nodes_left(executions: Iterable[Execution], able: Set[str]) -> set[str]:
    """The nodes of ``able`` not done with the job: done once it reported an error, or failed it retryably
    ``RETRYABLE_ERRORS_PER_NODE`` times (a node still running it is not done)."""
    executions = list(executions)
    return {node for node in able if not _done_with(executions, node)}


def _done_with(executions: list[Execution], node: str) -> bool:
    failed = [x for x in executions if x.node_id == node and x.state is ExecutionState.FAILED and x.error is not None]
    return any(not x.retryable for x in failed) or len(failed) >= RETRYABLE_ERRORS_PER_NODE


def sitters(executions: Iterable[Execution]) -> set[str]:
    """The nodes that held the job past its result deadline, saying they ran it: a peer that bids, says
    "running" and never answers held each job it won two deadlines, winning it again after the first."""
    return {x.node_id for x in executions
            if x.state is ExecutionState.FAILED and (x.error or "").startswith(NO_RESULT_IN_TIME)}


def error_reporters(executions: Iterable[Execution]) -> set[str]:
    """Nodes that reported, in a signed result, that the job cannot run (not "retry elsewhere")."""
    return {x.node_id for x in executions if x.state is ExecutionState.FAILED and x.error is not None
            and not x.retryable}


def proven_wrong(executions: Iterable[Execution], spec: JobSpec) -> set[str]:
    """Nodes whose errors a job completed with a ``corroborated`` result proves wrong: those that said it
    cannot run, when its spec is judged exactly (``JobSpec.judged_exactly``) and the error is not the node's
    own (``JobSpec.speaks_of_the_node``: its speed, when its disk watch looked). On other specs an error may
    be the node's world, not a lie (a URL that refused one node), and a client could frame honest nodes."""
    if not spec.judged_exactly():
        return set()
    return error_reporters(x for x in executions if not spec.speaks_of_the_node(x.error))


def error_confirmed(reporters: Set[str], able: Set[str], confidence: int, *, everyone: bool = True) -> bool:
    """Whether a job's error is believed: reported by ``confidence`` nodes (at least two), or by every
    known node able to run it when ``everyone`` able is known. One node's word fails nothing while another
    could try."""
    return len(reporters) >= max(confidence, CONFIRMING_NODES) or (everyone and not (able - reporters))


def timeout_witnessed(error: str | None, spec: JobSpec, accepted_at: float, now: float, confidence: int) -> bool:
    """Whether a node's error is its run's timeout, borne out by the requester's own clock (the report came
    no sooner than the timeout after the node took the job): a liar saying so held the job no longer than
    silence would have, so no second node need confirm it. Not for ``confidence`` 2 or more, where any
    error is one node's word against others' results."""
    return confidence < 2 and error == spec.timed_out() and now - accepted_at >= spec.timeout


def agreeing_nodes(executions: Iterable[Execution], result: RunResult) -> set[str]:
    """Distinct nodes whose accepted result has the same digest as ``result``."""
    digest = result.digest()
    return {x.node_id for x in executions
            if x.state is ExecutionState.COMPLETED and x.result is not None and x.result.digest() == digest}


def corroborated(agreeing: Set[str], own_node: str, *, pinned: bool) -> bool:
    """Whether a result is more than one peer's word: two distinct nodes agreed on its digest (not nodes the
    submitter ``pinned`` with a selector: they may be its own), or this requester's own compute role produced
    it. Only such a result is served to other clients from the cache, or shows other nodes' errors wrong."""
    return own_node in agreeing or (len(agreeing) >= 2 and not pinned)


def credited(agreeing: Collection[str], spec: JobSpec, *, outvoted: Collection[str] = ()) -> bool:
    """Whether a verdict counts for the nodes that agreed and against those it ``outvoted``: only when two or
    more agreed, on nodes the requester chose (not a ``selector``'s: they may be the submitter's own, earning
    credit to outweigh their lies). On a job not ``judged_exactly`` (a container, a URL input, python), only a
    verdict that outvoted no one: honest nodes may differ on it, so a client could frame them."""
    return len(agreeing) >= 2 and not spec.selector and (spec.judged_exactly() or not outvoted)


class Standing(NamedTuple):
    """What a node's results earned it on this requester."""

    accepted: int = 0
    rejected: int = 0
    rejected_at: float = 0.0  # when the last rejection was counted


def quarantined(standing: Standing, after: int, now: float, *, verified: bool = False) -> bool:
    """Whether a node's bids and claims are refused, for work whose results are ``verified`` (confidence 2 or
    more) or not: at least ``after`` of its results rejected, and more than one for every ten accepted. For
    ``QUARANTINE_SECONDS`` after its last rejection, all work; then, on probation, it takes verified work only,
    where a lie is refused and counted, until its agreeing results outweigh its rejections (a node framed
    once is not lost for good)."""
    over = standing.rejected >= after and standing.rejected > standing.accepted // 10
    return over and (not verified or now - standing.rejected_at < QUARANTINE_SECONDS)


def on_probation(standing: Standing, after: int, now: float) -> bool:
    """Whether a node takes verified work only (``quarantined``), ``PROBATION_WORK`` pieces at a time."""
    return quarantined(standing, after, now) and not quarantined(standing, after, now, verified=True)


@dataclass(frozen=True)
class Verdict:
    verified: bool
    accepted: tuple[str, ...]  # execution ids whose results match the chosen group
    rejected: tuple[str, ...]  # the dissenters (empty when nothing could be verified)
    digest: str | None
    reason: str


def verify(proposals: dict[str, str], confidence: int) -> Verdict:
    """Accept the largest group of equal digests when it has at least ``confidence`` members and
    no other group is as large; otherwise nothing is verified and no node is blamed."""
    counts = Counter(proposals.values())
    seen = ", ".join(f"{_short(d)} x{n}" for d, n in counts.most_common())
    if not counts:
        return Verdict(False, (), (), None, "could not verify: no results")
    (best, n), *rest = counts.most_common()
    if n < max(confidence, 1):
        return Verdict(False, (), (), None,
                       f"could not verify: no result shared by {confidence} nodes ({seen})")
    if rest and rest[0][1] == n:
        return Verdict(False, (), (), None, f"could not verify: a tie between results ({seen})")
    accepted = tuple(eid for eid, d in proposals.items() if d == best)
    rejected = tuple(eid for eid, d in proposals.items() if d != best)
    return Verdict(True, accepted, rejected, best, f"verified by {n} of {len(proposals)} nodes")


def _short(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]

"""What a sweep's requester takes from a compute node: decisions with no network, store or clock.

A claim is a lease on the indexes granted to one node, and its reports count only inside it: a result for
an index the claim does not hold (never granted, granted to another claim, taken back when the lease
lapsed), or a message naming another node's claim, is refused. An error is one node's word: the index runs
again elsewhere and fails only when as many nodes as a job's error needs (two, or the sweep's confidence;
or every node able to run it) agree; an error another node's run contradicts counts against its sender.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Set
from dataclasses import dataclass, field

from jobs import JobSpec
from jobs.messages import Claim, IndexResult
from jobs.sweep import compress
from requester import trust

ERROR_PATIENCE = 60.0  # seconds an index waits after an error for another node, before its node may run it again
REASON_RANGES = 10  # index ranges named in a refusal's reason; the rest are counted


@dataclass(frozen=True)
class ClaimView:
    """What the requester knows of the claim id a message names."""

    holder: str | None = None  # the node it belongs to; None: a claim id not seen before
    held: Set[int] = frozenset()  # indexes granted to it and not reported yet
    reported: Set[int] = frozenset()  # indexes it reported before (a re-sent batch repeats them)
    expired: bool = False  # its lease lapsed and its indexes were taken back
    # the requester restarted since it last heard the claim, so a refusal is no evidence: the node may re-send a
    # batch we wrote but could not answer, or report a lease that lapsed before the restart
    forgiven: bool = False


@dataclass(frozen=True)
class ClaimCheck:
    results: list[IndexResult] = field(default_factory=list)  # to record, in message order
    released: list[int] = field(default_factory=list)  # held indexes given back unrun
    refused: list[int] = field(default_factory=list)  # results and releases for indexes the claim does not hold
    repeated: int = 0  # results this claim already reported: a batch re-sent after a lost reply, ignored
    whole: str = ""  # the whole message is refused, and why
    against_sender: bool = False  # the message is evidence of a lying (or broken) node

    def reason(self) -> str:
        """For ``Reply.reason``: which indexes were refused, bounded whatever the message held."""
        if self.whole:
            return self.whole
        if not self.refused:
            return ""
        runs = compress(sorted(set(self.refused)))
        named = listed(runs, REASON_RANGES)
        more = f" and {len(runs) - REASON_RANGES} more ranges" if len(runs) > REASON_RANGES else ""
        return f"refused {len(self.refused)} results or releases for indexes not granted to this claim: {named}{more}"


def listed(runs: list[tuple[int, int]], most: int) -> str:
    """Index runs (``compress``'s) as reasons and events name them: ``0-3, 7``, the first ``most`` only."""
    return ", ".join(f"{a}-{b - 1}" if b - a > 1 else str(a) for a, b in runs[:most])


def check_claim(sender: str, msg: Claim, view: ClaimView) -> ClaimCheck:
    """Split a claim message into what counts and what is refused (signature already checked)."""
    if view.holder is not None and view.holder != sender:
        return ClaimCheck(refused=[r.index for r in msg.results] + list(msg.released),
                          whole=f"claim {msg.claim_id} belongs to another node", against_sender=True)
    if view.expired:
        # an honest node cut off for longer than the lease sends exactly this: refused, not held against it
        return ClaimCheck(refused=[r.index for r in msg.results],
                          whole="the claim's lease lapsed; its indexes were granted again")
    held = set(view.held)
    results, refused, repeated = [], [], 0
    for r in msg.results:
        if r.index in held:
            held.discard(r.index)
            results.append(r)
        elif r.index in view.reported:
            repeated += 1
        else:
            refused.append(r.index)
    released = []
    for i in msg.released:
        if i in held:
            held.discard(i)
            released.append(i)
        else:
            refused.append(i)
    return ClaimCheck(results=results, released=released, refused=refused, repeated=repeated,
                      against_sender=bool(refused) and not view.forgiven)


TIMED_OUT, CANNOT_RUN = "timed out", "cannot run"  # what is kept of a node's error for an index (``report``)


def report(error: str, retryable: bool, spec: JobSpec) -> str | None:
    """What is kept of a node's error for an index until it ends: None for a retryable one (it speaks of the
    node, not the index), TIMED_OUT for the run's timeout or another error of the node's own
    (``JobSpec.speaks_of_the_node``), else CANNOT_RUN. Never its text: a node may send 100,000 of a megabyte
    each."""
    if retryable:
        return None
    return TIMED_OUT if spec.speaks_of_the_node(error) else CANNOT_RUN


def error_confirmed(reports: Mapping[str, str | None], able: Collection[str], confidence: int) -> bool:
    """Whether an index's errors (node -> its ``report``; None never confirms) fail it for good: the job's rule
    (``trust.error_confirmed``), but with no able node known one node's error does not confirm."""
    firm = {node for node, error in reports.items() if error is not None}
    return trust.error_confirmed(firm, set(able), confidence, everyone=bool(able))


def may_grant(node: str, reports: Collection[str], able: Collection[str], waited: float, *, lost: int = 0,
              others_claiming: bool = False) -> bool:
    """An index that errored on a node goes to another one, unless every able node has tried it or none took
    it within ERROR_PATIENCE, doubled for each further run of it the node ``lost`` (an able node that never
    claims must not hold it forever). A node that lost it RETRYABLE_ERRORS_PER_NODE times waits for good while
    ``others_claiming`` (able nodes running indexes of the sweep that have not tried this one): as a job's node
    is done with it then, so that one node losing every index at once cannot spend their attempts while the
    others are busy."""
    if node not in reports or set(able) <= set(reports):
        return True
    if lost >= trust.RETRYABLE_ERRORS_PER_NODE and others_claiming:
        return False
    return waited >= ERROR_PATIENCE * 2 ** max(0, lost - 1)


def contradicted(reports: Mapping[str, str | None], runner: str, spec: JobSpec) -> list[str]:
    """The nodes whose errors for an index ``runner`` showed wrong by running it to a result, by the job's rule
    (``trust.proven_wrong``): those that said it cannot run, when the template is judged exactly."""
    if not spec.judged_exactly():
        return []
    return sorted(n for n, kept in reports.items() if n != runner and kept == CANNOT_RUN)

"""Which nodes may run a job, which to ask, and why a job is still waiting (pure functions, and the
queue order the reason reads)."""

from __future__ import annotations

import bisect
import random
from collections import Counter
from collections.abc import Callable, Collection, Iterable

from jobs import JobSpec, Resources
from jobs.messages import NodeInfo
from jobs.selector import format_labels, matches
from jobs.spec import RESOURCE_DIMS

SHOWN_LABEL_SETS = 5  # distinct label sets a "no node matches" reason lists ...
SHOWN_LABELS_CHARS = 120  # ... each cut to this length (labels come from peers)


def can_ever_run(spec: JobSpec, node: NodeInfo) -> bool:
    """Room now or later (``JobSpec.refusal_by``, the rule the node bids by)."""
    return spec.refusal_by(node) is None


def never_runnable(spec: JobSpec, nodes: Iterable[NodeInfo]) -> str | None:
    """Why no known node could ever run the job, or None if one could (or no node is known yet)."""
    nodes = list(nodes)
    if not nodes:
        return None
    selected = [n for n in nodes if matches(spec.selector, n.labels)]
    if not selected:
        return f"no known node matches selector {spec.selector!r} ({_label_sets(nodes)})"
    which = f" matching selector {spec.selector!r}" if len(selected) < len(nodes) else ""
    with_engine = [n for n in selected if spec.engine.executor in n.engines]
    if not with_engine:
        return f"no compute node{which} offers engine {spec.engine.executor!r} (0 of {len(selected)} nodes)"
    if spec.engine.needs_network and not (with_engine := [n for n in with_engine if n.network]):
        return (f"the job asks for network and no compute node{which} gives jobs network access (0 of "
                f"{len(selected)} nodes; an operator allows it with shoal serve --allow-network)")
    if spec.resources.gpu and not any(n.max_per_job.gpu for n in with_engine):
        return (f"the job asks for {spec.resources.gpu} GPU and no compute node{which} offering engine "
                f"{spec.engine.executor!r} has one (0 of {len(selected)} nodes)")
    big_enough = [n for n in with_engine if spec.resources.fits_in(n.max_per_job)]
    if not big_enough:
        short = sorted({s for n in with_engine for s in spec.resources.shortfall(n.max_per_job)})
        most = Resources(**{dim: max(getattr(n.max_per_job, dim) for n in with_engine) for dim in RESOURCE_DIMS})
        offered = most.amounts(spec.resources.short_of(most))
        return (f"0 of {len(selected)} nodes{which} can offer {', '.join(short)} per job"
                + (f" (the most one offers: {', '.join(offered)})" if offered else ""))
    # fewer able nodes than `concurrency` is no proof: we may not know every node yet
    return None


def _label_sets(nodes: list[NodeInfo]) -> str:
    """``3 nodes known: zone=eu (2); spot=true,zone=us``: a few label sets, the commonest first (then by text,
    so the message does not change with the order nodes were heard in), each cut short."""
    counts = Counter(format_labels(n.labels) or "no labels" for n in nodes)
    commonest = sorted(counts.items(), key=lambda item: (-item[1], item[0]))[:SHOWN_LABEL_SETS]
    shown = [(labels if len(labels) <= SHOWN_LABELS_CHARS else labels[:SHOWN_LABELS_CHARS] + "…")
             + (f" ({count})" if count > 1 else "") for labels, count in commonest]
    more = f"; {len(counts) - SHOWN_LABEL_SETS} more" if len(counts) > SHOWN_LABEL_SETS else ""
    return f"{len(nodes)} node{'s' if len(nodes) != 1 else ''} known: {'; '.join(shown)}{more}"


def waiting_reason(spec: JobSpec, nodes: Iterable[NodeInfo], accepted: int, ahead: int | None = None,
                   barred: Collection[str] = ()) -> str:
    """A human explanation for a job short of nodes: 'queued: 412 jobs ahead, 0 of 3 nodes free' when the
    nodes that could run it are busy (``ahead``: the requester's jobs that have waited longer, if known),
    else e.g. 'waiting for bids: 1 of 3 nodes accepted ...'. A ``barred`` node (quarantined, or done with
    the job) is not counted as able to run it."""
    nodes = list(nodes)
    need = spec.deal.concurrency
    able = [n for n in nodes if can_ever_run(spec, n) and n.peer_id not in barred]
    free_now = [n for n in able if spec.resources.fits_in(n.free)]
    if not nodes:
        return f"waiting for bids: {accepted} of {need} nodes accepted; no compute node known yet"
    refused = sum(1 for n in nodes if n.peer_id in barred and can_ever_run(spec, n))
    if (able or refused) and len(able) < need:  # every able node may run it already: only a node yet to join can
        more = f" ({refused} more quarantined or done with it)" if refused else ""
        return (f"waiting for more nodes: it needs {need} and {len(able)} of {len(nodes)} known nodes can run it"
                f"{more}; {accepted} of {need} accepted (another node must join)")
    if able and len(free_now) < need - accepted:
        jobs_ahead = "" if ahead is None else f"{ahead} job{'' if ahead == 1 else 's'} ahead, "
        return (f"queued: {jobs_ahead}{len(free_now)} of {len(able)} nodes free"
                + (f"; {accepted} of {need} nodes accepted" if accepted else "")
                + (f" ({len(able)} of {len(nodes)} known nodes can run it)" if len(able) < len(nodes) else ""))
    return (f"waiting for bids: {accepted} of {need} nodes accepted; {len(able)} of {len(nodes)} known nodes "
            f"can run it, {len(free_now)} have room now")


class Queue:
    """Where each job short of nodes stands: how many of the requester's jobs have waited longer. The order
    is rebuilt at most once every ``every`` seconds, when asked: one sort per poll interval, not per job shown."""

    def __init__(self, waiting: Callable[[], Iterable[float]], every: float = 0.25) -> None:
        self._waiting = waiting  # when each job short of nodes started waiting
        self._every = every
        self._since: list[float] = []  # waiting_since of the open jobs, sorted
        self._at: float | None = None

    def ahead(self, waiting_since: float, now: float) -> int:
        if self._at is None or not 0 <= now - self._at < self._every:
            self._since = sorted(self._waiting())
            self._at = now
        return bisect.bisect_left(self._since, waiting_since)


def candidates(spec: JobSpec, nodes: Iterable[NodeInfo], needed: int, rng: random.Random | None = None,
               *, spare: int = 1, ask_all_up_to: int = 16) -> list[str]:
    """Nodes to offer a job to directly, before (or instead of) gossip; empty: gossip to everyone.

    - More than twice ``needed + spare`` have room now (by their last node info): that many of them at
      random; the spare covers one being full by now (20 nodes, concurrency 3: spare 3 → 1 took 31.7 → 34.1
      jobs/s). With less room, the nodes asked are often full by now (3 nodes: 42 → 34 jobs/s).
    - Otherwise, when ``needed`` to ``ask_all_up_to`` known nodes could ever run it: all of them, full or
      not (a full node keeps the offer in its backlog; a few direct messages cost less than gossip).
    - Otherwise nobody: gossip (fewer able nodes than needed may mean some are not known yet).
    """
    wanted = needed + spare
    able = [n for n in nodes if can_ever_run(spec, n)]
    room = [n.peer_id for n in able if spec.resources.fits_in(n.free)]
    if len(room) > 2 * wanted:
        return (rng or random).sample(room, wanted)
    if needed <= len(able) <= ask_all_up_to:
        return [n.peer_id for n in able]
    return []

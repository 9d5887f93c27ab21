"""k-of-n result verification (pure): which proposed results to accept, which to reject.

Each node's result reaches only the requester, over a direct stream, so no node can see
another's before proposing its own; the digest is the results' CID (or a hash of the outcome).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass


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

"""What the compute role needs from the node's store; ``node.store.Store`` provides it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from jobs import Event, Execution, ExecutionSide


class ComputeStore(Protocol):
    async def save(self, *, side: ExecutionSide, new_executions: Sequence[Execution] = (),
                   executions: Sequence[Execution] = (), events: Sequence[Event] = ()) -> None:
        """Write it all in one transaction; an update whose stored revision moved raises ``StaleState``."""
        ...

    async def live_executions(self, side: ExecutionSide) -> list[Execution]:
        """Executions not in a terminal state: what a restarted node must report or re-deliver."""
        ...

    async def add_published(self, cids: Sequence[str], at: float) -> None:
        """Remember results published outside an execution record (sweep indexes), for retention."""
        ...

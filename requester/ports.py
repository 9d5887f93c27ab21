"""The store the requester role needs, as a Protocol: ``node.store.Store`` implements it.

The requester imports nothing from ``node``; the daemon hands it a store with these methods.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from jobs import Event, Execution, ExecutionSide, Job, JobState, RunResult
from jobs.sweep import IndexRecord, Sweep


class RequesterStore(Protocol):
    # -- jobs ----------------------------------------------------------------------------------
    async def save(self, *, side: ExecutionSide = ..., new_job: Job | None = None, job: Job | None = None,
                   new_executions: Sequence[Execution] = (), executions: Sequence[Execution] = (),
                   events: Sequence[Event] = (), idempotency_key: str | None = None, request_digest: str = "",
                   cache: tuple[str, str, RunResult, bool] | None = None,
                   reputation: dict[str, tuple[int, int]] | None = None,
                   secrets: dict[str, str] | None = None) -> None:
        """Write all of it in one transaction (revision-guarded updates), or raise."""
        ...

    async def get_job(self, job_id: str) -> Job | None: ...

    async def find_idempotent(self, owner: str, key: str) -> tuple[Job, str] | None: ...

    async def live_jobs(self) -> list[Job]: ...

    async def live_secrets(self) -> dict[str, dict[str, str] | None]: ...

    async def executions_of(self, side: ExecutionSide, job_id: str) -> list[Execution]: ...

    async def cached_result(self, key: str, owner: str) -> tuple[str, RunResult, bool] | None: ...

    async def reputations(self) -> dict[str, tuple[int, int]]: ...

    async def events(self, job_id: str, *, after: int = 0, limit: int = 1000,
                     side: ExecutionSide = ...) -> list[Event]: ...

    # -- sweeps --------------------------------------------------------------------------------
    async def save_sweep(self, *, new_sweep: Sweep | None = None, sweep: Sweep | None = None,
                         indexes: Sequence[IndexRecord] = (), events: Sequence[Event] = (),
                         idempotency_key: str | None = None, request_digest: str = "",
                         end_unfinished: tuple[JobState, str] | None = None) -> None: ...

    async def get_sweep(self, sweep_id: str) -> Sweep | None: ...

    async def find_idempotent_sweep(self, owner: str, key: str) -> tuple[Sweep, str] | None: ...

    async def live_sweeps(self) -> list[Sweep]: ...

    async def index_states(self, sweep_id: str) -> list[tuple[int, JobState, str, int, str | None]]: ...

"""Fault injection for tests and ``shoal serve --bad-actor``: an executor that lies about results."""

from __future__ import annotations

import secrets

from executors.base import Executor, RunRequest
from jobs import RunResult


class BadActor(Executor):
    """Runs the real executor, then reports a wrong result (a different one every time)."""

    def __init__(self, inner: Executor) -> None:
        self.inner = inner
        self.name = inner.name
        self.start_allowance = inner.start_allowance

    def is_installed(self) -> bool:
        return self.inner.is_installed()

    async def run(self, request: RunRequest) -> RunResult:
        result = await self.inner.run(request)
        return result.model_copy(update={"stdout": result.stdout + f"forged {secrets.token_hex(8)}\n", "cid": None})

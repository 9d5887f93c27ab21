"""The noop executor: completes at once with an empty result.

Devstack ``--noop`` maps every engine to it so benchmarks measure transport and scheduling
alone. Hooks let tests inject delays, failures and wrong results.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import trio

from executors.base import Executor, ExecutorError, RunRequest
from jobs import RunResult


@dataclass
class NoopHooks:
    delay: float = 0.0  # seconds each run takes
    error: str | None = None  # raise ExecutorError with this message
    error_retryable: bool = True  # False: the error says the job cannot run anywhere
    exit_code: int = 0
    stdout: str = ""
    before_run: Callable[[RunRequest], Awaitable[None]] | None = None


class NoopExecutor(Executor):
    name = "noop"
    needs_workspace = False  # it reads and writes nothing: spare two thread hops per job

    def __init__(self, hooks: NoopHooks | None = None, *, clock: Callable[[], float] = time.time) -> None:
        self.hooks = hooks or NoopHooks()
        self.clock = clock  # the result's started_at and finished_at

    def is_installed(self) -> bool:
        return True

    async def run(self, request: RunRequest) -> RunResult:
        started = self.clock()
        if self.hooks.before_run is not None:
            await self.hooks.before_run(request)
        delay = self.hooks.delay + getattr(request.spec.engine, "delay", 0.0)  # --noop maps other engines here
        if delay:
            await trio.sleep(delay)
        if self.hooks.error is not None:
            raise ExecutorError(self.hooks.error, retryable=self.hooks.error_retryable)
        return RunResult(
            exit_code=self.hooks.exit_code, stdout=self.hooks.stdout, started_at=started, finished_at=self.clock()
        )

"""The python engine's warm pool: it starts interpreters when no job runs (nor ran just now), so that a start
does not slow a job down."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from executors import pyodide
from executors.pyodide import REFILL_DEFER_SECONDS, REFILL_SETTLE_SECONDS, PyodideExecutor


class FakeRunner:
    """Stands for a loaded interpreter: alive until closed."""

    alive = True

    async def aclose(self) -> None:
        self.alive = False


@pytest.fixture
def executor(monkeypatch: pytest.MonkeyPatch) -> tuple[PyodideExecutor, list[float]]:
    executor = PyodideExecutor(Path("/nonexistent"), pool_size=2, unsandboxed=True)
    starts: list[float] = []

    async def start_runner() -> FakeRunner:
        await trio.sleep(1.0)  # loading takes a while
        starts.append(trio.current_time())
        return FakeRunner()

    monkeypatch.setattr(executor, "is_installed", lambda: True)
    monkeypatch.setattr(executor, "_start_runner", start_runner)
    monkeypatch.setattr(pyodide, "PARK_SECONDS", 1000.0)
    return executor, starts


async def test_a_taken_interpreter_is_replaced_once_the_running_job_ends(
        executor: tuple[PyodideExecutor, list[float]], autojump_clock: trio.testing.MockClock) -> None:
    pool, starts = executor
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run_pool)
        assert len(starts) == 2 and pool.statistics().idle == 2  # filled at once, nothing to wait for
        with pool._job_running():
            assert pool._take_warm() is not None
            pool._refill.set()
            taken = trio.current_time()
            await trio.sleep(REFILL_DEFER_SECONDS / 4)  # the job runs: the other interpreter waits idle
            assert len(starts) == 2
        await trio.sleep(REFILL_SETTLE_SECONDS + 1.5)  # and the node publishes its result
        assert len(starts) == 3
        assert starts[2] == pytest.approx(taken + REFILL_DEFER_SECONDS / 4 + REFILL_SETTLE_SECONDS + 1.0, abs=0.1)
        nursery.cancel_scope.cancel()


async def test_jobs_that_keep_running_delay_a_refill_only_so_long(
        executor: tuple[PyodideExecutor, list[float]], autojump_clock: trio.testing.MockClock) -> None:
    pool, starts = executor
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run_pool)
        with pool._job_running():
            pool._take_warm()
            pool._refill.set()
            taken = trio.current_time()
            await trio.sleep(REFILL_DEFER_SECONDS + 2.0)
            assert len(starts) == 3 and starts[2] == pytest.approx(taken + REFILL_DEFER_SECONDS + 1.0, abs=0.1)
        nursery.cancel_scope.cancel()


async def test_an_empty_pool_refills_at_once_even_while_jobs_run(
        executor: tuple[PyodideExecutor, list[float]], autojump_clock: trio.testing.MockClock) -> None:
    pool, starts = executor
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run_pool)
        with pool._job_running():
            pool._take_warm()
            pool._take_warm()
            pool._refill.set()
            taken = trio.current_time()
            await trio.sleep(1.5)  # the next job would start cold: no reason to wait
            assert len(starts) == 3 and starts[2] == pytest.approx(taken + 1.0)
        nursery.cancel_scope.cancel()


async def test_a_refill_waits_no_longer_once_the_pool_runs_empty(
        executor: tuple[PyodideExecutor, list[float]], autojump_clock: trio.testing.MockClock) -> None:
    pool, starts = executor
    async with trio.open_nursery() as nursery:
        await nursery.start(pool.run_pool)
        with pool._job_running():
            pool._take_warm()
            pool._refill.set()
            await trio.sleep(0.5)  # deferred: one interpreter is still idle
            assert len(starts) == 2
            pool._take_warm()  # a second job took it
            emptied = trio.current_time()
            await trio.sleep(1.2)
            assert len(starts) == 3 and starts[2] == pytest.approx(emptied + 1.0, abs=0.1)
        nursery.cancel_scope.cancel()

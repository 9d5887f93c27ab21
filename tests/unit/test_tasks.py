"""The shared spawner and retry loop."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from jobs import Unreachable
from node.tasks import Spawner, backoff, retry


def test_backoff_doubles_up_to_its_cap_and_stops_at_the_attempts_or_the_deadline():
    assert list(backoff(0.1, attempts=5)) == [0.1, 0.2, 0.4, 0.8]
    assert list(backoff(1.0, cap=3.0, attempts=5)) == [1.0, 2.0, 3.0, 3.0]
    now = [10.0]
    assert list(backoff(1.0, give_up=13.5, clock=lambda: now[0])) != []
    assert list(backoff(5.0, give_up=13.5, clock=lambda: now[0])) == []


async def test_retry_returns_the_first_success_and_reraises_the_last_failure(autojump_clock):
    calls = []

    async def flaky() -> str:
        calls.append(trio.current_time())
        if len(calls) < 3:
            raise Unreachable("peer", "down")
        return "ok"

    assert await retry(flaky, backoff(0.5, attempts=5)) == "ok"
    assert len(calls) == 3 and calls[2] - calls[0] == pytest.approx(1.5)

    async def down() -> str:
        raise Unreachable("peer", "down")

    with pytest.raises(Unreachable):
        await retry(down, backoff(0.5, attempts=3))


async def test_retry_lets_other_errors_through_at_once():
    async def broken() -> None:
        raise ValueError("a bug, not a silent peer")

    with pytest.raises(ValueError):
        await retry(broken, [1.0, 1.0])


async def test_the_spawner_runs_at_most_its_limit_at_once():
    spawner, peak, running = Spawner("test", limit=2), [0], [0]

    async def work() -> None:
        running[0] += 1
        peak[0] = max(peak[0], running[0])
        await trio.sleep(0.01)
        running[0] -= 1

    with pytest.raises(RuntimeError):
        spawner.spawn(work)
    async with trio.open_nursery() as nursery:
        spawner.attach(nursery)
        for _ in range(6):
            spawner.spawn(work)
    assert peak[0] == 2


async def test_a_task_that_fails_is_logged_and_ends_alone(autojump_clock, caplog):
    """Most background tasks start from what a peer sent: one failing must not end the service's nursery."""
    spawner, finished = Spawner("test"), []

    async def broken() -> None:
        raise ValueError("a message no peer would take")

    async def honest() -> None:
        await trio.sleep(1)
        finished.append(True)

    async with trio.open_nursery() as nursery:
        spawner.attach(nursery)
        spawner.spawn(honest)
        spawner.spawn(broken)
    assert finished == [True]
    assert "background task test_a_task_that_fails_is_logged_and_ends_alone.<locals>.broken failed" in caplog.text
    assert "ValueError: a message no peer would take" in caplog.text

    async def cancelled() -> None:
        await trio.sleep_forever()

    with trio.move_on_after(1) as scope:  # cancellation still ends a task, and its nursery with it
        async with trio.open_nursery() as nursery:
            spawner.attach(nursery)
            spawner.spawn(cancelled)
    assert scope.cancelled_caught

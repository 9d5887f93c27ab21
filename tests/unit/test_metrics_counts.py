"""/metrics takes no signature, and counting jobs by state reads every job row: however many scrape it, the
store counts at most once per COUNTS_MAX_AGE (keyless scrapes in a loop made a member's describe take 3 s)."""

from __future__ import annotations

import trio

from node.api.metrics import COUNTS_MAX_AGE, JobCounts


class _Store:
    def __init__(self) -> None:
        self.counted = 0

    async def count_jobs_by_state(self) -> dict[str, int]:
        self.counted += 1
        await trio.sleep(0.2)  # a large store's count takes its time; scrapes arriving meanwhile wait for it
        return {"completed": self.counted}


async def test_a_crowd_of_scrapes_costs_one_count_per_interval(autojump_clock):
    store = _Store()
    counts = JobCounts(store)
    answers: list[dict[str, int]] = []

    async def scrape() -> None:
        answers.append(await counts.get())

    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(scrape)
    assert store.counted == 1 and answers == [{"completed": 1}] * 50
    await trio.sleep(COUNTS_MAX_AGE / 2)
    assert await counts.get() == {"completed": 1} and store.counted == 1
    await trio.sleep(COUNTS_MAX_AGE)  # old enough: counted afresh
    assert await counts.get() == {"completed": 2} and store.counted == 2

"""The store rings a job's bell when it commits events for it (node.store.bell)."""

from __future__ import annotations

from pathlib import Path

import trio

from jobs import Event, EventKind
from node.store import Store
from node.store.bell import EventBell


def test_bell_is_bounded_and_forgets_jobs_nobody_listens_to() -> None:
    bell = EventBell(limit=1)
    with bell.listening("j1") as first, bell.listening("j1") as again, bell.listening("j2") as over:
        assert first.next_ring() is again.next_ring() is not None
        assert over.next_ring() is None  # over the limit: the stream falls back to its timer
        ring = first.next_ring()
        bell.ring(["j1", "j2", "nobody"])
        assert ring.is_set()
        assert not first.next_ring().is_set()  # a fresh event for the next ring
    assert len(bell) == 0


async def test_store_rings_the_job_whose_events_it_committed(tmp_path: Path) -> None:
    store = Store(tmp_path / "shoal.db")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        with store.bell.listening("j1") as listener, store.bell.listening("j2") as other:
            ring, quiet = listener.next_ring(), other.next_ring()
            await store.save(events=[Event(job_id="j1", at=1.0, kind=EventKind.ANNOUNCED)])
            assert ring.is_set() and not quiet.is_set()
            assert [e.kind for e in await store.events("j1")] == [EventKind.ANNOUNCED]  # committed before the ring
        nursery.cancel_scope.cancel()

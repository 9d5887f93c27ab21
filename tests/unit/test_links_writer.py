"""node.net.links' writer: frames queued together share one stream write (no network)."""

from __future__ import annotations

import trio
import trio.testing

from node.net.links import WRITE_BATCH, _queue, _write_loop


class RecordingStream:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    async def write(self, data: bytes) -> None:
        await trio.lowlevel.checkpoint()
        self.writes.append(bytes(data))


async def test_concurrent_frames_share_one_write() -> None:
    stream = RecordingStream()
    send, recv = trio.open_memory_channel[bytes](64)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_write_loop, stream, recv)
        async with trio.open_nursery() as senders:
            for n in range(20):
                senders.start_soon(_queue, send, b"frame%02d;" % n)
        await trio.testing.wait_all_tasks_blocked()
        send.close()
    assert len(stream.writes) == 1
    # trio runs a pass's tasks in no fixed order; each frame is there, whole, once
    assert sorted(stream.writes[0].split(b";")[:-1]) == [b"frame%02d" % n for n in range(20)]


async def test_a_lone_frame_is_written_at_once_and_batches_stay_bounded() -> None:
    stream = RecordingStream()
    send, recv = trio.open_memory_channel[bytes](64)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_write_loop, stream, recv)
        await _queue(send, b"alone")
        await trio.testing.wait_all_tasks_blocked()
        assert stream.writes == [b"alone"]
        big = bytes(WRITE_BATCH // 2 + 1)
        for _ in range(3):
            await _queue(send, big)
        send.close()
    assert stream.writes[1:] == [big + big, big]  # a write stops once it passes WRITE_BATCH


async def test_queue_waits_when_full() -> None:
    send, recv = trio.open_memory_channel[bytes](1)
    await _queue(send, b"a")
    with trio.move_on_after(0.05) as scope:
        await _queue(send, b"b")  # back-pressure: blocks until the writer takes one
    assert scope.cancelled_caught
    assert recv.receive_nowait() == b"a"

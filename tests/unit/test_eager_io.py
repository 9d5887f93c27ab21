"""node.net.eager_io: locks that do not yield when free, and the buffered TCP reader (no network)."""

from __future__ import annotations

import pytest
import trio
import trio.testing
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.io.trio import TrioTCPStream

from node.net import eager_io

eager_io.install()


class FakeSocketStream:
    """Hands out scripted chunks from ``receive_some``, recording the sizes asked for."""

    def __init__(self, chunks: list[bytes | BaseException]) -> None:
        self.chunks = chunks
        self.asked: list[int | None] = []

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        await trio.lowlevel.checkpoint()
        self.asked.append(max_bytes)
        item = self.chunks.pop(0) if self.chunks else b""
        if isinstance(item, BaseException):
            raise item
        return item


def tcp(chunks: list[bytes | BaseException]) -> tuple[TrioTCPStream, FakeSocketStream]:
    fake = FakeSocketStream(chunks)
    return TrioTCPStream(fake), fake  # type: ignore[arg-type]


async def test_free_lock_is_taken_without_a_checkpoint() -> None:
    lock = eager_io.EagerLock(trio.Lock())
    with trio.testing.assert_no_checkpoints():
        async with lock:
            assert lock.locked()
    assert not lock.locked()


async def test_held_lock_waits_and_is_handed_over_in_order() -> None:
    lock = eager_io.EagerLock(trio.Lock())
    order: list[int] = []

    async def take(n: int) -> None:
        async with lock:
            order.append(n)
            await trio.sleep(0.01)

    async with trio.open_nursery() as nursery:
        await lock.acquire()
        for n in range(3):
            nursery.start_soon(take, n)
            await trio.testing.wait_all_tasks_blocked()
        with trio.testing.assert_checkpoints():  # a waiter queued: we may not barge past it
            lock.release()
            await lock.acquire()
        order.append(99)
        lock.release()
    assert order == [0, 1, 2, 99]


async def test_semaphore_keeps_its_count() -> None:
    sem = eager_io.EagerLock(trio.Semaphore(1))
    await sem.acquire()
    assert sem.value == 0
    with pytest.raises(trio.WouldBlock):
        sem.acquire_nowait()
    sem.release()
    assert sem.value == 1


async def test_installed_on_libp2p_streams() -> None:
    stream, _ = tcp([])
    assert isinstance(stream.read_lock, eager_io.EagerLock)
    assert isinstance(stream.write_lock, eager_io.EagerLock)


async def test_small_reads_are_served_from_one_receive() -> None:
    stream, fake = tcp([b"\x00\x05hello\x00\x03abc"])
    assert await stream.read(2) == b"\x00\x05"
    with trio.testing.assert_no_checkpoints():  # from the buffer: no syscall, no yield
        assert await stream.read(5) == b"hello"
        assert await stream.read(2) == b"\x00\x03"
    assert await stream.read(10) == b"abc"  # never more than was buffered
    assert fake.asked == [eager_io.READ_CHUNK]
    assert await stream.read(3) == b""  # EOF
    assert await stream.read(0) == b""


async def test_read_without_a_size_returns_what_is_there() -> None:
    stream, _ = tcp([b"abcdef", b"gh"])
    assert await stream.read(1) == b"a"
    assert await stream.read() == b"bcdef"
    assert await stream.read() == b"gh"


async def test_concurrent_readers_keep_the_byte_order() -> None:
    stream, _ = tcp([b"0123456789", b"abcdefghij"])
    got: list[bytes] = []

    async def reader() -> None:
        while data := await stream.read(3):
            got.append(data)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(reader)
        nursery.start_soon(reader)
    assert b"".join(got) == b"0123456789abcdefghij"


async def test_reset_and_local_close_keep_libp2p_errors() -> None:
    stream, _ = tcp([trio.BrokenResourceError("reset")])
    with pytest.raises(ConnectionClosedError):
        await stream.read(2)
    stream, _ = tcp([trio.ClosedResourceError("closed")])
    assert await stream.read(2) == b""


async def test_yamux_body_in_the_noise_buffer_is_read_without_io() -> None:
    from libp2p.security.secure_session import SecureSession
    from libp2p.stream_muxer.yamux.yamux import Yamux

    class Muxer:
        secured_conn = SecureSession.__new__(SecureSession)

    session = Muxer.secured_conn
    session._reset_internal_buffer()
    session._fill(b"bodyrest")
    with trio.testing.assert_no_checkpoints():
        assert await Yamux._read_data_body(Muxer(), 4) == b"body"  # type: ignore[arg-type]
    assert session._drain(None) == b"rest"

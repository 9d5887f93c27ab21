"""Fewer trio scheduler passes per message in py-libp2p's transport (applied once, by ``node.net.host``).

Profiled (py-spy, ``shoal bench``), a node spent a third of its transport CPU in trio's scheduler,
not in yamux or Noise: py-libp2p 0.8.1 takes a ``trio.Lock`` at every layer a message crosses
(TCP read and write locks, yamux's connection, stream, window and read/write locks, ``NetStream``'s
state lock), and taking a free ``trio.Lock`` is a checkpoint: the task yields to the scheduler,
which runs a whole loop iteration (an ``epoll_wait`` syscall among other things) before resuming
it. Reading one Noise message also costs two ``recv`` syscalls and two more yields (its 2-byte
length, then its body). Measured with ``benchmarks.net``: about ten scheduler passes per message.

Four changes, none visible on the wire:

- ``EagerLock`` takes a free lock at once and only waits (a checkpoint) when it is held. Fairness
  is trio's: a lock with waiters is never taken past them. Every I/O path still checkpoints in its
  socket call, so no loop can run without yielding.
- The TCP reader receives up to ``READ_CHUNK`` bytes at a time and serves the smaller reads Noise
  and multistream make from what it already has, without a syscall or a yield. Only bytes the
  kernel already delivered are buffered (at most one chunk), so no bound changes.
- Yamux's frame writer no longer adds a checkpoint after the socket send (which is one already),
  nor formats a debug line per frame that nobody logs; its reader takes a frame's body straight
  from the decrypted Noise message when it is all there, without arming a timeout for it.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import trio
from libp2p.io.exceptions import ConnectionClosedError
from libp2p.io.trio import TrioTCPStream
from libp2p.network.stream.net_stream import NetStream
from libp2p.security.secure_session import SecureSession
from libp2p.stream_muxer.rw_lock import ReadWriteLock
from libp2p.stream_muxer.yamux import yamux as _yamux
from libp2p.stream_muxer.yamux.yamux import Yamux, YamuxStream

_yamux_log = _yamux.logger
_original_write_frame = Yamux._write_frame
_original_read_data_body = Yamux._read_data_body

READ_CHUNK = 64 * 1024
"""Bytes one ``recv`` asks for (a Noise message is at most 65,537 bytes on the wire)."""


class EagerLock:
    """A ``trio.Lock`` (or ``Semaphore``) whose ``acquire`` takes it without yielding when it is free."""

    __slots__ = ("_inner",)

    def __init__(self, inner: trio.Lock | trio.Semaphore) -> None:
        self._inner = inner

    async def acquire(self) -> None:
        try:
            self._inner.acquire_nowait()
        except trio.WouldBlock:
            await self._inner.acquire()

    def acquire_nowait(self) -> None:
        self._inner.acquire_nowait()

    def release(self) -> None:
        self._inner.release()

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc_info: object) -> None:
        self._inner.release()

    def __getattr__(self, name: str) -> Any:  # locked(), statistics(), value, ...
        return getattr(self._inner, name)


def _eager_locks(init: Callable[..., None], *names: str) -> Callable[..., None]:
    """Wrap a class's ``__init__`` so that the named lock attributes become ``EagerLock``s."""

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        for name in names:
            setattr(self, name, EagerLock(getattr(self, name)))

    return __init__


async def _buffered_read(self: TrioTCPStream, n: int | None = None) -> bytes:
    """``TrioTCPStream.read``: up to ``n`` bytes, from what an earlier ``recv`` got when it can."""
    if n == 0:
        return b""
    buffered: bytearray = self._shoal_buffer  # type: ignore[attr-defined]
    if not buffered:
        async with self.read_lock:
            if not buffered:  # another reader may have filled it while we waited for the lock
                try:
                    data = await self.stream.receive_some(READ_CHUNK)
                except trio.BrokenResourceError as error:
                    raise ConnectionClosedError(
                        f"TCP connection reset by remote peer: {error}", transport="tcp") from error
                except trio.ClosedResourceError:
                    return b""  # closed locally: EOF, as libp2p's own read says
                if n is None or len(data) <= n:
                    return data
                buffered += data
    if n is None or n >= len(buffered):
        data = bytes(buffered)
        buffered.clear()
        return data
    data = bytes(buffered[:n])
    del buffered[:n]
    return data


async def _write_frame(self: Yamux, data: bytes) -> None:
    """``Yamux._write_frame`` without its trailing extra checkpoint (the socket send is one) and
    without formatting a debug line for every frame when debug logging is off."""
    if _yamux_log.isEnabledFor(logging.DEBUG):
        await _original_write_frame(self, data)
        return
    async with self._write_lock:
        await self.secured_conn.write(data)


async def _read_data_body(self: Yamux, length: int) -> bytes:
    """``Yamux._read_data_body``: a body Noise already decrypted (the usual case: a yamux frame
    travels in one Noise message) is taken from the buffer; only a body still to come is read
    under libp2p's timeout (setting up that deadline cost more than the copy)."""
    conn = self.secured_conn
    if isinstance(conn, SecureSession) and conn.high_watermark - conn.low_watermark >= length:
        return conn._drain(length)
    return await _original_read_data_body(self, length)


def install() -> None:
    """Patch py-libp2p's classes (idempotent)."""
    if getattr(TrioTCPStream, "_shoal_eager_io", False):
        return

    tcp_init = _eager_locks(TrioTCPStream.__init__, "read_lock", "write_lock")

    @functools.wraps(TrioTCPStream.__init__)
    def tcp_stream_init(self: TrioTCPStream, *args: Any, **kwargs: Any) -> None:
        tcp_init(self, *args, **kwargs)
        self._shoal_buffer = bytearray()  # type: ignore[attr-defined]

    TrioTCPStream.__init__ = tcp_stream_init  # type: ignore[method-assign]
    TrioTCPStream.read = _buffered_read  # type: ignore[method-assign]
    Yamux.__init__ = _eager_locks(Yamux.__init__, "streams_lock", "_write_lock")  # type: ignore[method-assign]
    YamuxStream.__init__ = _eager_locks(  # type: ignore[method-assign]
        YamuxStream.__init__, "window_lock", "close_lock")
    ReadWriteLock.__init__ = _eager_locks(  # type: ignore[method-assign]
        ReadWriteLock.__init__, "_readers_lock", "_writer_lock")
    NetStream.__init__ = _eager_locks(NetStream.__init__, "_state_lock")  # type: ignore[method-assign]
    Yamux._write_frame = _write_frame  # type: ignore[method-assign]
    Yamux._read_data_body = _read_data_body  # type: ignore[method-assign]
    TrioTCPStream._shoal_eager_io = True  # type: ignore[attr-defined]

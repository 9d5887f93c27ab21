"""One yamux stream write at a time, as go-yamux does (applied once, by ``node.net.host``).

py-libp2p 0.8.1's ``YamuxStream.write`` holds the stream's write lock for one frame, not for the
whole write: a write longer than 64 KiB, or longer than the send window, goes out as several
frames, and another task writing to the same stream can put its frames between them. The reader
then takes the middle of one message for the length prefix of the next. py-libp2p's pubsub
writes to a peer's stream from several tasks at once (the per-peer sending loop, and the
replays of pending and recent messages when a peer joins or subscribes), so a node joining a
busy network, its window short, was sent interleaved RPCs: ``DecodeError`` on 'pubsub.pb.RPC'
(red team). go-yamux's ``Stream.Write`` holds its write lock until the last byte is sent; so
does this.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import trio
from libp2p.stream_muxer.yamux.yamux import YamuxStream

from node.net.eager_io import EagerLock

_Write = Callable[[Any, bytes], Awaitable[None]]


def whole_writes(write: _Write) -> _Write:
    """Wrap ``YamuxStream.write``: a write's frames are never interleaved with another's."""

    @functools.wraps(write)
    async def _write(self: Any, data: bytes) -> None:
        lock = self.__dict__.get("_shoal_write_lock")
        if lock is None:
            lock = self._shoal_write_lock = EagerLock(trio.Lock())
        async with lock:
            await write(self, data)

    return _write


def install() -> None:
    """Patch ``YamuxStream`` (idempotent)."""
    if getattr(YamuxStream, "_shoal_whole_writes", False):
        return
    YamuxStream.write = whole_writes(YamuxStream.write)  # type: ignore[method-assign]
    YamuxStream._shoal_whole_writes = True  # type: ignore[attr-defined]

"""Yamux receive windows enforced, as go-yamux does (applied once, by ``node.net.host``).

py-libp2p 0.8.1 counts a DATA frame against its stream's receive window only after appending it to
the stream's buffer, and when the frame went past the window it logs a warning and keeps it. A peer
that ignores its send window (any peer on an open network) could so fill a stream whose reader
waits, without bound: measured, a node grew 33 MiB/s (120 → 1,488 MiB in 42 s), plus a warning
line per frame. go-yamux takes a frame past the window for a protocol error: it sends GO_AWAY and
closes the connection. So does this.

libp2p subtracts each frame from ``recv_window`` just after appending its body to the buffer (SYN,
ACK and plain DATA frames alike), so ``recv_window`` becomes a property whose setter, seeing the
window go below zero, takes the frame back off the buffer before anything reads it, leaves the
window as it was (so libp2p has nothing to warn about), and closes the connection, once.
"""

from __future__ import annotations

import logging
import struct
from typing import Any

import trio
from libp2p.stream_muxer.yamux.yamux import (
    GO_AWAY_PROTOCOL_ERROR,
    TYPE_GO_AWAY,
    YAMUX_HEADER_FORMAT,
    Yamux,
    YamuxStream,
)

log = logging.getLogger(__name__)

GO_AWAY_TIMEOUT = 1.0
"""Seconds spent telling the peer why before closing anyway: one that does not read is not waited for."""


def _get_recv_window(self: Any) -> int:
    return self._shoal_recv_window  # type: ignore[no-any-return]


def _set_recv_window(self: Any, value: int) -> None:
    if value >= 0:
        self._shoal_recv_window = value
        return
    frame = self._shoal_recv_window - value  # libp2p has just appended it to the buffer
    buffer = self.conn.stream_buffers.get(self.stream_id)
    if buffer is not None:
        del buffer[max(0, len(buffer) - frame):]
    conn = self.conn
    if getattr(conn, "_shoal_refused", False):
        return
    conn._shoal_refused = True
    log.warning("yamux: peer %s sent %d bytes past stream %d's receive window; closing the connection",
                conn.peer_id, frame, self.stream_id)
    if conn._nursery is not None:
        conn._nursery.start_soon(_close, conn)


async def _close(conn: Yamux) -> None:
    """Close a connection whose peer broke flow control: GO_AWAY (protocol error), then its streams
    are reset and the connection closed."""
    with trio.move_on_after(GO_AWAY_TIMEOUT):
        await conn._write_frame(struct.pack(YAMUX_HEADER_FORMAT, 0, TYPE_GO_AWAY, 0, 0, GO_AWAY_PROTOCOL_ERROR))
    await conn._cleanup_on_error()


def install() -> None:
    """Patch ``YamuxStream`` (idempotent)."""
    if getattr(YamuxStream, "_shoal_enforced_windows", False):
        return
    YamuxStream.recv_window = property(_get_recv_window, _set_recv_window)  # type: ignore[assignment]
    YamuxStream._shoal_enforced_windows = True  # type: ignore[attr-defined]

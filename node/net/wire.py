"""Framing for the direct request/reply protocol ``/shoal/rpc/1.0.0``.

Pure functions and a push decoder, no I/O, so they can be unit tested alone.

A frame is::

    +-----------------+------------------+-----------------+
    | length: u32 BE  | request id: u64  | payload         |
    +-----------------+------------------+-----------------+

``length`` counts the bytes that follow it (the 8-byte request id plus the
payload), so a well-formed frame always has ``length >= 8``. A reply carries the
request id of the request it answers. Which frames are requests and which are
replies follows from the stream's direction: the dialler writes requests and
reads replies, the listener the opposite.
"""

from __future__ import annotations

import struct

from node.net.errors import RemoteProtocolError

PROTOCOL_ID = "/shoal/rpc/1.0.0"

_HEADER = struct.Struct("!IQ")
LENGTH_SIZE = 4
ID_SIZE = 8
HEADER_SIZE = _HEADER.size  # 12
MAX_REQUEST_ID = (1 << 64) - 1
DEFAULT_MAX_FRAME = 1 << 20


def encode_frame(request_id: int, payload: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    """Return the wire bytes for one frame.

    ``max_frame`` bounds the payload size; exceeding it is the caller's bug, so
    this raises ``ValueError`` (not ``RemoteProtocolError``).
    """
    if not 0 <= request_id <= MAX_REQUEST_ID:
        raise ValueError(f"request id out of range: {request_id}")
    if len(payload) > max_frame:
        raise ValueError(f"payload of {len(payload)} bytes exceeds max_frame={max_frame}")
    return _HEADER.pack(ID_SIZE + len(payload), request_id) + payload


def decode_frame(data: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> tuple[int, bytes]:
    """Decode exactly one complete frame (and nothing more) from ``data``."""
    decoder = FrameDecoder(max_frame)
    frames = decoder.feed(data)
    if len(frames) != 1 or decoder.pending:
        raise RemoteProtocolError(f"expected exactly one frame, got {len(frames)} and {decoder.pending} spare bytes")
    return frames[0]


def check_length(length: int, max_frame: int) -> None:
    """Validate a frame's length field; raise ``RemoteProtocolError`` if bad."""
    if length < ID_SIZE:
        raise RemoteProtocolError(f"frame length {length} is shorter than the request id")
    if length - ID_SIZE > max_frame:
        raise RemoteProtocolError(f"frame payload of {length - ID_SIZE} bytes exceeds max_frame={max_frame}")


class FrameDecoder:
    """Incremental decoder: feed it bytes as they arrive, get complete frames.

    The length is checked as soon as the 4-byte prefix is in, so an oversized
    frame is rejected before its body is buffered. After an error the decoder
    must not be used again (the stream is out of sync).
    """

    __slots__ = ("_buf", "_max_frame", "_need")

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        if max_frame < 0:
            raise ValueError("max_frame must be >= 0")
        self._max_frame = max_frame
        self._buf = bytearray()
        # Total bytes (prefix included) the frame at the head of the buffer needs,
        # or 0 when its length prefix has not been read yet.
        self._need = 0

    @property
    def pending(self) -> int:
        """Bytes buffered that do not yet form a complete frame."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Add ``data``; return every frame now complete, as (request id, payload)."""
        buf = self._buf
        buf += data
        frames: list[tuple[int, bytes]] = []
        pos = 0
        end = len(buf)
        while True:
            if self._need == 0:
                if end - pos < LENGTH_SIZE:
                    break
                (length,) = struct.unpack_from("!I", buf, pos)
                check_length(length, self._max_frame)
                self._need = LENGTH_SIZE + length
            if end - pos < self._need:
                break
            _, request_id = _HEADER.unpack_from(buf, pos)
            frames.append((request_id, bytes(buf[pos + HEADER_SIZE : pos + self._need])))
            pos += self._need
            self._need = 0
        if pos:
            del buf[:pos]
        return frames

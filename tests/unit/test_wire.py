"""Framing of /shoal/rpc/1.0.0: pure functions, no I/O."""

from __future__ import annotations

import struct

import pytest

from node.net.errors import RemoteProtocolError
from node.net.wire import (
    HEADER_SIZE,
    MAX_REQUEST_ID,
    FrameDecoder,
    decode_frame,
    encode_frame,
)


def test_encode_layout() -> None:
    frame = encode_frame(7, b"hello")
    assert frame == struct.pack("!IQ", 8 + 5, 7) + b"hello"
    assert len(frame) == HEADER_SIZE + 5


@pytest.mark.parametrize("payload", [b"", b"x", bytes(range(256)) * 40])
@pytest.mark.parametrize("request_id", [0, 1, 2**32 + 5, MAX_REQUEST_ID])
def test_round_trip(request_id: int, payload: bytes) -> None:
    assert decode_frame(encode_frame(request_id, payload)) == (request_id, payload)


def test_request_id_out_of_range() -> None:
    with pytest.raises(ValueError):
        encode_frame(-1, b"")
    with pytest.raises(ValueError):
        encode_frame(MAX_REQUEST_ID + 1, b"")


def test_size_limit_on_encode() -> None:
    assert decode_frame(encode_frame(1, b"a" * 100, max_frame=100), max_frame=100) == (1, b"a" * 100)
    with pytest.raises(ValueError):
        encode_frame(1, b"a" * 101, max_frame=100)


def test_oversized_frame_rejected_from_its_header_alone() -> None:
    decoder = FrameDecoder(max_frame=100)
    header = struct.pack("!I", 8 + 101)
    with pytest.raises(RemoteProtocolError):
        decoder.feed(header)  # rejected before any of the body is buffered


def test_frame_at_the_limit_accepted() -> None:
    decoder = FrameDecoder(max_frame=100)
    assert decoder.feed(encode_frame(3, b"z" * 100, max_frame=100)) == [(3, b"z" * 100)]


@pytest.mark.parametrize("length", [0, 1, 7])
def test_length_shorter_than_request_id_rejected(length: int) -> None:
    with pytest.raises(RemoteProtocolError):
        FrameDecoder().feed(struct.pack("!I", length) + b"\0" * 8)


def test_garbage_rejected() -> None:
    with pytest.raises(RemoteProtocolError):
        FrameDecoder().feed(b"\xff" * 32)
    with pytest.raises(RemoteProtocolError):
        FrameDecoder().feed(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")


def test_byte_by_byte_feeding() -> None:
    frames = [(i, bytes([i]) * i) for i in range(20)]
    stream = b"".join(encode_frame(i, p) for i, p in frames)
    decoder = FrameDecoder()
    out: list[tuple[int, bytes]] = []
    for b in stream:
        out.extend(decoder.feed(bytes([b])))
    assert out == frames
    assert decoder.pending == 0


def test_many_frames_in_one_chunk_and_partial_tail() -> None:
    decoder = FrameDecoder()
    data = encode_frame(1, b"a") + encode_frame(2, b"bb") + encode_frame(3, b"ccc")[:-1]
    assert decoder.feed(data) == [(1, b"a"), (2, b"bb")]
    assert decoder.pending == HEADER_SIZE + 2
    assert decoder.feed(b"c") == [(3, b"ccc")]
    assert decoder.pending == 0


def test_decode_frame_wants_exactly_one_frame() -> None:
    with pytest.raises(RemoteProtocolError):
        decode_frame(encode_frame(1, b"a") + encode_frame(2, b"b"))
    with pytest.raises(RemoteProtocolError):
        decode_frame(encode_frame(1, b"abc")[:-1])
    with pytest.raises(RemoteProtocolError):
        decode_frame(b"")

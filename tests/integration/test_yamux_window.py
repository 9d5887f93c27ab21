"""Yamux receive windows on real py-libp2p hosts (node.net.yamux_window): a peer that sends past a
stream's window gets none of it buffered and loses its connection; honest transfers still flow."""

from __future__ import annotations

import logging
import random
import struct

import pytest
import trio
from libp2p.custom_types import TProtocol
from libp2p.network.stream.exceptions import StreamReset
from libp2p.peer.id import ID
from libp2p.stream_muxer.yamux.yamux import DEFAULT_WINDOW_SIZE

from tests.integration.test_net import cluster, connected_pair, wait_until

PROTO = TProtocol("/shoal-test/window/1")


@pytest.mark.trio
async def test_a_peer_ignoring_its_send_window_gets_nothing_buffered_and_is_cut_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The attacker sets its send window huge and writes to a stream whose reader never reads:
    the receiver buffers at most the window it granted, resets the stream and closes the
    connection, and logs it once (py-libp2p buffered it all, and warned once per frame)."""
    caplog.set_level(logging.WARNING)
    held: list = []  # type: ignore[type-arg]
    arrived = trio.Event()

    async def stall(stream) -> None:  # type: ignore[no-untyped-def]
        held.append(stream)
        arrived.set()
        await trio.sleep_forever()

    async with cluster() as start:
        a, b = await connected_pair(start)
        a._host.set_stream_handler(PROTO, stall)
        a_id = ID.from_base58(a.peer_id)
        stream = await b._host.new_stream(a_id, [PROTO])
        await stream.write(b"hello")
        with trio.fail_after(5):
            await arrived.wait()
        muxed = held[0].muxed_stream
        conn, sid = muxed.conn, muxed.stream_id

        peak = 0
        sent = 0
        stream.muxed_stream.send_window = 1 << 40  # as the attacker did
        with trio.fail_after(20):
            while sent < 16 << 20:
                try:
                    await stream.write(b"x" * 65_000)
                except Exception:  # the connection is gone: the attacker can send no more
                    break
                sent += 65_000
                peak = max(peak, len(conn.stream_buffers.get(sid, b"")))
            else:
                pytest.fail(f"16 MiB sent past the window, the connection still up, {peak:,} bytes buffered")
        await wait_until(lambda: conn.is_closed, timeout=5)
        peak = max(peak, len(conn.stream_buffers.get(sid, b"")))
        assert peak <= DEFAULT_WINDOW_SIZE
        with pytest.raises(StreamReset):
            await held[0].read(1)
        assert conn.stream_buffers == {}
        window_logs = [r for r in caplog.records if "receive window" in r.getMessage()]
        assert [r.name for r in window_logs] == ["node.net.yamux_window"]
        # b redials: a serves it again on a new connection.
        await wait_until(lambda: stream.muxed_stream.conn.is_closed, timeout=5)
        network = b._host.get_network()
        await wait_until(lambda: any(not c.muxed_conn.is_closed for c in network.get_connections(a_id)), 15)
        assert await b.request(a.peer_id, b"again", timeout=10) == b"echo:again"


@pytest.mark.trio
async def test_syn_data_past_the_window_is_refused() -> None:
    """A new stream's SYN frame carrying more than the initial window (256 KiB) closes the connection."""
    async with cluster() as start:
        a, b = await connected_pair(start)
        (a_conn, *_) = a._host.get_network().get_connections(ID.from_base58(b.peer_id))
        (b_conn, *_) = b._host.get_network().get_connections(ID.from_base58(a.peer_id))
        body = b"\0" * (DEFAULT_WINDOW_SIZE + 1)
        frame = struct.pack("!BBHII", 0, 0, 1, 1001, len(body)) + body
        await b_conn.muxed_conn.secured_conn.write(frame)
        await wait_until(lambda: a_conn.muxed_conn.is_closed, timeout=5)


@pytest.mark.trio
async def test_honest_transfers_larger_than_the_window_arrive_whole() -> None:
    """Window updates still work: several MiB each way, on one stream, arrive intact."""
    data = random.randbytes(6 << 20)
    got = bytearray()
    done = trio.Event()

    async def echo_all(stream) -> None:  # type: ignore[no-untyped-def]
        while len(got) < len(data):
            got.extend(await stream.read(1 << 20))
        await stream.write(bytes(got))
        done.set()

    async with cluster() as start:
        a, b = await connected_pair(start)
        a._host.set_stream_handler(PROTO, echo_all)
        stream = await b._host.new_stream(ID.from_base58(a.peer_id), [PROTO])
        back = bytearray()
        with trio.fail_after(60):
            await stream.write(data)
            while len(back) < len(data):
                back.extend(await stream.read(1 << 20))
            await done.wait()
        assert bytes(got) == data
        assert bytes(back) == data
        assert not stream.muxed_stream.conn.is_closed
        assert not getattr(stream.muxed_stream.conn, "_shoal_refused", False)

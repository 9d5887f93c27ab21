"""A rogue peer sends bytes no parser takes on the streams of gossip and of libp2p's own protocols.

libp2p lets a stream handler's error travel up to the host: one 7-byte gossip frame that protobuf could not
parse stopped the whole node (red team, confirmed). Each such stream is now dropped alone
(``node/net/host.py`` ``_GuardedHandlers``); the node keeps its peers and runs the next job.
"""

from __future__ import annotations

import pytest
import trio
from libp2p.peer.id import ID

from shoal import AsyncClient
from tests.integration.rogue import RoguePeer, devstack

pytestmark = pytest.mark.slow

# field 1 (the RPC's subscriptions), length-delimited, its length a varint of ~4 GiB: cut short
UNPARSABLE = b"\x0a\xff\xff\xff\xff\x0f"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    return tmp_path


async def test_frames_no_parser_takes_end_their_stream_and_not_the_node(home):
    async with (devstack(home / "stack", [[]]) as stack,
                AsyncClient(stack.nodes[0].api) as client,
                RoguePeer([stack.nodes[0].addrs[0]]) as rogue):
        node = stack.nodes[0]
        await rogue.wait_mesh([node.peer_id])
        host = rogue.network._host
        for protocol in ("/meshsub/1.1.0", "/ipfs/id/push/1.0.0"):
            stream = await host.new_stream(ID.from_base58(node.peer_id), [protocol])
            await stream.write(bytes([len(UNPARSABLE)]) + UNPARSABLE)
        with trio.move_on_after(3):  # the old node stopped within a second
            await node.process.wait()
        assert node.process.returncode is None, "a frame from a peer stopped the node"
        job = await client.run({"engine": {"name": "noop"}, "cache": False}, timeout=30)
        assert job.job.state.value == "completed", job.job.reason
        assert rogue.peer_id in (await client.peers()).peers  # the connection stays; only the streams went
        log = (node.data_dir / "node.log").read_text()  # (libp2p's identify catches its own parse errors)
        assert f"dropped a /meshsub/1.1.0 stream from {rogue.peer_id} on what it sent" in log

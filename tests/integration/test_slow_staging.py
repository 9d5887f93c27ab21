"""A node staging a slow input is given the time to: on a real devstack node, with a real HTTP server.

Staging inputs (and pulling an image) comes before a run's timeout starts, within its own deadline
(``jobs.spec.INPUT_DEADLINE``, ``PREPARE_DEADLINE``). The requester waiting for the result counts
both, so a short job with a slow input is not taken from the honest node that is fetching it.
"""

from __future__ import annotations

from functools import partial

import pytest
import trio

from devstack import Devstack
from jobs import JobState
from shoal import AsyncClient
from tests.integration.rogue import free_base_port
from tests.integration.test_http_input import read_request

pytestmark = pytest.mark.slow

BODY = b"x" * 40
TRICKLE = 0.15  # seconds between bytes: 6 s for the body, well past the job's timeout plus grace


async def _trickle(stream: trio.SocketStream) -> None:
    if await read_request(stream) is None:
        return
    try:
        await stream.send_all(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(BODY))
        for byte in BODY:
            await trio.sleep(TRICKLE)
            await stream.send_all(bytes([byte]))
    except trio.BrokenResourceError:
        pass
    finally:
        await stream.aclose()


async def test_a_short_job_whose_input_takes_longer_than_its_timeout_to_fetch_completes_on_its_first_node(
        tmp_path, monkeypatch):
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    async with trio.open_nursery() as nursery:
        [listener] = await nursery.start(partial(trio.serve_tcp, _trickle, 0, host="127.0.0.1"))
        url = f"http://127.0.0.1:{listener.socket.getsockname()[1]}/slow.csv"
        async with (Devstack(1, noop=True, base_dir=tmp_path / "stack", base_port=free_base_port(1),
                             write_state=False) as stack,
                    AsyncClient(stack.nodes[0].api) as client):
            spec = {"engine": {"name": "noop"}, "inputs": [{"source": url, "path": "/data/slow.csv"}],
                    "timeout": 1, "deadlines": {"result_grace": 2}}
            d = await client.run(spec, timeout=60)
        nursery.cancel_scope.cancel()
    assert d.job.state is JobState.COMPLETED, d.job.reason
    assert len(d.executions) == 1 and d.job.attempt == 0  # its node was left to fetch it: no re-offer

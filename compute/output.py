"""A running execution's output, sent to its requester as it is written (for ``shoal logs -f``).

Best effort and never the record: the signed result is. What a send cannot deliver is kept and sent
with the next one; a refusal (the requester shows another execution, or not this one) ends it.
"""

from __future__ import annotations

import trio

from executors import LiveOutput
from jobs import Execution, PeerError
from jobs.messages import LOG_CHUNK_BYTES, Output, Peers

OUTPUT_INTERVAL = 0.5  # seconds between two sends: a run shorter than this sends nothing
OUTPUT_TIMEOUT = 5.0


async def send_output(peers: Peers, ex: Execution, live: LiveOutput) -> None:
    """Until cancelled (the run ended) or refused: every OUTPUT_INTERVAL, each stream's new output, in order."""
    while True:
        await trio.sleep(OUTPUT_INTERVAL)
        for stream in ("stdout", "stderr"):
            offset, data = live.take(stream)
            while data:
                piece = data[:LOG_CHUNK_BYTES]
                message = Output(job_id=ex.job_id, execution_id=ex.id, stream=stream, offset=offset, data=piece)
                try:
                    reply = await peers.request(ex.requester, message, timeout=OUTPUT_TIMEOUT, addrs=ex.requester_addrs)
                except PeerError:
                    live.give_back(stream, offset, data)
                    break
                if not reply.ok or reply.verdict == "rejected":
                    return
                offset, data = offset + len(piece), data[len(piece):]

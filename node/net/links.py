"""Multiplexed request/reply over long-lived libp2p streams.

``OutboundLink`` owns the one outbound ``/shoal/rpc/1.0.0`` stream we keep per
peer: callers put request frames on a queue, a writer task writes them (batching
whatever is queued into one write), a reader task hands replies to the waiting
callers by request id. ``serve_inbound`` is the other end: it reads request
frames, runs each in its own task (at most ``max_concurrent`` at once per
stream) and queues the reply frames for its own writer task.

A single writer task per stream is what serialises writes: a caller whose
request times out is never cancelled half-way through a write, so a timeout can
not leave a partial frame on a stream that other requests share.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import trio
from libp2p.network.stream.exceptions import StreamEOF

from jobs.errors import Unreachable
from node.net.errors import RemoteProtocolError
from node.net.wire import FrameDecoder, encode_frame
from node.ratelimit import SpacedWarnings

log = logging.getLogger(__name__)

READ_SIZE = 1 << 20
"""Upper bound on one ``stream.read``; it returns whatever is buffered up to this."""
WRITE_BATCH = 256 * 1024
"""The writer joins queued frames into one write up to about this many bytes."""
WRITE_QUEUE = 1024
"""Frames queued per stream before callers wait (back-pressure)."""
MAX_CONCURRENT_PER_STREAM = 256
DISCARD_TIMEOUT = 1.0
FRAME_DEADLINE = 30.0
"""Seconds a peer has to finish a request frame it began (a 1 MiB frame at 35 KB/s): one left unfinished
held up to a megabyte for as long as the peer liked."""
PARTIAL_FRAMES_BUDGET = 64 << 20
"""Bytes of unfinished request frames held over all inbound streams: 800 streams of 1 MiB held 1 GiB."""
PARTIAL_FRAME_CHARGE = 64 << 10
"""The least an unfinished frame counts for: the budget holds at most 1,024 of them, which bounds the work of
making room (8,000 parked one-byte frames cost 7 ms a byte of growth)."""

RequestHandler = Callable[[str, bytes], Awaitable[bytes]]
warnings = SpacedWarnings(log)


class PartialFrames:
    """The bytes of unfinished request frames a node's inbound streams hold, against one ``limit``.

    A frame that would pass it makes room by resetting the streams whose unfinished frames began before its own,
    oldest first. Keeping a frame unfinished is what a flood does, and sending one is what an honest peer does:
    when the newest growth was refused, 16 fresh identities parking 63 MiB refused every honest request larger
    than a read, for as long as they resent their frames every 30 s.
    """

    def __init__(self, limit: int = PARTIAL_FRAMES_BUDGET) -> None:
        self.limit = limit
        self.held = 0
        self._frames: dict[object, tuple[float, int, str, trio.CancelScope]] = {}  # stream -> began, bytes, peer

    def hold(self, stream: object, nbytes: int, began: float, peer: str, scope: trio.CancelScope) -> bool:
        """``stream``'s unfinished frame, begun at ``began``, now holds ``nbytes`` (0: it has none). False, and
        nothing reset, when it does not fit even with every older frame gone; ``scope`` resets the stream."""
        self.forget(stream)
        if not nbytes:
            return True
        nbytes = max(nbytes, PARTIAL_FRAME_CHARGE)
        if self.held + nbytes > self.limit:
            older = sorted(((b, key) for key, (b, _, _, _) in self._frames.items() if b < began), key=lambda f: f[0])
            if self.held + nbytes - sum(self._frames[key][1] for _, key in older) > self.limit:
                return False
            for _, key in older:
                if self.held + nbytes <= self.limit:
                    break
                since, n, owner, victim = self._frames.pop(key)
                self.held -= n
                victim.cancel()
                warnings.warn("budget", "unfinished request frames fill %d MiB: reset a stream of %s whose frame "
                              "began %.0f s ago", self.limit >> 20, owner, trio.current_time() - since)
        self._frames[stream] = (began, nbytes, peer, scope)
        self.held += nbytes
        return True

    def forget(self, stream: object) -> None:
        """``stream`` ended (or was reset): what its unfinished frame held is free."""
        if (frame := self._frames.pop(stream, None)) is not None:
            self.held -= frame[1]


@dataclass
class Counters:
    """Mutable counters shared by a ``Network`` and its links (one trio thread)."""

    requests_sent: int = 0
    requests_received: int = 0
    requests_failed: int = 0
    handler_errors: int = 0
    gossip_published: int = 0
    gossip_publish_failed: int = 0
    gossip_received: int = 0
    gossip_dropped: int = 0
    frames_rejected: int = 0
    open_streams: int = 0
    peers_refused_key: int = 0
    peers_refused_untrusted: int = 0
    gossip_rejected: int = 0
    gossip_rate_limited: int = 0
    gossip_unsent: int = 0


async def discard_stream(stream: Any, *, graceful: bool = False) -> None:
    """Close (``graceful``) or reset a stream; never raises, never blocks long.

    Shielded so it also runs while the owner is being cancelled.
    """
    with trio.CancelScope(shield=True), trio.move_on_after(DISCARD_TIMEOUT):
        try:
            if graceful:
                await stream.close()
            else:
                await stream.reset()
        except Exception as exc:  # the stream is gone either way
            log.debug("error discarding stream: %r", exc)


async def _read(stream: Any) -> bytes | None:
    """Read what is available; ``None`` at a clean end of stream."""
    try:
        data: bytes = await stream.read(READ_SIZE)
    except StreamEOF:
        return None
    return data or None


async def _queue(frames: trio.MemorySendChannel[bytes], frame: bytes) -> None:
    """Queue a frame for the writer; wait (a checkpoint) only when the queue is full.

    ``send`` would yield to the scheduler even when there is room: one more loop pass per message.
    """
    try:
        frames.send_nowait(frame)
    except trio.WouldBlock:
        await frames.send(frame)


async def _write_loop(stream: Any, frames: trio.MemoryReceiveChannel[bytes]) -> None:
    """Write queued frames until the channel is closed and drained.

    Raises whatever the stream raises on write; the caller treats that as the
    stream being broken.
    """
    while True:
        try:
            first = await frames.receive()
        except trio.EndOfChannel:
            return
        chunks = [first]
        size = len(first)
        # Coalesce: give the tasks runnable now one scheduler pass to queue their frames too, and
        # another while that pass brought more, so concurrent messages share one write (one yamux
        # frame, one Noise message, one send) while a lone message waits one pass only.
        while size < WRITE_BATCH:
            await trio.lowlevel.checkpoint()
            queued = len(chunks)
            while size < WRITE_BATCH:
                try:
                    frame = frames.receive_nowait()
                except (trio.WouldBlock, trio.EndOfChannel):
                    break
                chunks.append(frame)
                size += len(frame)
            if len(chunks) == queued:
                break
        await stream.write(chunks[0] if len(chunks) == 1 else b"".join(chunks))


class _Waiter:
    __slots__ = ("error", "event", "payload")

    def __init__(self) -> None:
        self.event = trio.Event()
        self.payload: bytes | None = None
        self.error: Unreachable | None = None


class OutboundLink:
    """One outbound rpc stream to ``peer_id`` with many requests in flight.

    ``run`` must be started in a nursery (the ``Network``'s) right after
    construction; when it returns the link is dead, every waiting caller has got
    ``Unreachable`` and the stream has been reset.
    """

    def __init__(self, stream: Any, peer_id: str, *, max_frame: int, counters: Counters) -> None:
        self.peer_id = peer_id
        self._stream = stream
        self._max_frame = max_frame
        self._counters = counters
        self._next_id = 1
        self._waiters: dict[int, _Waiter] = {}
        self._send, self._recv = trio.open_memory_channel[bytes](WRITE_QUEUE)
        self._scope = trio.CancelScope()
        self._closed = False
        self._failure: Unreachable | None = None
        self.finished = trio.Event()

    @property
    def alive(self) -> bool:
        return not self._closed

    @property
    def in_flight(self) -> int:
        return len(self._waiters)

    def close(self, reason: str = "link closed") -> None:
        """Abort the link (synchronously; ``run`` finishes the clean-up)."""
        self._fail(Unreachable(self.peer_id, reason))
        self._scope.cancel()

    async def call(self, payload: bytes) -> bytes:
        """Send one request and wait for its reply (no timeout of its own)."""
        if self._closed:
            raise self._error()
        request_id = self._next_id
        self._next_id += 1
        frame = encode_frame(request_id, payload, self._max_frame)
        waiter = _Waiter()
        self._waiters[request_id] = waiter
        try:
            try:
                await _queue(self._send, frame)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                raise self._error() from None
            await waiter.event.wait()
        finally:
            self._waiters.pop(request_id, None)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.payload is not None
        return waiter.payload

    async def run(self) -> None:
        self._counters.open_streams += 1
        graceful = False
        try:
            with self._scope:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, nursery.cancel_scope)
                    graceful = await self._reader()
                    nursery.cancel_scope.cancel()
        finally:
            self._fail(Unreachable(self.peer_id, "link closed"))
            await discard_stream(self._stream, graceful=graceful)
            self._counters.open_streams -= 1
            self.finished.set()

    # -- internals ---------------------------------------------------------

    def _error(self) -> Unreachable:
        """A fresh exception per caller (one instance raised in many tasks would
        pile up their tracebacks)."""
        failure = self._failure
        error = Unreachable(self.peer_id, failure.why if failure else "link closed")
        if failure is not None:
            error.__cause__ = failure.__cause__
        return error

    def _fail(self, error: Unreachable) -> None:
        """Mark the link dead and fail every waiting caller (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._failure = error
        self._send.close()
        for waiter in self._waiters.values():
            if not waiter.event.is_set():
                waiter.error = self._error()
                waiter.event.set()

    async def _writer(self, scope: trio.CancelScope) -> None:
        try:
            await _write_loop(self._stream, self._recv)
        except Exception as exc:
            log.debug("rpc write to %s failed: %r", self.peer_id, exc)
            self._fail(Unreachable(self.peer_id, f"stream write failed: {exc!r}"))
            scope.cancel()

    async def _reader(self) -> bool:
        """Dispatch replies until the stream ends; True if it ended cleanly."""
        decoder = FrameDecoder(self._max_frame)
        while True:
            try:
                data = await _read(self._stream)
            except Exception as exc:
                self._fail(Unreachable(self.peer_id, f"stream broken: {exc!r}"))
                return False
            if data is None:
                if decoder.pending:
                    self._counters.frames_rejected += 1
                    warnings.warn("reply cut", "peer %s closed the rpc stream in the middle of a frame", self.peer_id)
                self._fail(Unreachable(self.peer_id, "peer closed the stream"))
                return True
            try:
                frames = decoder.feed(data)
            except RemoteProtocolError as exc:
                self._counters.frames_rejected += 1
                warnings.warn("bad reply", "bad reply frame from %s, closing the stream: %s", self.peer_id, exc)
                error = Unreachable(self.peer_id, f"protocol error: {exc}")
                error.__cause__ = exc
                self._fail(error)
                return False
            for request_id, payload in frames:
                waiter = self._waiters.get(request_id)
                if waiter is None or waiter.event.is_set():
                    # The caller gave up (timeout) before the reply came.
                    log.debug("late or unknown reply %d from %s", request_id, self.peer_id)
                    continue
                waiter.payload = payload
                waiter.event.set()


async def serve_inbound(
    stream: Any,
    peer_id: str,
    on_request: RequestHandler,
    *,
    max_frame: int,
    counters: Counters,
    partial: PartialFrames,
    max_concurrent: int = MAX_CONCURRENT_PER_STREAM,
) -> None:
    """Serve requests arriving on one inbound rpc stream until it ends.

    ``peer_id`` must come from the authenticated connection. Never raises an
    ``Exception`` (only ``Cancelled``): a misbehaving peer costs its stream only.
    A request frame must end within ``FRAME_DEADLINE`` of its first bytes, and
    fit in what ``partial`` has left, or the stream is reset.
    """
    send, recv = trio.open_memory_channel[bytes](max(max_concurrent, 1))
    limiter = trio.Semaphore(max_concurrent)
    graceful = False
    counters.open_streams += 1

    async def handle(request_id: int, payload: bytes) -> None:
        try:
            try:
                reply = await on_request(peer_id, payload)
            except Exception:
                counters.handler_errors += 1
                log.exception("request handler failed for request %d from %s; no reply sent", request_id, peer_id)
                return
            if not isinstance(reply, bytes | bytearray | memoryview):
                counters.handler_errors += 1
                log.error("request handler returned %s, not bytes; no reply sent", type(reply).__name__)
                return
            if len(reply) > max_frame:
                counters.handler_errors += 1
                log.error("reply of %d bytes to %s exceeds max_frame=%d; no reply sent", len(reply), peer_id, max_frame)
                return
            try:
                await _queue(send, encode_frame(request_id, bytes(reply), max_frame))
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                log.debug("rpc stream from %s closed before reply %d", peer_id, request_id)
        finally:
            limiter.release()

    async def writer(scope: trio.CancelScope) -> None:
        try:
            await _write_loop(stream, recv)
        except Exception as exc:
            log.debug("rpc reply write to %s failed: %r", peer_id, exc)
            scope.cancel()

    try:
        async with trio.open_nursery() as outer:
            outer.start_soon(writer, outer.cancel_scope)
            async with trio.open_nursery() as handlers:
                decoder = FrameDecoder(max_frame)
                began = math.inf  # when the unfinished frame's first bytes came
                while True:
                    with trio.move_on_at(began + FRAME_DEADLINE) as waiting:
                        try:
                            data = await _read(stream)
                        except Exception as exc:
                            log.debug("rpc stream from %s broke: %r", peer_id, exc)
                            outer.cancel_scope.cancel()
                            break
                    if waiting.cancelled_caught:
                        counters.frames_rejected += 1
                        warnings.warn("unfinished", "peer %s left a request frame unfinished for %g s, resetting the "
                                      "stream", peer_id, FRAME_DEADLINE)
                        outer.cancel_scope.cancel()
                        break
                    if data is None:
                        if decoder.pending:
                            counters.frames_rejected += 1
                            warnings.warn("cut", "peer %s closed its rpc stream in the middle of a frame", peer_id)
                            outer.cancel_scope.cancel()
                        else:
                            # Clean end: let running handlers finish and reply.
                            graceful = True
                        break
                    try:
                        frames = decoder.feed(data)
                    except RemoteProtocolError as exc:
                        counters.frames_rejected += 1
                        warnings.warn("bad", "bad request frame from %s, closing the stream: %s", peer_id, exc)
                        outer.cancel_scope.cancel()
                        break
                    if not decoder.pending:
                        began = math.inf
                    elif frames or began == math.inf:  # a new frame began
                        began = trio.current_time()
                    if not partial.hold(stream, decoder.pending, began, peer_id, outer.cancel_scope):
                        counters.frames_rejected += 1
                        warnings.warn("full", "unfinished request frames fill %d MiB: reset the newest, from %s",
                                      partial.limit >> 20, peer_id)
                        outer.cancel_scope.cancel()
                        break
                    paused = trio.current_time()
                    for request_id, payload in frames:
                        await limiter.acquire()
                        counters.requests_received += 1
                        handlers.start_soon(handle, request_id, payload)
                    began += trio.current_time() - paused  # not reading, waiting for our own handlers, is not its time
            send.close()  # the writer drains what is queued, then returns
    except Exception:
        log.exception("unexpected failure serving the rpc stream from %s", peer_id)
    finally:
        partial.forget(stream)
        await discard_stream(stream, graceful=graceful)
        counters.open_streams -= 1

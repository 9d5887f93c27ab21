"""Messages a node builds from what peers sent (their ids, an error quoting their input) stay small
enough to send, and one that would not is a failed send, never the end of the node."""

from __future__ import annotations

import trio

from compute import ComputeService
from compute.runner import MAX_ERROR_CHARS
from jobs import ExecutionSide, ExecutionState, JobSpec, Resources, Unsendable
from jobs.messages import (
    QUERY_BYTES,
    QUERY_IDS,
    Announce,
    Bid,
    NodeInfo,
    OpenQuery,
    Reply,
    Result,
    StatusQuery,
    decode,
    query_parts,
)
from node.dispatch import Dispatcher, MessagePeers
from node.net.wire import DEFAULT_MAX_FRAME
from storage import HttpInput, InputRegistry
from tests import memnet
from tests.memnet import MemoryHub, memory_node, raw_peer

LONGEST_ID = 128  # jobs.model.Identifier
SOURCE = "https://example.com/" + "a" * 70_000  # far over what Result.error carries (64 KiB)


class _Requester:
    """A rogue requester's side: accepts every bid, keeps the results, says every job is open."""

    def __init__(self) -> None:
        self.results: list[Result] = []

    async def handle(self, peer: str, message: object) -> Reply:
        if isinstance(message, OpenQuery):
            return Reply(states=dict.fromkeys(message.job_ids, "open"))
        if isinstance(message, Result):
            self.results.append(message)
        return Reply(verdict="accepted")

    def take_output(self, peer: str, message: object) -> Reply:
        return Reply(verdict="rejected")

    def on_node_info(self, origin: str, info: object) -> None:
        pass


def _rogue(hub: MemoryHub, requester: _Requester | None = None) -> MessagePeers:
    return raw_peer(hub, "rogue", Dispatcher(requester=requester))


class _WithInputs(ComputeService):
    def __init__(self, **kw: object) -> None:
        super().__init__(inputs=InputRegistry([HttpInput()]), **kw)  # type: ignore[arg-type]


async def test_an_input_that_makes_a_huge_error_fails_its_job_and_the_node_carries_on(tmp_path, autojump_clock,
                                                                                   monkeypatch):
    """The fetch's error quotes the 70,000-character source: the node stored it, could not build the Result
    for it (Result.error is bounded) and died, and again at every restart, as it re-delivers what it stored."""
    monkeypatch.setattr(memnet, "ComputeService", _WithInputs)
    hub, rogue_requester = MemoryHub(), _Requester()
    async with memory_node(hub, "c", tmp_path / "c", requester=False) as c:
        rogue = _rogue(hub, rogue_requester)
        spec = JobSpec.model_validate({"engine": {"name": "noop"}, "inputs": [{"source": SOURCE, "path": "/in"}]})
        reply = await rogue.request("c", Announce(job_id="j-1", spec=spec, requester="rogue", candidates=["c"]),
                                    timeout=5)
        assert reply.verdict == "pending"
        with trio.fail_after(30):
            while not rogue_requester.results:
                await trio.sleep(0.1)
        (result,) = rogue_requester.results
        assert result.result is None and result.signed_by(rogue, "c")
        assert len(result.error) < MAX_ERROR_CHARS + 100 and "more characters" in result.error
        (ex,) = await c.store.executions_of(ExecutionSide.COMPUTE, "j-1")
        assert ex.state is ExecutionState.FAILED and ex.error == result.error  # recorded as sent
        assert c.compute.capacity.free == c.compute.capacity.total
        # the node is still there: it bids on the next job
        reply = await rogue.request("c", Announce(job_id="j-2", spec=JobSpec.model_validate(
            {"engine": {"name": "noop"}}), requester="rogue", candidates=["c"]), timeout=5)
        assert reply.verdict == "pending"


async def test_a_node_running_more_executions_than_one_status_query_holds_is_asked_in_several(
        tmp_path, autojump_clock, monkeypatch):
    """A requester asked one query for all of a node's executions: past 10,000 (or 1 MiB of ids, chosen by
    the node) it could not build or send it, and the failure ended the requester's node."""
    monkeypatch.setattr("jobs.messages.QUERY_IDS", 3)  # the rule, at a size a test can fill
    hub = MemoryHub()
    hub.frames = []
    async with memory_node(hub, "req", tmp_path / "req", compute=False) as req:
        rogue = _rogue(hub)  # it takes every job, then forgets them all (its dispatcher has no compute role)
        big = Resources(cpu=64, memory="64GiB", disk="64GiB")
        req.requester.on_node_info("rogue", NodeInfo(peer_id="rogue", engines=["noop"], max_per_job=big,
                                                     total=big, free=big))
        spec = JobSpec.model_validate({"engine": {"name": "noop"}, "cache": False, "timeout": 3600})
        ids = [(await req.requester.submit(spec, "alice"))[0].id for _ in range(7)]
        for i, job_id in enumerate(ids):
            reply = await rogue.request("req", Bid(job_id=job_id, execution_id=f"e-{i}"), timeout=5)
            assert reply.verdict == "accepted"
        await trio.sleep(3)
        asked = [decode(data).execution_ids for way, _, to, data in hub.frames
                 if way == "request" and to == "rogue" and decode(data).kind == "status"]
        assert asked and max(map(len, asked)) <= 3
        assert {e for query in asked for e in query} == {f"e-{i}" for i in range(7)}
        for job_id in ids:  # the node said it knows none of them: every one was re-offered
            (x,) = [x for x in (await req.requester.describe(job_id)).executions if x.node_id == "rogue"]
            assert x.state is ExecutionState.FAILED and "no longer knows" in x.reason


async def test_a_backlog_of_long_job_ids_is_asked_about_in_messages_that_can_be_sent(tmp_path, autojump_clock):
    """A full node asked one OpenQuery for every backlogged job of a requester: 8,100 ids of 128 characters
    made it over 1 MiB, the transport refused it, and the error ended the compute node."""
    hub = MemoryHub()
    hub.frames = []
    async with memory_node(hub, "c", tmp_path / "c", requester=False,
                           total=Resources(cpu=1, memory="1GiB", disk="1GiB")) as c:
        rogue = _rogue(hub, _Requester())
        busy = JobSpec.model_validate({"engine": {"name": "noop"}, "timeout": 3600,
                                       "resources": {"cpu": 1, "memory": "1GiB", "disk": "1GiB"}})
        c.noop.hooks.delay = 20  # it runs the rogue's big job while the small ones pile up
        await rogue.request("c", Announce(job_id="j-big", spec=busy, requester="rogue", candidates=["c"]), timeout=5)
        await trio.sleep(1)
        assert not c.compute.capacity.free.cpu
        small = JobSpec.model_validate({"engine": {"name": "noop"}})
        count = 8_100  # 1.06 MB of ids
        for i in range(count):
            job_id = f"j-{i:06d}-".ljust(LONGEST_ID, "x")
            await rogue.request("c", Announce(job_id=job_id, spec=small, requester="rogue", candidates=["c"]),
                                timeout=5)
        assert len(c.compute.backlog) == count
        await trio.sleep(30)  # the big job ends; the backlog loop asks which jobs are open, then bids
        queries = [data for way, _, to, data in hub.frames if way == "request" and to == "rogue"
                   and decode(data).kind == "open_query"]
        assert queries and all(len(data) <= DEFAULT_MAX_FRAME for data in queries)
        bids = [data for way, _, to, data in hub.frames if way == "request" and to == "rogue"
                and decode(data).kind == "bid"]
        assert len(bids) > 1  # it went on bidding from its backlog


def test_ids_a_peer_chose_are_asked_about_in_queries_that_each_fit_a_message():
    plain, escaped = "x" * LONGEST_ID, "\x01" * LONGEST_ID  # 6 bytes a character in JSON
    for ids in ([plain] * 25_000, [escaped] * 3_000, [f"{i}" for i in range(25_000)]):
        parts = list(query_parts(ids))
        assert [i for part in parts for i in ids[part]] == ids  # all of them, in order, once
        for part in parts:
            # constructed unchecked: the escaped ids are ones no message admits now (jobs.model.Identifier),
            # and query_parts still packs them within a message
            for query in (OpenQuery.model_construct(job_ids=ids[part]),
                          StatusQuery.model_construct(execution_ids=ids[part])):
                assert len(query.model_dump_json().encode()) <= QUERY_BYTES + 100
    assert len(list(query_parts([plain] * 25_000))) == 7  # 4,000 a query: not a query for each
    assert len(list(query_parts(["x"] * 25_000))) == -(-25_000 // QUERY_IDS)  # short ids: QUERY_IDS a query


async def test_a_message_too_large_for_any_peer_is_not_sent_and_is_a_failed_request(tmp_path, autojump_clock):
    hub = MemoryHub()
    hub.frames = []
    async with memory_node(hub, "c", tmp_path / "c", requester=False):
        rogue = _rogue(hub)
        too_many = ["y" * LONGEST_ID] * 10_000  # valid, and 1.3 MB encoded
        try:
            await rogue.request("c", OpenQuery(job_ids=too_many), timeout=5)
        except Unsendable as e:
            assert not e.retryable and "bytes exceeds" in str(e)
        else:
            raise AssertionError("an oversized request was sent")
        assert not hub.frames  # nothing went out

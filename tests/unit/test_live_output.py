"""Live output (``shoal logs -f``): what a run writes, what a requester keeps and shows, and from whom."""

from __future__ import annotations

import threading

from executors import LiveOutput
from jobs.messages import LIVE_CAP, Output
from node.api.streams import rest_of_record
from requester.logs import LiveOutputs

RUNNER = "node-a"


def out(data: bytes, offset: int = 0, *, execution: str = "x1", stream: str = "stdout", job: str = "j1") -> Output:
    return Output(job_id=job, execution_id=execution, stream=stream, offset=offset, data=data)


# -- the compute side: what a run writes ----------------------------------------------------------------


def test_a_run_output_is_taken_once_in_order_with_its_offset():
    live = LiveOutput()
    live.write("stdout", b"one ")
    live.write("stdout", b"two ")
    live.write("stderr", b"oops")
    assert live.take("stdout") == (0, b"one two ")
    live.write("stdout", b"three")
    assert live.take("stdout") == (8, b"three")
    assert live.take("stdout") == (13, b"")
    assert live.take("stderr") == (0, b"oops")


def test_what_could_not_be_sent_goes_back_in_front_of_newer_output():
    live = LiveOutput()
    live.write("stdout", b"abc")
    offset, data = live.take("stdout")
    live.write("stdout", b"def")
    live.give_back("stdout", offset, data)
    assert live.take("stdout") == (0, b"abcdef")


def test_a_run_shows_at_most_its_cap_live():
    live = LiveOutput(cap=10)
    live.write("stdout", b"0123456")
    live.write("stdout", b"789abcdef")
    assert live.take("stdout") == (0, b"0123456789")
    live.write("stdout", b"more")
    assert live.take("stdout") == (10, b"")


def test_writes_from_threads_are_all_kept():
    live = LiveOutput()
    threads = [threading.Thread(target=lambda: [live.write("stdout", b"x") for _ in range(1000)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert live.take("stdout") == (0, b"x" * 4000)


# -- the requester side: what it keeps, and from whom ----------------------------------------------------


def test_only_the_node_running_the_execution_is_heard():
    outputs = LiveOutputs()
    assert outputs.take("rogue", out(b"forged"), RUNNER).verdict == "rejected"
    assert outputs.take("rogue", out(b"forged"), None).verdict == "rejected"  # no such running execution
    assert outputs.read("j1", "stdout", 0) == (0, b"")
    assert outputs.take(RUNNER, out(b"honest"), RUNNER).verdict == "accepted"
    assert outputs.read("j1", "stdout", 0) == (0, b"honest")


def test_one_execution_is_shown_per_job():
    outputs = LiveOutputs()
    assert outputs.take(RUNNER, out(b"first", execution="x1"), RUNNER).verdict == "accepted"
    assert outputs.take("node-b", out(b"second", execution="x2"), "node-b").verdict == "rejected"
    assert outputs.read("j1", "stdout", 0) == (0, b"first")


def test_a_resent_chunk_is_kept_once_and_a_gap_skips_ahead():
    outputs = LiveOutputs()
    outputs.take(RUNNER, out(b"hello "), RUNNER)
    outputs.take(RUNNER, out(b"hello world", 0), RUNNER)  # the reply to the first was lost: sent again, longer
    assert outputs.read("j1", "stdout", 0) == (0, b"hello world")
    outputs.take(RUNNER, out(b"later", 100), RUNNER)  # bytes 11..99 never arrived
    assert outputs.read("j1", "stdout", 0) == (100, b"later")
    assert outputs.read("j1", "stdout", 102) == (102, b"ter")


def test_streams_are_kept_apart_and_bounded():
    outputs = LiveOutputs(keep=8)
    outputs.take(RUNNER, out(b"0123456789"), RUNNER)
    outputs.take(RUNNER, out(b"err", stream="stderr"), RUNNER)
    assert outputs.read("j1", "stdout", 0) == (2, b"23456789")  # a follower that fell behind skips ahead
    assert outputs.read("j1", "stderr", 0) == (0, b"err")


def test_over_budget_the_job_written_to_longest_ago_is_forgotten():
    outputs = LiveOutputs(keep=100, budget=10)
    outputs.take(RUNNER, out(b"aaaaaa", job="old"), RUNNER)
    outputs.take(RUNNER, out(b"bbbbbb", job="new"), RUNNER)
    assert outputs.read("old", "stdout", 0) == (0, b"")
    assert outputs.read("new", "stdout", 0) == (0, b"bbbbbb")


def test_a_follower_is_woken_by_new_output_and_by_the_end():
    outputs = LiveOutputs()
    assert outputs.changed("j1") is None
    outputs.take(RUNNER, out(b"a"), RUNNER)
    bell = outputs.changed("j1")
    assert bell is not None and not bell.is_set()
    outputs.take(RUNNER, out(b"b", 1), RUNNER)
    assert bell.is_set()
    bell = outputs.changed("j1")
    outputs.forget("j1")
    assert bell.is_set() and outputs.read("j1", "stdout", 0) == (0, b"")


# -- the follower: the rest of the record ----------------------------------------------------------------


def test_a_follower_gets_the_rest_of_the_record_after_the_live_part():
    assert rest_of_record("first\nsecond\n", False, b"first\n", 0) == b"second\n"
    assert rest_of_record("first\nsecond\n", False, b"rst\n", 2) == b"second\n"  # resumed at byte 2
    assert rest_of_record("first\nsecond\n", False, b"", 0) == b"first\nsecond\n"  # nothing came live
    assert rest_of_record("first\nsecond\n", False, b"first\nsecond\n", 0) == b""


def test_a_record_that_differs_from_what_was_shown_live_is_named_not_spliced():
    for record, truncated in (("another run\n", False), ("first\nsecond\n", True)):
        rest = rest_of_record(record, truncated, b"first\n", 0)
        assert b"record differs" in rest and b"second" not in rest


def test_a_node_streams_no_more_live_output_than_an_honest_run_has():
    """Each follower is sent what a node streams: a hostile node sent 200 MiB, and the job's page in a browser
    froze under it. An honest run shows LIVE_CAP bytes of a stream live; the result holds the rest."""
    outputs = LiveOutputs()
    chunk = b"x" * 64 * 1024
    for offset in range(0, LIVE_CAP, len(chunk)):
        assert outputs.take(RUNNER, out(chunk, offset), RUNNER).verdict == "accepted"
    past = outputs.take(RUNNER, out(b"y", LIVE_CAP), RUNNER)
    assert past.verdict == "rejected" and "live output ends" in past.reason
    skipped = outputs.take(RUNNER, out(b"z" * 10, 50 * LIVE_CAP), RUNNER)  # skipping ahead is no way round
    assert skipped.verdict == "rejected"
    start, data = outputs.read("j1", "stdout", 0)
    assert start + len(data) == LIVE_CAP and b"y" not in data and b"z" not in data

"""Every job has a finite bid deadline: new submissions without one are refused; records from
before keep loading and wait at most MAX_BID_DEADLINE."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs import JobSpec
from jobs.spec import MAX_BID_DEADLINE
from jobs.views import SubmitRequest, SweepSubmitRequest


def test_a_new_job_or_sweep_needs_a_finite_bid_deadline() -> None:
    for bid in (None, MAX_BID_DEADLINE + 1):
        spec = {"engine": {"name": "noop"}, "deadlines": {"bid": bid}}
        with pytest.raises(ValidationError, match=r"deadlines\.bid"):
            SubmitRequest.model_validate({"spec": spec})
        with pytest.raises(ValidationError, match=r"job\.deadlines\.bid"):
            SweepSubmitRequest.model_validate({"spec": {"job": spec, "grid": {"x": ["1"]}}})
    ok = SubmitRequest.model_validate({"spec": {"engine": {"name": "noop"}, "deadlines": {"bid": MAX_BID_DEADLINE}}})
    assert ok.spec.deadlines.bid_limit == MAX_BID_DEADLINE


def test_a_stored_spec_without_a_limit_still_loads_and_is_capped() -> None:
    """A job an older node stored with ``bid: null`` (or a huge one) is restored, and ends in time."""
    for bid in (None, 1e12):
        spec = JobSpec.model_validate({"engine": {"name": "noop"}, "deadlines": {"bid": bid}})
        assert spec.deadlines.bid_limit == MAX_BID_DEADLINE


def test_the_queue_timeout_defaults_to_the_longest_a_job_may_wait_and_a_stored_one_is_kept() -> None:
    """#19: a batch larger than its cluster queues instead of failing after 600 s (the old default);
    a job stored with the old default keeps it."""
    assert JobSpec.model_validate({"engine": {"name": "noop"}}).deadlines.bid_limit == MAX_BID_DEADLINE
    stored = JobSpec.model_validate({"engine": {"name": "noop"}, "deadlines": {"bid": 600}})
    assert stored.deadlines.bid_limit == 600


@pytest.mark.parametrize("phase", ["min_bids", "silence", "result_grace"])
def test_a_new_job_or_sweep_cannot_wait_on_a_silent_node_for_ever(phase: str) -> None:
    """A silence or a result grace without bound would keep a job whose node died running for ever."""
    for value in (1e30, MAX_BID_DEADLINE + 1):
        spec = {"engine": {"name": "noop"}, "deadlines": {phase: value}}
        with pytest.raises(ValidationError, match=rf"deadlines\.{phase}: at most"):
            SubmitRequest.model_validate({"spec": spec})
        with pytest.raises(ValidationError, match=rf"job\.deadlines\.{phase}: at most"):
            SweepSubmitRequest.model_validate({"spec": {"job": spec, "grid": {"x": ["1"]}}})
        assert JobSpec.model_validate(spec).deadlines.model_dump()[phase] == value  # a stored one still loads
    for value in (float("inf"), float("nan")):  # no spec, new, stored or a peer's, holds one
        with pytest.raises(ValidationError, match=rf"deadlines\.{phase}\n.*finite number"):
            JobSpec.model_validate({"engine": {"name": "noop"}, "deadlines": {phase: value}})
    ok = {"engine": {"name": "noop"}, "deadlines": {phase: MAX_BID_DEADLINE}}
    assert SubmitRequest.model_validate({"spec": ok}).spec.deadlines.model_dump()[phase] == MAX_BID_DEADLINE


def test_times_in_a_spec_take_units_and_mean_the_same_job_as_in_seconds() -> None:
    """A quant writes ``timeout: 10m`` in a job file, the SDK or the API, as ``memory: 512MiB``."""
    with_units = SubmitRequest.model_validate({"spec": {"engine": {"name": "noop"}, "timeout": "1h30m",
                                                        "deadlines": {"bid": "1d", "silence": "45s"}}}).spec
    in_seconds = JobSpec.model_validate({"engine": {"name": "noop"}, "timeout": 5400,
                                         "deadlines": {"bid": 86400, "silence": 45}})
    assert (with_units.timeout, with_units.deadlines.bid, with_units.deadlines.silence) == (5400, 86400, 45)
    assert with_units.cache_key() == in_seconds.cache_key()  # the same job: its result is reused
    for bad, why in (("10x", "cannot read duration '10x'"), ("1e400", "cannot read duration"),
                     ("0m", "greater than 0"), ("8d", "at most 7d"), (True, "a duration must")):
        with pytest.raises(ValidationError, match=why):
            JobSpec.model_validate({"engine": {"name": "noop"}, "timeout": bad})

"""The sweep model: how indexes map to values, and what a sweep spec refuses."""

from __future__ import annotations

import itertools
import json
import re

import pytest
from pydantic import ValidationError

from jobs import JobState
from jobs.spec import Shard
from jobs.sweep import SweepSpec, compress, index_ranges

NOOP = {"engine": {"name": "noop"}}


def spec(**kw) -> SweepSpec:
    job = kw.pop("job", {})
    return SweepSpec.model_validate({"job": {**NOOP, **job}, **kw})


def test_a_grid_enumerates_like_itertools_product():
    s = spec(grid={"a": ["1", "2"], "b": ["x", "y", "z"], "c": ["p", "q"]})
    assert s.count == 12
    expected = [dict(zip("abc", combo, strict=True)) for combo in itertools.product("12", "xyz", "pq")]
    assert [s.values(i) for i in range(12)] == expected


def test_parts_combine_grid_zip_items_and_shards():
    s = spec(grid={"g": ["0", "1"]}, zip={"z1": ["a", "b"], "z2": ["A", "B"]}, items=[{"it": "u"}, {"it": "v"}],
             shard_inputs=3, job={"inputs": [{"source": "ipfs://bafy", "path": "/data"}]})
    assert s.count == 2 * 2 * 2 * 3
    assert s.values(23) == {"g": "1", "z1": "b", "z2": "B", "it": "v", "SHOAL_SHARD": "2"}
    job = s.job_for(23)
    assert job.inputs[0].shard == Shard(index=2, count=3)
    assert job.env["SHOAL_INDEX"] == "23" and job.env["SHOAL_COUNT"] == "24"
    with pytest.raises(IndexError):
        s.values(24)


def test_the_context_is_never_the_sharded_input():
    s = spec(shard_inputs=2, job={"inputs": [{"source": "ipfs://ctx", "path": "/context"},
                                             {"source": "ipfs://data", "path": "/data"}]})
    assert s.job_for(1).inputs[1].shard == Shard(index=1, count=2)
    assert s.job_for(1).inputs[0].shard is None


@pytest.mark.parametrize(("kw", "message"), [
    ({}, "a sweep needs parameters"),
    ({"grid": {"SHOAL_INDEX": ["1"]}}, "SHOAL_INDEX is set by Shoal"),
    ({"grid": {"bad-name": ["1"]}}, "invalid parameter names"),
    ({"grid": {"x": []}}, "give at least one value"),
    ({"zip": {"a": ["1", "2"], "b": ["1"]}}, "same length"),
    ({"items": [{"a": "1"}, {"b": "2"}]}, "same parameters"),
    ({"grid": {"x": ["1"]}, "job": {"deal": {"concurrency": 2}}}, "runs each index once"),
    ({"grid": {"x": ["1"]}, "job": {"deal": {"concurrency": 2, "confidence": 2}}}, "with its own confidence"),
    ({"grid": {"x": ["1"]}, "confidence": 6}, "less than or equal to 5"),
    ({"shard_inputs": 2}, "name the input to shard"),
    ({"shard_inputs": 2, "shard_path": "/nope", "job": {"inputs": [{"source": "ipfs://x", "path": "/d"}]}},
     "no input is mounted at /nope"),
    ({"grid": {"x": ["1"]}, "success_output": "out"}, "only applies with success=any"),
    ({"grid": {"x": ["1"]}, "success": "any", "success_output": "out"}, "not one of the job's outputs"),
    ({"grid": {"a": [str(i) for i in range(1001)], "b": [str(i) for i in range(1001)]}}, "at most 1000000"),
])
def test_bad_sweeps_are_refused_with_a_reason(kw, message):
    with pytest.raises(ValidationError, match=message):
        spec(**kw)


@pytest.mark.parametrize("kw", [{"grid": {"x": ["1", "v4lue\0rest"]}}, {"zip": {"x": ["v4lue\0rest"]}},
                                {"items": [{"x": "1"}, {"x": "v4lue\0rest"}]}])
def test_a_parameter_value_no_environment_can_hold_is_refused(kw):
    with pytest.raises(ValidationError) as e:  # taken, each index failed on the compute node that ran it
        spec(**kw)
    assert "a NUL character in a value of: x" in str(e.value)
    assert "v4lue" not in str(e.value)


def test_a_sweep_without_confidence_reads_and_hashes_as_before_it_existed():
    plain = spec(grid={"x": ["1"]})
    assert "confidence" not in json.loads(plain.model_dump_json())  # a node of the last release still takes it
    assert plain.digest() == spec(grid={"x": ["1"]}, confidence=0).digest()
    verified = spec(grid={"x": ["1"]}, confidence=2)
    assert SweepSpec.model_validate_json(verified.model_dump_json()).confidence == 2
    assert verified.digest() != plain.digest()  # an idempotent repeat must not mix the two up


def test_a_sweep_without_max_failures_reads_and_hashes_as_before_it_existed():
    plain = spec(grid={"x": ["1"]})
    assert "max_failures" not in json.loads(plain.model_dump_json())
    stopping = spec(grid={"x": ["1"]}, max_failures=0)
    assert SweepSpec.model_validate_json(stopping.model_dump_json()).max_failures == 0
    assert stopping.digest() != plain.digest()
    with pytest.raises(ValidationError):
        spec(grid={"x": ["1"]}, max_failures=-1)


def test_shards_are_contiguous_sorted_runs_of_near_equal_size():
    names = [f"f{i}" for i in range(10)]
    shards = [Shard(index=i, count=4).pick(list(reversed(names))) for i in range(4)]
    assert [len(s) for s in shards] == [2, 3, 2, 3]
    assert [name for shard in shards for name in shard] == sorted(names)
    assert Shard(index=4, count=5).pick(["a"]) == ["a"] and Shard(index=0, count=5).pick(["a"]) == []


def test_ranges_group_consecutive_indexes_and_keep_the_first_failure_reason():
    states = [(0, JobState.COMPLETED, ""), (1, JobState.COMPLETED, ""), (2, JobState.FAILED, "exit code 1"),
              (3, JobState.FAILED, "exit code 2"), (4, JobState.COMPLETED, "")]
    assert [str(r) for r in index_ranges(states)] == ["0-1 completed", "2-3 failed: exit code 1", "4 completed"]
    assert compress([0, 1, 2, 5, 7, 8]) == [(0, 3), (5, 6), (7, 9)]


def test_ranges_stop_one_past_their_limit_whatever_the_indexes_left() -> None:
    """A description shows at most 1,000 ranges: a million indexes in alternating states took 4.2 s to turn
    into a million ranges, on the node's event loop, holding the sweep's lock (red team, helper-56)."""
    alternating = ((i, (JobState.COMPLETED, JobState.FAILED)[i % 2], "exit code 1") for i in range(1_000_000))
    ranges = index_ranges(alternating, limit=1000)
    assert len(ranges) == 1001 and [str(r) for r in ranges[:2]] == ["0 completed", "1 failed: exit code 1"]
    assert len(index_ranges([(0, JobState.PENDING, ""), (1, JobState.PENDING, "")], limit=1)) == 1


def test_numbers_and_booleans_in_a_sweep_read_as_text_and_hash_as_the_same_text_does():
    numbers = SweepSpec.model_validate({"job": {"engine": {"name": "noop"}}, "grid": {"x": [1, 2.5]},
                                        "zip": {"y": [True]}, "items": [{"z": 0}]})
    text = SweepSpec.model_validate({"job": {"engine": {"name": "noop"}}, "grid": {"x": ["1", "2.5"]},
                                     "zip": {"y": ["true"]}, "items": [{"z": "0"}]})
    assert numbers.grid == {"x": ["1", "2.5"]} and numbers.items == [{"z": "0"}]
    assert numbers.digest() == text.digest()


def test_a_python_or_wasm_jobs_args_take_the_index_values_as_a_shell_would():
    """A script built on argparse was rewritten to read the environment: --seed '$seed' reached it as is."""
    python = {"engine": {"name": "python", "main": "main.py",
                         "args": ["--seed", "$seed", "--vol=${vol}", "$$seed", "$HOME", "#$SHOAL_INDEX"]}}
    s = spec(job=python, grid={"seed": ["1", "2"], "vol": ["0.1"]})
    assert s.job_for(1).engine.args == ["--seed", "2", "--vol=0.1", "$seed", "$HOME", "#1"]
    assert s.job_for(1).env["seed"] == "2"  # as before
    wasm = spec(job={"engine": {"name": "wasm", "module": "/m.wasm", "args": ["$x"]}}, grid={"x": ["7"]})
    assert wasm.job_for(0).engine.args == ["7"]
    # a docker job's args often go to a shell, whose $variables are its own: they reach it as written
    shell = spec(job={"engine": {"name": "docker", "image": "busybox", "entrypoint": ["sh", "-c"],
                                 "args": ["x=5; echo $x"]}}, grid={"x": ["7"]})
    assert shell.job_for(0).engine.args == ["x=5; echo $x"]


def test_args_that_would_grow_past_their_bound_with_the_values_in_are_refused():
    """A small template and small values (both under any request's size) multiplied: 100,000 "$x" and a
    100 kB value made every index's spec 10 GB, on every node that would run one."""
    job = {"engine": {"name": "python", "code": "pass", "args": ["$x"] * 1_000}}
    with pytest.raises(ValidationError, match="an index's args could take 1,000,000 characters; at most 262,144"):
        spec(job=job, grid={"x": ["a" * 1_000, "b"]})
    with pytest.raises(ValidationError, match="at most 262,144"):  # a value from the template's env counts too
        wasm = {"name": "wasm", "module": "/m", "args": ["${y}"] * 900}
        spec(job={"engine": wasm, "env": {"y": "c" * 300}}, grid={"x": ["1"]})
    assert spec(job=job, grid={"x": ["a" * 100]}).job_for(0).engine.args == ["a" * 100] * 1_000  # 100,000: fine
    docker = {"engine": {"name": "docker", "image": "busybox", "args": ["$x"] * 1_000}}  # as written: no growth
    assert spec(job=docker, grid={"x": ["a" * 1_000]}).count == 1


def test_an_index_gets_no_more_environment_variables_than_a_job_may_have():
    """A sweep's parameters become each index's environment, where a job is refused past 256 variables: 3,000
    one-value axes ran a job with 3,007 (and 60,000 fit in a 1 MiB request, each listed index taking 0.45 s)."""
    many = {f"P{i}": ["1"] for i in range(3_000)}
    with pytest.raises(ValidationError, match="an index's environment would hold 3,002 variables; at most 256"):
        spec(grid=many)
    with pytest.raises(ValidationError, match="would hold 257 variables"):  # the template's env counts
        spec(grid={f"P{i}": ["1"] for i in range(250)}, job={"env": {f"E{i}": "1" for i in range(5)}})
    largest = spec(grid={f"P{i}": ["1"] for i in range(250)}, job={"env": {f"E{i}": "1" for i in range(4)}})
    job = largest.job_for(0)
    assert len(job.env) == 256 and type(job).model_validate_json(job.model_dump_json()) == job


def test_an_index_whose_parameters_would_be_large_is_refused():
    """Every listing of a sweep's indexes carries each one's parameters: bounded, as its args are."""
    with pytest.raises(ValidationError, match=re.escape("an index's parameters could take 70,001 characters (names "
                                                        "and longest values); at most 65,536")):
        spec(grid={"x": ["a" * 70_000, "b"]})
    with pytest.raises(ValidationError, match="at most 65,536"):  # the longest value of each parameter adds up
        spec(grid={"x": ["a" * 33_000]}, items=[{"y": "b"}, {"y": "c" * 33_000}])
    assert spec(zip={"prompt": ["a" * 60_000, "b"]}).values(0) == {"prompt": "a" * 60_000}

"""Secret env: validated like env, never in what is announced, shown, hashed or cached; sealed at rest."""

from __future__ import annotations

import os
import stat

import pytest
import trio
from pydantic import ValidationError

from cli.errors import CLIError
from cli.specs import JobFlags, SweepFlags, build_spec, build_sweep
from compute.runner import Runner
from executors import ExecutorRegistry, NoopExecutor, RunRequest
from executors.noop import NoopHooks
from jobs import Execution, Job, JobSpec, JobState
from jobs.errors import MalformedMessage
from jobs.messages import Announce, Decision, Reply, decode, encode
from jobs.spec import MAX_SECRET_BYTES, MAX_SECRETS
from jobs.sweep import SweepSpec
from node.store import Store
from node.store.db import ExpiredRecords
from node.store.sealed import Sealer, SealError
from node.store.writer import StoreUnavailable

SECRET = "s3cr3t-value-7f1c9e"


def spec(**kw) -> JobSpec:
    return JobSpec.model_validate({"engine": {"name": "noop"}, "env": {"PLAIN": "visible"},
                                   "secret_env": {"TOKEN": SECRET}, **kw})


def problems(exc: ValidationError) -> str:
    return " ".join(e["msg"] for e in exc.errors())


def test_secret_names_follow_the_env_rules_and_the_errors_never_quote_a_value():
    with pytest.raises(ValidationError) as e:
        spec(secret_env={"1BAD": SECRET, "ok": SECRET})
    assert "invalid environment variable names: 1BAD" in problems(e.value)
    assert SECRET not in str(e.value)


@pytest.mark.parametrize("field", ["env", "secret_env"])
def test_a_value_no_environment_can_hold_is_refused_naming_its_key_only(field):
    with pytest.raises(ValidationError) as e:  # it was taken, and every run of it failed on the compute node
        spec(**{field: {"NUL_VALUE": f"{SECRET}\0rest"}})
    assert "a NUL character in the value of: NUL_VALUE" in problems(e.value)
    assert SECRET not in str(e.value) and SECRET not in problems(e.value)


@pytest.mark.parametrize("key", ["A=B", "A\0B", "A\n"])
def test_a_name_no_environment_can_hold_is_refused(key):
    with pytest.raises(ValidationError, match="invalid environment variable names"):
        spec(env={key: "x"})


def test_secrets_are_bounded_in_count_and_size():
    with pytest.raises(ValidationError, match=f"at most {MAX_SECRETS}"):
        spec(secret_env={f"K{i}": "v" for i in range(MAX_SECRETS + 1)})
    with pytest.raises(ValidationError, match=f"at most {MAX_SECRET_BYTES}"):
        spec(secret_env={"BIG": "x" * MAX_SECRET_BYTES})
    assert spec(secret_env={f"K{i}": "v" for i in range(MAX_SECRETS)}).secret_env


def test_a_name_is_either_plain_or_secret():
    with pytest.raises(ValidationError, match="set in both env and secret_env: TOKEN"):
        spec(env={"TOKEN": "plain"})


def test_the_value_is_not_in_a_repr():
    s = spec()
    assert SECRET not in repr(s) and SECRET not in str(s)
    assert SECRET not in repr(Reply(verdict="accepted", secret_env=s.secret_env))


def test_a_job_with_secrets_has_no_cache_key_and_hashes_names_only():
    plain = JobSpec.model_validate({"engine": {"name": "noop"}, "env": {"PLAIN": "visible"}})
    assert plain.cache_key() is not None
    assert spec().cache_key() is None
    assert spec().digest() == spec(secret_env={"TOKEN": "another value"}).digest()  # nothing derived from it kept
    assert spec().digest() != spec(secret_env={"OTHER": SECRET}).digest()
    assert spec().digest() != plain.digest()
    assert SECRET.encode() not in spec().canonical_json()
    assert b"secret_env" not in plain.canonical_json()  # jobs without secrets hash (and seed) as before


def test_an_announcement_never_carries_the_secrets():
    ann = Announce(job_id="j-1", spec=spec(), requester="req")
    assert ann.spec.secret_env == {} and ann.spec.env == {"PLAIN": "visible"}
    assert SECRET.encode() not in encode(ann)
    # nor one a peer sends with secrets in it: they are dropped on decode
    forged = encode(ann).replace(b'"secret_env":{}', b'"secret_env":{"TOKEN":"' + SECRET.encode() + b'"}')
    assert SECRET.encode() in forged
    assert decode(forged).spec.secret_env == {}


def test_the_stored_and_shown_spec_has_no_secrets():
    s = spec().without_secrets()
    assert s.secret_env == {} and s.env == {"PLAIN": "visible"}
    assert SECRET not in s.model_dump_json()


def test_secrets_on_the_wire_are_checked_like_a_spec():
    good = Reply(verdict="accepted", secret_env={"TOKEN": SECRET})
    assert decode(encode(good)).secret_env == {"TOKEN": SECRET}
    bad_name = encode(good).replace(b'"TOKEN"', b'"1TOKEN"')
    with pytest.raises(MalformedMessage, match="invalid environment variable names"):
        decode(bad_name)
    too_many = Decision(job_id="j", execution_id="e", accepted=True).model_dump()
    too_many["secret_env"] = {f"K{i}": "v" for i in range(MAX_SECRETS + 1)}
    with pytest.raises(MalformedMessage):
        decode(Decision.model_construct(**too_many).model_dump_json().encode())


def test_a_sweep_refuses_secrets():
    with pytest.raises(ValidationError, match="secret_env is not supported in sweeps yet"):
        SweepSpec.model_validate({"job": spec().model_dump(), "grid": {"x": ["1", "2"]}})


def test_cli_secret_env_flag(monkeypatch):
    s = build_spec({"name": "noop"}, JobFlags(env=["PLAIN=visible"], secret_env=[f"TOKEN={SECRET}"]))
    assert s.secret_env == {"TOKEN": SECRET} and s.env == {"PLAIN": "visible"}
    monkeypatch.setenv("FROM_SHELL", SECRET)  # a bare KEY keeps the value out of the shell history
    assert build_spec({"name": "noop"}, JobFlags(secret_env=["FROM_SHELL"])).secret_env == {"FROM_SHELL": SECRET}
    with pytest.raises(CLIError) as e:
        build_spec({"name": "noop"}, JobFlags(secret_env=["NOT_SET_ANYWHERE_XYZ"]))
    assert e.value.lines[0].startswith("--secret-env 'NOT_SET_ANYWHERE_XYZ': expected KEY=VALUE")
    with pytest.raises(CLIError) as e:
        build_spec({"name": "noop"}, JobFlags(secret_env=[f"1BAD={SECRET}"]))
    assert SECRET not in repr(e.value.args)
    with pytest.raises(CLIError) as e:
        build_sweep(s, SweepFlags(params=["x=1,2"]))
    assert any("--secret-env" in line and "not supported in sweeps" in line for line in e.value.args)


def test_sealed_secrets_open_only_with_the_key_and_for_their_job(tmp_path):
    sealer = Sealer(tmp_path / "shoal.secrets.key")
    blob = sealer.seal("j-1", {"TOKEN": SECRET})
    assert SECRET not in blob
    assert stat.S_IMODE(os.stat(tmp_path / "shoal.secrets.key").st_mode) == 0o600
    assert Sealer(tmp_path / "shoal.secrets.key").open("j-1", blob) == {"TOKEN": SECRET}
    with pytest.raises(SealError):
        sealer.open("j-2", blob)  # moved to another job's row
    with pytest.raises(SealError):
        Sealer(tmp_path / "other.key").open("j-1", blob)  # no key


def test_a_secrets_key_the_disk_had_no_room_for_is_not_left_empty(tmp_path, monkeypatch):
    """An empty key file (a full disk mid-write) refused every job with secrets from then on."""
    import errno

    def full(fd: int) -> None:  # where a full disk shows when the file system allocates late
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", full)
        with pytest.raises(StoreUnavailable, match="No space left on device"):
            Sealer(tmp_path / "shoal.secrets.key").seal("j-1", {"TOKEN": SECRET})
    assert os.listdir(tmp_path) == []
    sealer = Sealer(tmp_path / "shoal.secrets.key")  # room again
    assert sealer.open("j-1", sealer.seal("j-1", {"TOKEN": SECRET})) == {"TOKEN": SECRET}


async def test_the_runner_merges_secrets_into_the_env_and_seeds_from_the_announced_spec(tmp_path):
    seen: list[RunRequest] = []

    async def record(request: RunRequest) -> None:
        seen.append(request)

    runner = Runner(ExecutorRegistry.all_noop(NoopExecutor(NoopHooks(before_run=record))), tmp_path)
    announced = spec().without_secrets()
    ex = Execution(id="e-1", job_id="j-1", node_id="n", requester="r", created_at=0, updated_at=0, spec=announced)
    assert (await runner.run(ex, {"TOKEN": SECRET})).error is None
    assert (await runner.run(ex)).error is None
    with_secret, without = seen
    assert with_secret.spec.env == {"PLAIN": "visible", "TOKEN": SECRET}
    assert without.spec.env == {"PLAIN": "visible"}
    assert with_secret.seed == without.seed  # every node that runs the job derives the same seed
    assert ex.spec.env == {"PLAIN": "visible"}  # the record the node stores is untouched


async def test_the_store_drops_a_jobs_secrets_when_it_ends_or_expires(tmp_path):
    store = Store(tmp_path / "shoal.db")
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        jobs = [Job(id=f"j-{i}", owner="alice", spec=spec().without_secrets(), created_at=0, updated_at=0)
                for i in range(2)]
        for job in jobs:
            await store.save(new_job=job, secrets={"TOKEN": SECRET})
        assert await store.live_secrets() == {"j-0": {"TOKEN": SECRET}, "j-1": {"TOKEN": SECRET}}
        running = jobs[0].transition(JobState.RUNNING, "running", 1)
        await store.save(job=running)  # a live job keeps them
        assert set(await store.live_secrets()) == {"j-0", "j-1"}
        await store.save(job=running.transition(JobState.COMPLETED, "completed", 2))
        assert set(await store.live_secrets()) == {"j-1"}
        await store.delete_records(ExpiredRecords(jobs=[jobs[1]]))  # the time-to-live path
        assert await store.live_secrets() == {}
        # a terminal job never had them written
        await store.save(new_job=Job(id="j-2", owner="alice", spec=spec().without_secrets(), state=JobState.FAILED,
                                     created_at=0, updated_at=0), secrets={"TOKEN": SECRET})
        assert await store.live_secrets() == {}
        nursery.cancel_scope.cancel()
    assert SECRET.encode() not in b"".join(f.read_bytes() for f in tmp_path.glob("shoal.db*"))

"""A download of a job or index that has no results (yet) is not "no such job"; a refusal over the user's own
--max-bytes says so; --cache with a sweep, whose indexes are never cached, is refused rather than ignored."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from jobs import RunResult
from shoal import ClientKey, NoResults, NotFound, ShoalAPIError, ShoalAuth
from shoal._error_mapping import api_error
from shoal._results import ResultsWriter, plan_download
from tests.unit.test_cli import JOB_ID, run
from tests.unit.test_cli_sweeps import SWEEP_ID, FakeSweepClient, error_lines
from tests.unit.test_cli_sweeps import fake as fake  # the fixture

CID = "QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o"


def test_no_results_is_not_not_found() -> None:
    with pytest.raises(NoResults) as info:
        plan_download(None, "job j-1", "running", None)
    assert not isinstance(info.value, NotFound) and isinstance(info.value, ShoalAPIError)
    assert str(info.value) == "job j-1 has no results (state running)" and info.value.code == "no_results"


def answer(status: int, body: dict) -> httpx.Response:
    return httpx.Response(status, json=body, request=httpx.Request("GET", "http://node/v1/jobs/j-1/results"))


def test_the_nodes_answers_map_to_no_results() -> None:
    new = api_error(answer(409, {"error": {"code": "no_results", "message": "job j-1 has no results (state running)"}}))
    old = api_error(answer(404, {"error": {"code": "not_found", "message": "job j-1 has no results (state running)"}}))
    missing = api_error(answer(404, {"error": {"code": "not_found", "message": "no job 'j-1' (or it is not yours)"}}))
    assert type(new) is NoResults and new.status == 409 and str(new) == "job j-1 has no results (state running)"
    assert type(old) is NoResults  # a node from before the 409
    assert type(missing) is NotFound


def test_get_of_a_job_without_results_exits_1(fake: FakeSweepClient, tmp_path: Path) -> None:
    fake.download = lambda job_id, dest, *, max_bytes=None: plan_download(None, f"job {job_id}", "running", None)
    result = run("get", JOB_ID, "-o", str(tmp_path / "out"))
    assert result.exit_code == 1 and error_lines(result) == [f"job {JOB_ID} has no results (state running)"]


def test_sweep_get_of_an_index_without_results_exits_1(fake: FakeSweepClient, tmp_path: Path) -> None:
    fake.download_index = lambda sweep_id, index, dest, *, max_bytes=None: plan_download(
        None, f"index {index} of sweep {sweep_id}", "running", None)
    result = run("sweep", "get", SWEEP_ID, "2", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert error_lines(result) == [f"index 2 of sweep {SWEEP_ID} has no results (state running)"]


@pytest.mark.parametrize(("max_bytes", "says"), [
    (10 << 20, "larger than the 10 MiB given as their limit (max_bytes, --max-bytes); nothing was written"),
    (None, "larger than the limit of 67108870 bytes (twice the recorded sizes, of outputs at most 1 GiB, plus 64 MiB;"
           " --max-bytes to allow more); nothing was written"),
])  # fmt: skip
def test_a_refusal_over_the_users_max_bytes_names_it(tmp_path: Path, max_bytes: int | None, says: str) -> None:
    plan = plan_download(RunResult(stdout="42\n", cid=CID), "job j-1", "completed", max_bytes)
    with ResultsWriter(tmp_path / "out", CID, plan.max_bytes, "job j-1") as writer, \
            pytest.raises(ShoalAPIError) as info:
        writer.feed(b"\0" * (plan.max_bytes + 1))
    assert info.value.code == "too_large" and str(info.value) == f"the results of job j-1 are {says}"
    assert not (tmp_path / "out").exists()


def test_cache_with_a_sweep_is_refused(fake: FakeSweepClient) -> None:
    result = run("run", "noop", "--param", "x=1,2", "--cache", "--no-wait")
    assert result.exit_code == 2 and fake.sweeps_submitted == []
    assert error_lines(result) == ["--cache does not apply to a sweep: sweep indexes are never served from the cache"]
    for flags in (["--no-cache"], []):  # --no-cache is what happens anyway
        assert run("run", "noop", "--param", "x=1,2", *flags, "--no-wait").exit_code == 0
    assert len(fake.sweeps_submitted) == 2
    assert run("run", "noop", "--cache", "--no-wait").exit_code == 0  # a single job: cached
    assert fake.cache is True


def test_cache_with_a_sweep_file_is_refused(fake: FakeSweepClient, tmp_path: Path) -> None:
    (tmp_path / "sweep.json").write_text(json.dumps({"job": {"engine": {"name": "noop"}}, "grid": {"x": ["1", "2"]}}))
    result = run("job", "run", str(tmp_path / "sweep.json"), "--cache", "--no-wait")
    assert result.exit_code == 2 and fake.sweeps_submitted == []


@pytest.mark.slow
def test_the_results_routes_answer_409(tmp_path_factory: pytest.TempPathFactory) -> None:
    from tests.integration.single_node import noop_node

    home = tmp_path_factory.mktemp("notready")
    with noop_node(home, 60417) as ready, httpx.Client(base_url=ready["api"], timeout=30) as http:
        auth = ShoalAuth(ClientKey.load_or_create(home / "client.key"))

        def send(method: str, path: str, **kw: object) -> httpx.Response:
            return http.send(auth.sign(http.build_request(method, path, **kw)))

        too_big = {"engine": {"name": "noop"}, "resources": {"cpu": 1000}}  # runs nowhere: no results
        job_id = send("POST", "/v1/jobs", json={"spec": too_big}).json()["job"]["id"]
        sweep = {"spec": {"job": too_big, "grid": {"x": ["1"]}}}
        answered = send("POST", "/v1/sweeps", json=sweep)
        assert answered.status_code == 201, answered.text
        sweep_id = answered.json()["sweep"]["id"]
        for path, whose in ((f"/v1/jobs/{job_id}/results", f"job {job_id}"),
                            (f"/v1/sweeps/{sweep_id}/indexes/0/results", f"index 0 of sweep {sweep_id}")):
            answered = send("GET", path)
            assert answered.status_code == 409, answered.text
            error = answered.json()["error"]
            assert error["code"] == "no_results" and error["message"].startswith(f"{whose} has no results (state ")
        assert send("GET", "/v1/jobs/j-00000000000000000000000000000000/results").status_code == 404

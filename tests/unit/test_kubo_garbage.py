"""Something other than Kubo answering at its RPC address (a proxy, a wrong port, a broken daemon): answers
that are not Kubo's JSON, or JSON of another shape, are ``Unavailable`` with a reason that says so. They once
escaped as JSONDecodeError or AttributeError: a context upload got a 500, a job "executor crashed"."""

from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from starlette.exceptions import HTTPException

import storage.kubo
from compute.runner import Runner
from executors import ExecutorRegistry, NoopExecutor
from executors.noop import NoopHooks
from jobs import Execution, JobSpec
from node.api.routes.jobs import _publish_context
from shoal._context import pack_context
from storage import KuboClient, KuboPublisher, Unavailable

CID = "QmSEX6ZQyv9JDfY6fseYcNbjXfDfrXbfCUGHcpNvpJa7qE"
ANSWERS = {
    "not json": b"hello\nworld\n",
    "a list": b"[1, 2, 3]\n",
    "another shape": b'{"Hash": 12, "Size": "x", "Type": "file", "Blocks": "nope", "CumulativeSize": null}\n',
}
NOT_KUBO = "Kubo RPC at http://kubo.test answered '{}' with something that is not Kubo's JSON"


def fake_kubo(body: bytes) -> KuboClient:
    return KuboClient("http://kubo.test", transport=httpx.MockTransport(lambda _: httpx.Response(200, content=body)))


@pytest.fixture(autouse=True)
def impatient(monkeypatch):
    monkeypatch.setattr(storage.kubo, "PATIENCE", 0.0)  # no waiting for the daemon to come back


@pytest.mark.parametrize("answer", ANSWERS)
async def test_an_answer_that_is_not_kubos_is_unavailable(answer, tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "stdout").write_text("x")
    async with fake_kubo(ANSWERS[answer]) as client:
        with pytest.raises(Unavailable, match=NOT_KUBO.format("add")):
            await client.add_path(tmp_path / "results")
        with pytest.raises(Unavailable, match=NOT_KUBO.format("add")):
            await client.add_bytes(b"x")
        with pytest.raises(Unavailable, match=NOT_KUBO.format("files/stat")):
            await client.stat(f"/ipfs/{CID}")
        with pytest.raises(Unavailable, match=NOT_KUBO.format("version")):
            await client.version()
        with pytest.raises(Unavailable, match=NOT_KUBO.format("pin/ls")):
            await client.is_pinned(CID)


@pytest.mark.parametrize("answer", ANSWERS)
async def test_a_job_whose_results_cannot_be_published_fails_retryably_and_says_why(answer, tmp_path):
    runner = Runner(ExecutorRegistry.all_noop(NoopExecutor(NoopHooks(stdout="42\n"))), tmp_path,
                    publisher=KuboPublisher(fake_kubo(ANSWERS[answer])))
    ex = Execution(id="e-1", job_id="j-1", node_id="n", requester="r", created_at=0, updated_at=0,
                   spec=JobSpec(engine={"name": "noop"}))
    outcome = await runner.run(ex)
    assert outcome.result is None and outcome.retryable
    assert outcome.error.startswith(NOT_KUBO.format("add")), outcome.error


@pytest.mark.parametrize("answer", ANSWERS)
async def test_a_context_upload_is_503_with_the_reason(answer, tmp_path):
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "main.py").write_text("print(1)\n")
    node = SimpleNamespace(publisher=KuboPublisher(fake_kubo(ANSWERS[answer])),
                           config=SimpleNamespace(data_dir=tmp_path / "data"))
    with pytest.raises(HTTPException) as refused:
        await _publish_context(node, pack_context(tmp_path / "work"))
    assert refused.value.status_code == 503 and refused.value.headers == {"Retry-After": "5"}
    assert refused.value.detail.startswith("this node cannot store the working directory now: "
                                           + NOT_KUBO.format("add")), refused.value.detail

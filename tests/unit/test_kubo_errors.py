"""What Kubo's refusals mean to a job: a node whose IPFS repo is full reports it as the node's trouble
(retryable: another node may run the job), not as the job's. A full repo once failed the job at once, and
every later job of the node with it."""

from __future__ import annotations

import json

import httpx
import pytest

from storage import KuboClient, StorageError, Unavailable

FULL = "write /data/ipfs/blocks/XY/abc.data: no space left on device"


async def test_a_full_repo_is_the_nodes_trouble_during_an_add_and_in_an_rpc_error(tmp_path):
    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/add"):
            return httpx.Response(200, text=json.dumps({"Type": "error", "Message": FULL}) + "\n")
        return httpx.Response(500, json={"Message": FULL, "Code": 0, "Type": "error"})

    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "stdout").write_text("x")
    async with KuboClient("http://kubo.test", transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(Unavailable, match="repo is out of space") as added:
            await client.add_path(tmp_path / "results", pin=True)
        with pytest.raises(Unavailable, match="repo is out of space") as pinned:
            await client.pin_rm("QmSEX6ZQyv9JDfY6fseYcNbjXfDfrXbfCUGHcpNvpJa7qE")
    assert added.value.retryable and pinned.value.retryable


async def test_another_failed_add_is_still_the_jobs_error(tmp_path):
    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, text=json.dumps({"Type": "error", "Message": "file name too long"}) + "\n")

    (tmp_path / "results").mkdir()
    async with KuboClient("http://kubo.test", transport=httpx.MockTransport(answer)) as client:
        with pytest.raises(StorageError, match="Kubo add failed: file name too long") as failed:
            await client.add_path(tmp_path / "results", pin=True)
    assert not failed.value.retryable

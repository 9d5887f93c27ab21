"""A working directory uploaded with a job: what the status says when it cannot be stored. It was 422
("the archive is unusable", not retryable) when the node's Kubo was away or its disk full: the client
gave up on a good archive. Such faults of the node are 503 with Retry-After now."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from starlette.exceptions import HTTPException

from node.api.routes.jobs import _publish_context
from shoal._context import pack_context
from storage import Unavailable


class _Publisher:
    def __init__(self, error: Exception | None) -> None:
        self.error = error

    async def publish(self, directory):
        if self.error is not None:
            raise self.error
        return "bafy-stored"


def _node(tmp_path, error: Exception | None = None) -> SimpleNamespace:
    return SimpleNamespace(publisher=_Publisher(error), config=SimpleNamespace(data_dir=tmp_path / "data"))


@pytest.fixture
def archive(tmp_path) -> bytes:
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "main.py").write_text("print(1)\n")
    return pack_context(tmp_path / "work")


async def test_an_archive_the_node_cannot_store_now_is_503_and_a_bad_one_422(tmp_path, archive):
    assert await _publish_context(_node(tmp_path), archive) == "bafy-stored"
    with pytest.raises(HTTPException) as away:
        await _publish_context(_node(tmp_path, Unavailable("cannot reach Kubo RPC")), archive)
    assert away.value.status_code == 503 and away.value.headers == {"Retry-After": "5"}
    assert "cannot store the working directory now: cannot reach Kubo RPC" in away.value.detail
    with pytest.raises(HTTPException) as bad:
        await _publish_context(_node(tmp_path), b"not a tar archive" * 100)
    assert bad.value.status_code == 422 and "archive is unusable" in bad.value.detail
    assert not list((tmp_path / "data" / "uploads").iterdir())  # nothing left behind either way

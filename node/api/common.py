"""What the jobs' and the sweeps' routes share: request bounds, untrusted bodies, result archives
and shares."""

import io
import tarfile
import time
from collections.abc import Mapping
from typing import Any

from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, model_validator
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs import RunResult
from jobs.views import Share
from node.api.access import refusal_now
from node.api.errors import error
from node.api.parts import Node
from node.api.quotas import Quotas
from requester import UnknownJob
from shoal._auth import b64encode, client_id_for, parse_public_key

MAX_WAIT = 60.0  # longest long-poll a client may ask for
MAX_OFFSET = 1_000_000_000  # paging offset; far beyond any store, and well inside SQLite's integers
MAX_SHARES = 100  # clients one job or sweep may be shared with


class UntrustedBody(BaseModel):
    """Makes a request model safe to validate from untrusted input.

    A validator of the job model that meets a value of a type it does not expect may raise
    TypeError instead of ValueError (``parse_bytes`` given a list, for one); pydantic passes
    that through, and FastAPI would answer 500. Here it becomes a validation error (422).
    """

    @model_validator(mode="wrap")
    @classmethod
    def _type_errors_are_invalid_input(cls, data: Any, handler: Any) -> Any:
        try:
            return handler(data)
        except TypeError as e:
            raise ValueError(f"the spec has a value of a type the model cannot read ({e})") from None


async def visible_to(client: str, item_id: str, owner: str, node: Node, *, shared: bool) -> None:
    """Pass if ``client`` owns the job or sweep, or (``shared``: the read routes) it was shared with ``client``;
    else it does not exist, as far as ``client`` can tell."""
    if owner != client and not (shared and await node.store.is_shared(item_id, client)):
        raise UnknownJob(item_id)


async def wait_for_end(service: Any, item_id: str, wait: float, ended: bool, *, quotas: Quotas | None,
                       client: str, scope: Mapping[str, Any]) -> None:
    """Wait up to ``wait`` seconds for a job or sweep to end. A wait holds one of the client's streams (3,000
    of one key once waited at once); with none left, no wait. A caller whose key was removed meanwhile gets
    403, not what it waited for (``scope``: the request's)."""
    if not wait or ended or (quotas is not None and quotas.open_stream(client) is not None):
        return
    try:
        await service.wait(item_id, wait)
    finally:
        if quotas is not None:
            quotas.close_stream(client)
    if (refusal := refusal_now(scope)) is not None:
        raise StarletteHTTPException(403, refusal)


def unencodable(value: Any, path: str) -> str | None:
    """The dotted path of the first string (key or value) that cannot be encoded as UTF-8."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return path
        return None
    if isinstance(value, dict):
        for key, item in value.items():
            found = unencodable(key, path) or unencodable(item, f"{path}.{key}")
            if found is not None:
                return found
    elif isinstance(value, list | tuple):
        for i, item in enumerate(value):
            found = unencodable(item, f"{path}.{i}")
            if found is not None:
                return found
    return None


def results_gone(node: Node, whose: str, removed_at: float) -> Response:
    """410 for results the node's retention removed, saying when (a fetch of them waited for Kubo's timeout)."""
    removed = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(removed_at))
    return error(410, "gone",
                 f"the results of {whose} were removed at {removed} (retention {node.config.retention:g} s)")


async def result_tar(node: Node, result: RunResult) -> Response:
    """Stream a result's files: the published directory when it has a CID, else stdout/stderr/exitCode."""
    if result.cid and node.publisher is not None:
        return await _results_by_cid(node, result.cid)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in result.files().items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = int(result.finished_at or time.time())
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return Response(buf.getvalue(), media_type="application/x-tar")


async def _results_by_cid(node: Node, cid: str) -> Response:
    """Stream the published results directory as a tar; the client checks it against ``cid``."""
    from storage import NotFound, StorageError

    assert node.publisher is not None
    try:
        chunks = await node.publisher.export(cid, fetch=True)
    except NotFound:
        return error(404, "not_found", f"results {cid} are not available from this node (no Kubo, or nobody "
                                       "provides them any more)")
    except StorageError as e:
        return error(503, "storage_unavailable", f"cannot read results {cid}: {e}")
    return StreamingResponse(chunks, media_type="application/x-tar", headers={"X-Shoal-CID": cid})


async def share_with(node: Node, target: str, key: str) -> Share:
    """Record that the client with ``key`` may read job or sweep ``target`` (its owner has been checked)."""
    public_key = parse_public_key(key)  # ShareRequest's pattern admits only 32-byte keys
    client = client_id_for(public_key)
    if not await node.store.share(target, client, limit=MAX_SHARES):
        raise StarletteHTTPException(409, f"{target} is already shared with {MAX_SHARES} clients, the most allowed")
    return Share(id=target, key=b64encode(public_key), client_id=client)

"""Property-based run (schemathesis) against the OpenAPI schema a real node serves.

Every generated request is signed (``ShoalAuth.headers_for`` over the exact bytes requests
puts on the wire), so the run reaches the routes rather than the verifier; known job ids are
mixed into the generated ones so the success paths are exercised too. For each operation, in
positive and negative mode: no 5xx, every status code and content type is documented, and
every response body matches its schema. Bounded: 50 positive and 25 negative examples per
operation.
"""

from __future__ import annotations

import io
import tarfile
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from shoal import Client, ClientKey, ShoalAuth
from shoal._auth import HEADER_VERSION, SIGNATURE_HEADERS
from tests.integration.rogue import free_base_port
from tests.integration.single_node import noop_node

pytestmark = pytest.mark.slow

PORT = free_base_port(1)
API = f"http://127.0.0.1:{PORT}"
POSITIVE_EXAMPLES = 50
NEGATIVE_EXAMPLES = 25
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]  # fmt: skip

OPERATIONS = [
    ("POST", "/v1/jobs"),
    ("GET", "/v1/jobs"),
    ("GET", "/v1/jobs/{job_id}"),
    ("POST", "/v1/jobs/{job_id}/cancel"),
    ("GET", "/v1/jobs/{job_id}/events"),
    ("GET", "/v1/jobs/{job_id}/logs"),
    ("GET", "/v1/jobs/{job_id}/results"),
    ("POST", "/v1/jobs/{job_id}/shares"),
    ("POST", "/v1/contexts"),
    ("POST", "/v1/sweeps"),
    ("GET", "/v1/sweeps"),
    ("GET", "/v1/sweeps/{sweep_id}"),
    ("GET", "/v1/sweeps/{sweep_id}/indexes"),
    ("GET", "/v1/sweeps/{sweep_id}/indexes/{index}"),
    ("GET", "/v1/sweeps/{sweep_id}/indexes/{index}/logs"),
    ("GET", "/v1/sweeps/{sweep_id}/indexes/{index}/results"),
    ("POST", "/v1/sweeps/{sweep_id}/retry"),
    ("POST", "/v1/sweeps/{sweep_id}/cancel"),
    ("POST", "/v1/sweeps/{sweep_id}/shares"),
    ("GET", "/v1/sweeps/{sweep_id}/events"),
    ("GET", "/v1/node"),
    ("GET", "/v1/peers"),
    ("GET", "/v1/nodes"),
    ("GET", "/v1/version"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
]
SWEEP = {"job": {"engine": {"name": "noop"}}, "grid": {"x": ["1", "2", "3"]}}
UNSIGNED = {"/v1/version", "/healthz", "/readyz", "/metrics"}
schemathesis.serializer.alias("application/x-tar", "application/octet-stream")  # context uploads: raw bytes


class SignedRequests(requests.auth.AuthBase):
    """Signs a prepared ``requests`` request the way the SDK signs an httpx one."""

    def __init__(self, key: ClientKey) -> None:
        self.auth = ShoalAuth(key)

    def __call__(self, request: requests.PreparedRequest) -> requests.PreparedRequest:
        body = request.body or b""
        if isinstance(body, str):
            body = body.encode()
        host = urllib.parse.urlsplit(request.url or "").netloc
        request.headers.update(self.auth.headers_for(request.method or "GET", host, request.path_url.encode(), body))
        return request


@dataclass
class Node:
    key: ClientKey
    schema: schemathesis.BaseSchema
    job_ids: list[str]
    sweep_ids: list[str]
    statuses: Counter = field(default_factory=Counter)  # (method, path, status) → responses


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    home = tmp_path_factory.mktemp("schema-home")
    with noop_node(home, PORT):
        key = ClientKey.load_or_create(home / "client.key")
        with Client(API, key=key) as client:  # finished jobs of ours: the generated requests reach them too
            ids = [client.submit({"engine": {"name": "noop"}}, cache=False).job.id for _ in range(2)]
            ids.append(client.submit({"engine": {"name": "noop"}, "resources": {"cpu": 1000}}).job.id)  # fails
            for job_id in ids:
                client.wait(job_id, timeout=30)
            sweeps = [client.run_sweep(SWEEP, timeout=30).sweep.id]
        yield Node(key, schemathesis.openapi.from_url(f"{API}/openapi.json"), ids, sweeps)


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def test_the_schema_lists_exactly_the_operations_tested_here(node: Node) -> None:
    served = sorted((op.ok().method.upper(), op.ok().path) for op in node.schema.get_all_operations())
    assert served == sorted(OPERATIONS)


def test_the_schema_documents_signing_and_errors(node: Node) -> None:
    raw = node.schema.raw_schema
    assert set(raw["components"]["securitySchemes"]) == {"ShoalKey", "ShoalTimestamp", "ShoalNonce", "ShoalSignature",
                                                         "ShoalAuthVersion"}
    for method, path in OPERATIONS:
        operation = raw["paths"][path][method.lower()]
        if path in UNSIGNED:
            assert "security" not in operation, path
            continue
        assert operation["security"] == [{name: [] for name in raw["components"]["securitySchemes"]}]
        for status in ("401", "422"):
            content = operation["responses"][status]["content"]
            assert content == {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorResponse"}}}


@pytest.mark.parametrize(("method", "path"), OPERATIONS, ids=[f"{m} {p}" for m, p in OPERATIONS])
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=["positive", "negative"])
def test_no_5xx_and_responses_match_the_schema(node: Node, method: str, path: str, mode: GenerationMode) -> None:
    operation = node.schema[path][method]
    has_inputs = bool(operation.path_parameters or operation.query or operation.headers or operation.body)
    if mode is GenerationMode.NEGATIVE and not has_inputs:
        pytest.skip("nothing to make invalid: the operation takes no input")
    strategy = operation.as_strategy(generation_mode=mode)
    if "{job_id}" in path:  # half the cases aim at jobs that exist (and are ours)
        strategy = st.one_of(strategy, *(operation.as_strategy(generation_mode=mode, path_parameters={"job_id": j})
                                         for j in node.job_ids))  # fmt: skip
    if "{sweep_id}" in path:  # and at sweeps that exist, at indexes they have
        known = [{"sweep_id": sweep_id, **({"index": i} if "{index}" in path else {})}
                 for sweep_id in node.sweep_ids for i in range(2)]
        strategy = st.one_of(strategy, *(operation.as_strategy(generation_mode=mode, path_parameters=p)
                                         for p in known))  # fmt: skip
    if path == "/v1/sweeps" and method == "POST" and mode is GenerationMode.POSITIVE:  # and valid sweeps
        strategy = st.one_of(strategy, operation.as_strategy(body={"spec": SWEEP}))
    if path == "/v1/contexts" and mode is GenerationMode.POSITIVE:  # and some archives that are tars
        strategy = st.one_of(strategy, operation.as_strategy(body=_tar({"main.py": b"print(42)\n"})))
    checks = CHECKS + ([negative_data_rejection] if mode is GenerationMode.NEGATIVE else [])
    auth = SignedRequests(node.key)
    seen: Counter = Counter()

    @given(case=strategy)
    @settings(max_examples=POSITIVE_EXAMPLES if mode is GenerationMode.POSITIVE else NEGATIVE_EXAMPLES,
              deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
              suppress_health_check=list(HealthCheck))  # fmt: skip
    def check(case: schemathesis.Case) -> None:
        # The schema declares the five signature headers; schemathesis fills them with strings,
        # which the signer replaces. A negative case may leave some out on purpose: that one
        # goes unsigned, and must be refused.
        sign = path in UNSIGNED or all(name in (case.headers or {}) for name in (*SIGNATURE_HEADERS, HEADER_VERSION))
        kwargs = {"base_url": API, "auth": auth if sign else None}
        response = case.call(timeout=30, **kwargs)
        seen[response.status_code] += 1
        if path not in UNSIGNED:
            assert (response.status_code == 401) is not sign, f"signed: {sign}; {response.text}"
        case.validate_response(response, checks=checks, transport_kwargs=kwargs)

    check()
    for status, n in seen.items():
        node.statuses[(method, path, status)] += n
    if mode is GenerationMode.POSITIVE:  # the run got past validation to the route itself
        assert any(200 <= s < 300 for s in seen), seen


def test_the_node_still_answers(node: Node) -> None:
    with Client(API, key=node.key) as client:
        assert client.describe(node.job_ids[0]).job.state == "completed"
    summary = ", ".join(f"{m} {p} {s}: {n}" for (m, p, s), n in sorted(node.statuses.items()))
    print(f"\nresponses by operation and status: {summary}")

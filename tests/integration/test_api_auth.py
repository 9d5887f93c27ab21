"""The signed REST API of a real node process (``shoal serve``), over real HTTP.

Signatures: forged, tampered, replayed, expired and missing ones are refused with 401 and a
message saying which. Ownership: a second client (another key, another SHOAL_HOME) can
neither see nor touch the first one's job. Idempotency keys, bad input (always a 4xx naming
the field, never a 5xx), and the event stream: resumable with Last-Event-ID, ending with an
explicit ``end`` event.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoal import Client, ClientKey, NotFound, ShoalAuth
from shoal._auth import HEADER_KEY, HEADER_NONCE, HEADER_SIGNATURE, HEADER_TIMESTAMP
from tests.integration.rogue import free_base_port
from tests.integration.single_node import noop_node

pytestmark = pytest.mark.slow

PORT = free_base_port(1)
API = f"http://127.0.0.1:{PORT}"
NOOP = {"spec": {"engine": {"name": "noop"}}}
PENDING = {"spec": {"engine": {"name": "noop"}, "deal": {"concurrency": 5}}}  # one node: never enough


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One noop node, alone; yields its SHOAL_HOME (the first client's key lives there)."""
    home = tmp_path_factory.mktemp("auth-home")
    with noop_node(home, PORT):
        yield home


@pytest.fixture(scope="module")
def owner(node: Path) -> ClientKey:
    return ClientKey.load_or_create(node / "client.key")


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> ClientKey:
    """Another client: its own key in its own SHOAL_HOME."""
    return ClientKey.load_or_create(tmp_path_factory.mktemp("stranger-home") / "client.key")


@pytest.fixture
def http() -> Iterator[httpx.Client]:
    with httpx.Client(base_url=API, timeout=30) as client:
        yield client


def signed(http: httpx.Client, key: ClientKey, method: str, url: str, *, clock=time.time, **kw) -> httpx.Request:
    return ShoalAuth(key, clock=clock).sign(http.build_request(method, url, **kw))


def error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    return response.json()["error"]


def rejected(response: httpx.Response) -> str:
    body = error(response, 401)
    assert response.headers["WWW-Authenticate"] == "Shoal-Ed25519"
    assert body["code"] == "unauthenticated"
    return body["message"]


@pytest.fixture(scope="module")
def owned_job(node: Path, owner: ClientKey) -> str:
    """A completed noop job of the owner's, run for real (not a cached result)."""
    with Client(API, key=owner) as client:
        job = client.submit(NOOP["spec"], cache=False)
        return client.wait(job.job.id, timeout=30).job.id


# -- signatures ------------------------------------------------------------------------------------


def test_signed_request_passes(http, owner) -> None:
    response = http.send(signed(http, owner, "GET", "/v1/jobs", params={"limit": "5"}))
    assert response.status_code == 200, response.text
    assert set(response.json()) == {"jobs", "total"}


def test_unsigned_request_is_refused(http) -> None:
    message = rejected(http.get("/v1/jobs"))
    assert message == f"missing signature headers: {HEADER_KEY}, {HEADER_TIMESTAMP}, {HEADER_NONCE}, {HEADER_SIGNATURE}"
    assert rejected(http.post("/v1/jobs", json=NOOP)).startswith("missing signature headers")
    # checked before anything else reads the request: not even a JSON error is told to a stranger
    bad_json = http.post("/v1/jobs", content=b"{oops", headers={"Content-Type": "application/json"})
    assert rejected(bad_json).startswith("missing signature headers")


def test_forged_signature_is_refused(http, owner, stranger) -> None:
    """Signed with one key, presented as another's: the signature does not verify."""
    request = signed(http, stranger, "GET", "/v1/jobs")
    request.headers[HEADER_KEY] = owner.public_key_b64
    assert rejected(http.send(request)) == "bad signature"


def test_tampered_body_is_refused(http, owner) -> None:
    request = signed(http, owner, "POST", "/v1/jobs", json=NOOP)
    tampered = http.build_request("POST", "/v1/jobs", json=PENDING, headers=dict(request.headers))
    tampered.headers["content-length"] = str(len(tampered.content))
    assert rejected(http.send(tampered)) == "bad signature"


def test_tampered_query_is_refused(http, owner) -> None:
    request = signed(http, owner, "GET", "/v1/jobs", params={"limit": "5"})
    tampered = http.build_request("GET", "/v1/jobs", params={"limit": "6"}, headers=dict(request.headers))
    assert rejected(http.send(tampered)) == "bad signature"


def test_replayed_request_is_refused(http, owner) -> None:
    request = signed(http, owner, "GET", "/v1/jobs")
    assert http.send(request).status_code == 200
    again = http.build_request("GET", "/v1/jobs", headers=dict(request.headers))  # the very same bytes
    assert rejected(http.send(again)) == "nonce already used"


def test_expired_timestamp_is_refused(http, owner) -> None:
    request = signed(http, owner, "GET", "/v1/jobs", clock=lambda: time.time() - 360)  # 6 minutes old
    message = rejected(http.send(request))
    assert message.startswith("timestamp 36") and message.endswith(" s off (max 300)"), message


def test_health_readiness_version_and_metrics_need_no_signature(http) -> None:
    assert http.get("/healthz").json() == {"status": "ok"}
    ready = http.get("/readyz").json()
    assert ready["status"] == "ready" and ready["uptime"] > 0
    assert http.get("/v1/version").json() == {"version": "0.1.0"}
    metrics = http.get("/metrics")
    assert metrics.status_code == 200 and metrics.headers["content-type"].startswith("text/plain")
    assert "shoal_peers 0" in metrics.text and "# TYPE shoal_jobs gauge" in metrics.text


# -- ownership -------------------------------------------------------------------------------------


def test_another_client_can_neither_see_nor_touch_my_job(http, owner, stranger, owned_job) -> None:
    with Client(API, key=stranger) as client:
        assert client.list().jobs == []
        for call in (client.describe, client.logs, client.cancel, lambda j: list(client.events(j)),
                     lambda j: client.download(j, "/nonexistent/never-written")):  # fmt: skip
            with pytest.raises(NotFound):
                call(owned_job)
    # and at the HTTP level: 404, the same answer as for a job that does not exist
    for method, path in (("GET", ""), ("GET", "/logs"), ("GET", "/results"), ("GET", "/events"),
                         ("POST", "/cancel")):  # fmt: skip
        body = error(http.send(signed(http, stranger, method, f"/v1/jobs/{owned_job}{path}")), 404)
        assert body["message"] == f"no job '{owned_job}' (or it is not yours)"
    with Client(API, key=owner) as client:  # untouched, and still the owner's to read
        assert client.describe(owned_job).job.state == "completed"
        assert owned_job in [j.id for j in client.list().jobs]


def test_listing_other_clients_jobs_is_refused(http, owner) -> None:
    body = error(http.send(signed(http, owner, "GET", "/v1/jobs", params={"all": "true"})), 403)
    assert body["message"].startswith("listing other clients' jobs is not allowed")


# -- idempotency -----------------------------------------------------------------------------------


def test_idempotency_key_returns_the_same_job_or_409(http, owner) -> None:
    headers = {"Idempotency-Key": f"k-{time.time_ns()}"}
    first = http.send(signed(http, owner, "POST", "/v1/jobs", json=NOOP, headers=headers))
    assert first.status_code == 201, first.text
    again = http.send(signed(http, owner, "POST", "/v1/jobs", json=NOOP, headers=headers))
    assert again.status_code == 200, again.text
    assert again.json()["job"]["id"] == first.json()["job"]["id"]
    other = http.send(signed(http, owner, "POST", "/v1/jobs", json=PENDING, headers=headers))
    body = error(other, 409)
    assert body["code"] == "idempotency_conflict" and headers["Idempotency-Key"] in body["message"]


# -- bad input: 4xx naming the field, never 5xx ------------------------------------------------------


@pytest.mark.parametrize(("spec", "field", "words"), [
    ({"engine": {"name": "cobol"}}, "spec.engine", "does not match any of the expected tags"),
    ({"engine": {"name": "noop"}, "resources": {"memory": -1}}, "spec.resources.memory", "cannot be negative"),
    ({"engine": {"name": "noop"}, "resources": {"cpu": -0.5}}, "spec.resources.cpu", "greater than or equal to 0"),
    ({"engine": {"name": "noop"}, "inputs": [{"source": "ipfs://bafy", "path": "data"}]}, "spec.inputs.0.path",
     "absolute path"),
    ({"engine": {"name": "noop"}, "inputs": [{"source": "ipfs://bafy"}]}, "spec.inputs.0.path", "Field required"),
    ({"engine": {"name": "noop"}, "deal": {"concurrency": 1, "confidence": 2}}, "spec.deal",
     "confidence cannot exceed concurrency"),
    ({"engine": {"name": "noop"}, "timeout": "soon"}, "spec.timeout", "cannot read duration 'soon'"),
], ids=["unknown-engine", "negative-memory", "negative-cpu", "relative-input-path", "input-without-path",
        "confidence-over-concurrency", "timeout-not-a-number"])  # fmt: skip
def test_invalid_spec_is_422_naming_the_field(http, owner, spec, field, words) -> None:
    body = error(http.send(signed(http, owner, "POST", "/v1/jobs", json={"spec": spec})), 422)
    assert body["code"] == "invalid_request"
    assert field in body["fields"], body
    assert f"{field}: " in body["message"] and words in body["message"], body["message"]


@pytest.mark.parametrize(("body", "field"), [
    (b'{"spec": {"engine": {"name": "noop"}, "env": {"A": "\\udb37"}}}', "spec.env.A"),
    (b'{"spec": {"engine": {"name": "docker", "image": "x", "args": ["ok", "\\ud821"]}}}', "spec.engine.args.1"),
], ids=["env-value", "docker-arg"])  # fmt: skip
def test_a_lone_surrogate_is_422_naming_the_field(http, owner, body: bytes, field: str) -> None:
    """Valid JSON (an escape), valid for pydantic, but no UTF-8 store can keep it: once a 500."""
    request = signed(http, owner, "POST", "/v1/jobs", content=body, headers={"Content-Type": "application/json"})
    error_body = error(http.send(request), 422)
    assert error_body["fields"] == [field] and "lone surrogate" in error_body["message"]


def test_a_value_of_an_unexpected_type_is_422_not_500(http, owner) -> None:
    """``parse_bytes`` raised TypeError for a list (jobs/spec.py): pydantic let it through as a 500."""
    spec = {"spec": {"engine": {"name": "noop"}, "resources": {"memory": [1]}}}
    body = error(http.send(signed(http, owner, "POST", "/v1/jobs", json=spec)), 422)
    assert body["fields"] in (["spec.resources.memory"], ["body"]), body  # the former once jobs/spec.py says so


def test_oversized_body_is_413(http, owner) -> None:
    spec = {"spec": {"engine": {"name": "noop"}, "env": {"BIG": "x" * (2 << 20)}}}  # 2 MiB
    body = error(http.send(signed(http, owner, "POST", "/v1/jobs", json=spec)), 413)
    assert body["code"] == "body_too_large" and "request body over 1048576 bytes" in body["message"]


@pytest.mark.parametrize(("method", "path", "kw", "status", "field"), [
    ("POST", "/v1/jobs", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 422, "body"),
    ("POST", "/v1/jobs", {"content": b"[1, 2]"}, 422, "body"),
    ("POST", "/v1/jobs", {"content": b"\xff\xfe{}", "headers": {"Content-Type": "application/json"}}, 422, "body"),
    ("POST", "/v1/jobs", {"json": {"specs": {}}}, 422, "spec"),
    ("GET", "/v1/jobs", {"params": {"limit": "0"}}, 422, "query.limit"),
    ("GET", "/v1/jobs", {"params": {"offset": "9" * 30}}, 422, "query.offset"),  # once a 500: SQLite overflow
    ("GET", "/v1/jobs", {"params": {"state": "sleeping"}}, 422, "query.state"),
    ("GET", "/v1/jobs/j-x", {"params": {"wait": "-1"}}, 422, "query.wait"),
    ("GET", "/v1/jobs/j-x/logs", {"params": {"stream": "stdin"}}, 422, "query.stream"),
    ("POST", "/v1/jobs", {"json": NOOP, "headers": {"Idempotency-Key": "k" * 200}}, 422, "header.idempotency-key"),
], ids=["malformed-json", "not-an-object", "not-utf8", "missing-spec", "limit-0", "huge-offset", "unknown-state",
        "negative-wait", "unknown-stream", "long-idempotency-key"])  # fmt: skip
def test_bad_requests_are_4xx_naming_what_is_wrong(http, owner, method, path, kw, status, field) -> None:
    body = error(http.send(signed(http, owner, method, path, **kw)), status)
    assert field in body["fields"], body


def test_garbage_last_event_id_starts_from_the_beginning(http, owner, owned_job) -> None:
    for value in ("²".encode("latin-1"), b"9" * 40, b"-3", b"abc"):  # "²".isdigit(), yet int("²") raises: once a 500
        request = signed(http, owner, "GET", f"/v1/jobs/{owned_job}/events", headers={"Last-Event-ID": value})
        messages = _sse(http.send(request))
        assert messages[0]["event"] == "Created" and messages[-1]["event"] == "end", value


# -- events: Server-Sent Events, resumable, with an explicit end ------------------------------------------


def _sse(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/event-stream")
    return _parse_sse(response.text)


def _parse_sse(text: str) -> list[dict]:
    messages = []
    for block in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
        if fields:
            messages.append(fields)
    return messages


def test_events_end_with_an_end_event_and_resume_after_last_event_id(http, owner, owned_job) -> None:
    full = _sse(http.send(signed(http, owner, "GET", f"/v1/jobs/{owned_job}/events")))
    *events, end = full
    assert end == {"event": "end", "data": '{"state": "completed"}'}  # no id: resuming never skips it
    ids = [int(e["id"]) for e in events]
    assert ids == sorted(set(ids)) and len(ids) >= 4
    assert events[0]["event"] == "Created" and "Completed" in [e["event"] for e in events]
    assert all(json.loads(e["data"])["seq"] == int(e["id"]) for e in events)

    resumed = _sse(http.send(signed(http, owner, "GET", f"/v1/jobs/{owned_job}/events",
                                    headers={"Last-Event-ID": events[1]["id"]})))  # fmt: skip
    assert resumed == full[2:]  # exactly the rest: nothing lost, nothing repeated
    last = _sse(http.send(signed(http, owner, "GET", f"/v1/jobs/{owned_job}/events",
                                 headers={"Last-Event-ID": events[-1]["id"]})))  # fmt: skip
    assert last == [end]


def test_a_live_stream_ends_when_the_job_does(http, owner) -> None:
    with Client(API, key=owner) as client:
        job_id = client.submit(PENDING["spec"]).job.id
        request = signed(http, owner, "GET", f"/v1/jobs/{job_id}/events")
        with http.stream("GET", request.url, headers=request.headers) as response:
            assert response.status_code == 200
            lines = response.iter_lines()
            first = [next(lines) for _ in range(3)]
            assert first[1] == "event: Created"
            client.cancel(job_id)
            rest = "\n".join([*first, *lines])  # ends by itself: the server closes after `end`
    messages = _parse_sse(rest)
    assert messages[-1] == {"event": "end", "data": '{"state": "cancelled"}'}
    assert "Cancelled" in [m.get("event") for m in messages]


def test_sdk_events_resume_after_an_id(owner, owned_job) -> None:
    with Client(API, key=owner) as client:
        everything = list(client.events(owned_job))
        rest = list(client.events(owned_job, last_event_id=everything[2].seq))
    assert rest == everything[3:]
    assert "Completed" in [e.kind for e in everything]


def test_logs_follow_holds_the_response_until_the_job_ends(http, owner) -> None:
    with Client(API, key=owner) as client:
        job_id = client.submit(PENDING["spec"]).job.id
        request = signed(http, owner, "GET", f"/v1/jobs/{job_id}/logs", params={"follow": "true"})
        with http.stream("GET", request.url, headers=request.headers, timeout=httpx.Timeout(30, read=1.5)) as r:
            assert r.status_code == 200
            with pytest.raises(httpx.ReadTimeout):  # nothing yet, and the response is not over
                r.read()
        follower = signed(http, owner, "GET", f"/v1/jobs/{job_id}/logs", params={"follow": "true"})
        with http.stream("GET", follower.url, headers=follower.headers) as r:
            client.cancel(job_id)
            assert r.read() == b"" and r.status_code == 200  # the job ended (cancelled, never ran)

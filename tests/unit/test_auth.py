"""Request signing (shoal._auth) against the verifier (node.api.auth), through a real FastAPI app."""

from __future__ import annotations

import hashlib
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from fastapi import Depends, FastAPI, Request
from pydantic import BaseModel

from node.api.auth import MemoryNonceStore, NonceLedger, Nonces, RequestVerifier, node_authorities
from shoal._auth import (
    HEADER_BODY_SHA256,
    HEADER_KEY,
    HEADER_NONCE,
    HEADER_SIGNATURE,
    HEADER_TIMESTAMP,
    HEADER_VERSION,
    SIGNATURE_HEADERS,
    ClientKey,
    ShoalAuth,
    b64decode,
    b64encode,
    canonical_request,
    client_id_for,
)

NOW = 1_700_000_000.0


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class Echo(BaseModel):
    text: str


def make_app(verifier: RequestVerifier) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/echo")
    async def echo(body: Echo, request: Request, client_id: str = Depends(verifier)) -> dict[str, str]:
        # The verifier read the body first; the route still gets it, parsed and raw.
        raw = await request.body()
        return {"client_id": client_id, "text": body.text, "raw": raw.decode()}

    @app.get("/v1/items")
    async def items(q: str, page: int = 1, client_id: str = Depends(verifier)) -> dict[str, object]:
        return {"client_id": client_id, "q": q, "page": page}

    return app


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def verifier(clock: Clock) -> RequestVerifier:
    return RequestVerifier(clock=clock)


@pytest.fixture
def key() -> ClientKey:
    return ClientKey.generate()


@pytest.fixture
async def http(verifier: RequestVerifier) -> AsyncIterator[httpx.AsyncClient]:
    """An unauthenticated client on the app; tests sign (or mis-sign) requests themselves."""
    transport = httpx.ASGITransport(app=make_app(verifier))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
        yield client


def signed(
    http: httpx.AsyncClient, key: ClientKey, method: str, url: str, clock: Clock, **kw: object
) -> httpx.Request:
    request = http.build_request(method, url, **kw)  # type: ignore[arg-type]
    return ShoalAuth(key, clock=clock).sign(request)


def detail(response: httpx.Response) -> str:
    assert response.status_code == 401, response.text
    assert response.headers["WWW-Authenticate"] == "Shoal-Ed25519"
    return response.json()["detail"]


# -- accepted ------------------------------------------------------------------------------------


async def test_signed_post_passes_and_route_sees_client_id_and_body(http, key, clock) -> None:
    response = await http.send(signed(http, key, "POST", "/v1/echo", clock, json={"text": "hi there"}))
    assert response.status_code == 200, response.text
    assert response.json() == {"client_id": key.client_id, "text": "hi there", "raw": '{"text":"hi there"}'}


async def test_signed_get_with_query_passes(http, key, clock) -> None:
    request = signed(http, key, "GET", "/v1/items", clock, params={"q": "a b/ü", "page": "2"})
    assert b"?" in request.url.raw_path
    response = await http.send(request)
    assert response.status_code == 200, response.text
    assert response.json() == {"client_id": key.client_id, "q": "a b/ü", "page": 2}


async def test_auth_class_signs_every_request_with_fresh_nonce(verifier, key, clock) -> None:
    """ShoalAuth used as httpx's auth: repeated identical requests are not replays."""
    transport = httpx.ASGITransport(app=make_app(verifier))
    auth = ShoalAuth(key, clock=clock)
    async with httpx.AsyncClient(transport=transport, base_url="http://node", auth=auth) as client:
        first = await client.get("/v1/items", params={"q": "x"})
        second = await client.get("/v1/items", params={"q": "x"})
    assert first.status_code == second.status_code == 200
    assert first.request.headers[HEADER_NONCE] != second.request.headers[HEADER_NONCE]


def test_client_id_format(key: ClientKey) -> None:
    assert key.client_id == "c" + hashlib.sha256(key.public_key).hexdigest()[:32]
    assert len(key.client_id) == 33
    assert client_id_for(b64decode(key.public_key_b64)) == key.client_id


def test_canonical_string_layout() -> None:
    body = b'{"a":1}'
    message = canonical_request("post", "Node.example:8700", b"/v1/jobs?x=1", "1700000000", "ab" * 16, body)
    assert (
        message
        == b"shoal-auth-2\nPOST\nnode.example:8700\n/v1/jobs?x=1\n1700000000\n"
        + b"ab" * 16
        + b"\n"
        + hashlib.sha256(body).hexdigest().encode()
    )


def test_headers_are_urlsafe_base64(key: ClientKey, clock: Clock) -> None:
    request = ShoalAuth(key, clock=clock).sign(httpx.Request("GET", "http://node/v1/node"))
    assert len(b64decode(request.headers[HEADER_KEY])) == 32
    assert len(b64decode(request.headers[HEADER_SIGNATURE])) == 64
    assert request.headers[HEADER_TIMESTAMP] == str(int(NOW))
    assert len(request.headers[HEADER_NONCE]) == 32 and int(request.headers[HEADER_NONCE], 16) >= 0
    assert b64decode(request.headers[HEADER_KEY].rstrip("=")) == key.public_key  # unpadded accepted too


# -- rejected ------------------------------------------------------------------------------------


async def test_missing_headers_are_named(http, key, clock) -> None:
    response = await http.post("/v1/echo", json={"text": "x"})
    assert detail(response) == "missing signature headers: " + ", ".join(SIGNATURE_HEADERS)

    request = signed(http, key, "POST", "/v1/echo", clock, json={"text": "x"})
    del request.headers[HEADER_NONCE]
    assert detail(await http.send(request)) == f"missing signature headers: {HEADER_NONCE}"


async def test_malformed_key(http, key, clock) -> None:
    for bad in ("not base64!!", b64encode(b"short")):
        request = signed(http, key, "POST", "/v1/echo", clock, json={"text": "x"})
        request.headers[HEADER_KEY] = bad
        assert detail(await http.send(request)) == "malformed key"


async def test_forged_signature_is_rejected(http, key, clock) -> None:
    """Another key's valid signature, presented with this key's public key."""
    request = signed(http, ClientKey.generate(), "POST", "/v1/echo", clock, json={"text": "x"})
    request.headers[HEADER_KEY] = key.public_key_b64
    assert detail(await http.send(request)) == "bad signature"


async def test_tampered_body_is_rejected(http, key, clock) -> None:
    original = signed(http, key, "POST", "/v1/echo", clock, json={"text": "pay 1"})
    tampered = http.build_request("POST", "/v1/echo", json={"text": "pay 9"}, headers=original.headers)
    assert tampered.headers[HEADER_SIGNATURE] == original.headers[HEADER_SIGNATURE]
    assert detail(await http.send(tampered)) == "bad signature"
    # and the untampered original still goes through: the failed attempt did not burn its nonce
    assert (await http.send(original)).status_code == 200


async def test_tampered_query_string_is_rejected(http, key, clock) -> None:
    original = signed(http, key, "GET", "/v1/items", clock, params={"q": "mine"})
    tampered = http.build_request(
        "GET", "/v1/items", params={"q": "mine", "page": "2"}, headers=original.headers
    )
    assert detail(await http.send(tampered)) == "bad signature"
    moved = http.build_request("GET", "/v1/items", params={"q": "theirs"}, headers=original.headers)
    assert detail(await http.send(moved)) == "bad signature"


async def test_path_is_verified_as_raw_bytes(http, key, clock) -> None:
    """``/v1/%69tems`` routes like ``/v1/items`` but is not what was signed."""
    original = signed(http, key, "GET", "/v1/items", clock, params={"q": "x"})
    encoded = http.build_request("GET", "/v1/%69tems", params={"q": "x"}, headers=original.headers)
    assert encoded.url.raw_path.startswith(b"/v1/%69tems")
    assert detail(await http.send(encoded)) == "bad signature"


async def test_replayed_request_is_rejected(http, key, clock) -> None:
    request = signed(http, key, "POST", "/v1/echo", clock, json={"text": "once"})
    assert (await http.send(request)).status_code == 200
    assert detail(await http.send(request)) == "nonce already used"


async def test_stale_timestamp_is_rejected(http, key, clock) -> None:
    request = signed(http, key, "POST", "/v1/echo", Clock(NOW - 360), json={"text": "x"})
    assert detail(await http.send(request)) == "timestamp 360 s off (max 300)"
    future = signed(http, key, "POST", "/v1/echo", Clock(NOW + 400), json={"text": "x"})
    assert detail(await http.send(future)) == "timestamp 400 s off (max 300)"
    just_inside = signed(http, key, "POST", "/v1/echo", Clock(NOW - 299), json={"text": "x"})
    assert (await http.send(just_inside)).status_code == 200


async def test_malformed_timestamp_and_nonce(http, key, clock) -> None:
    request = signed(http, key, "POST", "/v1/echo", clock, json={"text": "x"})
    request.headers[HEADER_TIMESTAMP] = "soon"
    assert detail(await http.send(request)).startswith("malformed timestamp")
    request = signed(http, key, "POST", "/v1/echo", clock, json={"text": "x"})
    request.headers[HEADER_NONCE] = "x" * 32
    assert detail(await http.send(request)).startswith("malformed nonce")


async def test_unsigned_garbage_does_not_fill_the_nonce_cache(http, verifier, key, clock) -> None:
    request = signed(http, ClientKey.generate(), "POST", "/v1/echo", clock, json={"text": "x"})
    request.headers[HEADER_KEY] = key.public_key_b64
    await http.send(request)
    assert len(verifier.nonces) == 0


# -- nonce cache ---------------------------------------------------------------------------------


def test_nonce_ledger_bounds_each_client_and_forgets_expired_seconds() -> None:
    ledger = NonceLedger(per_client=2, total=3)
    assert ledger.room("a", now=0) == "ok"
    ledger.add("a", expires=300.5)
    ledger.add("a", expires=301.2)
    assert ledger.room("a", now=1) == "client_full"  # a's bound: a is refused, nobody is evicted
    assert ledger.retry_after("a", now=1) == 300
    assert ledger.room("b", now=1) == "ok"
    ledger.add("b", expires=310)
    assert ledger.room("c", now=1) == "node_full"
    assert ledger.held("a") == 2 and ledger.held("b") == 1
    assert ledger.room("a", now=301) == "ok"  # the second ending at 301 is over: one of a's expired
    assert ledger.held("a") == 1 and ledger.total == 2
    ledger.remove("a", expires=301.2)
    assert ledger.held("a") == 0
    assert ledger.room("c", now=10_000) == "ok" and ledger.total == 0  # a long gap forgets everything


async def test_nonces_survive_a_restart_of_the_store(tmp_path: Path) -> None:
    """Nonces live in SQLite: a new ``Nonces`` on the same file (a restarted node) refuses a replay,
    and counts what the client already holds against its bound."""
    import trio

    from node.store import Store

    async def session(check) -> None:
        store = Store(tmp_path / "shoal.db")
        async with trio.open_nursery() as nursery:
            await nursery.start(store.run)
            nonces = Nonces(store, per_client=3)
            await nonces.load(now=NOW)
            await check(nonces, store)
            nursery.cancel_scope.cancel()

    async def first(nonces: Nonces, store: Store) -> None:
        assert await nonces.record("a", b"n1", expires=NOW + 300, now=NOW) == "ok"
        assert await nonces.record("a", b"n2", expires=NOW + 300, now=NOW) == "ok"
        assert await nonces.record("a", b"old", expires=NOW - 1, now=NOW) == "ok"

    async def after_restart(nonces: Nonces, store: Store) -> None:
        assert len(nonces) == 2  # the expired one is not counted
        assert await nonces.record("a", b"n1", expires=NOW + 300, now=NOW) == "replay"
        assert await nonces.record("b", b"n1", expires=NOW + 300, now=NOW) == "ok"  # same nonce, other client
        assert await nonces.record("a", b"n3", expires=NOW + 300, now=NOW) == "ok"
        assert await nonces.record("a", b"n4", expires=NOW + 300, now=NOW) == "client_full"
        assert await store.purge_nonces(NOW) == 1  # the expired row goes
        assert nonces.refused == {"replay": 1, "client_full": 1, "node_full": 0}

    await session(first)
    await session(after_restart)


async def test_a_client_over_its_nonce_bound_gets_429_not_eviction(clock, key) -> None:
    verifier = RequestVerifier(nonces=Nonces(MemoryNonceStore(), per_client=2), clock=clock)
    transport = httpx.ASGITransport(app=make_app(verifier))
    async with httpx.AsyncClient(transport=transport, base_url="http://node") as http:
        victim = ClientKey.generate()
        theirs = signed(http, victim, "POST", "/v1/echo", clock, json={"text": "victim's"})
        assert (await http.send(theirs)).status_code == 200
        for n in range(2):
            response = await http.send(signed(http, key, "POST", "/v1/echo", clock, json={"text": str(n)}))
            assert response.status_code == 200
        over = await http.send(signed(http, key, "POST", "/v1/echo", clock, json={"text": "3"}))
        assert over.status_code == 429
        assert int(over.headers["Retry-After"]) >= 1
        # the flood evicted nothing: the victim's request still cannot be replayed, and it can go on
        assert detail(await http.send(theirs)) == "nonce already used"
        assert (await http.send(signed(http, victim, "POST", "/v1/echo", clock, json={"text": "x"}))).status_code == 200


async def test_old_signature_version_is_told_to_upgrade(http, key, clock) -> None:
    request = signed(http, key, "POST", "/v1/echo", clock, json={"text": "x"})
    del request.headers[HEADER_VERSION]
    assert "upgrade your Shoal client" in detail(await http.send(request))


async def test_request_signed_for_another_host_is_refused(key, clock) -> None:
    verifier = RequestVerifier(hosts=node_authorities("127.0.0.1", 8700), clock=clock)
    transport = httpx.ASGITransport(app=make_app(verifier))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8700") as http:
        mine = signed(http, key, "POST", "/v1/echo", clock, json={"text": "x"})
        theirs = signed(http, key, "POST", "http://127.0.0.1:8701/v1/echo", clock, json={"text": "x"})
        assert "not a name of this node" in detail(await http.send(theirs))  # made for another node
        moved = http.build_request("POST", "/v1/echo", json={"text": "x"}, headers=theirs.headers)
        moved.headers["Host"] = "127.0.0.1:8700"  # claims to be for this node: the signature says otherwise
        assert detail(await http.send(moved)) == "bad signature"
        assert (await http.send(mine)).status_code == 200


def test_node_authorities() -> None:
    assert node_authorities("127.0.0.1", 8700) == {"127.0.0.1:8700", "localhost:8700", "[::1]:8700"}
    assert node_authorities("10.0.0.5", 80, ["API.example.com", "[2001:db8::1]"]) == {
        "10.0.0.5:80", "10.0.0.5", "api.example.com", "api.example.com:80", "[2001:db8::1]", "[2001:db8::1]:80"}
    wildcard = node_authorities("0.0.0.0", 8700, local_addresses=["192.168.1.7", "fe80::1%eth0"])
    assert {"192.168.1.7:8700", "[fe80::1]:8700", "127.0.0.1:8700"} <= wildcard
    assert "192.168.1.8:8700" not in wildcard


# -- key file ------------------------------------------------------------------------------------


def test_key_file_created_0600_and_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    first = ClientKey.load_or_create()
    path = tmp_path / "home" / "client.key"
    assert first.path == path
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    second = ClientKey.load_or_create()
    assert second.client_id == first.client_id
    assert second.public_key == first.public_key
    assert [p.name for p in path.parent.iterdir()] == ["client.key"]  # no temp files left
    assert "PRIVATE KEY" not in repr(first)


def test_key_file_explicit_path_and_raw_seed(tmp_path: Path) -> None:
    key = ClientKey.load_or_create(tmp_path / "k" / "id.key")
    assert ClientKey.load(tmp_path / "k" / "id.key").client_id == key.client_id
    seed_file = tmp_path / "seed"
    seed_file.write_bytes(bytes(range(32)))
    assert ClientKey.load(seed_file).client_id == ClientKey.from_seed(bytes(range(32))).client_id
    (tmp_path / "junk").write_bytes(b"hello")
    with pytest.raises(ValueError, match="cannot read client key"):
        ClientKey.load(tmp_path / "junk")


# -- over a real socket ----------------------------------------------------------------------------


async def test_sdk_signature_verifies_through_hypercorn(key: ClientKey) -> None:
    """ASGITransport derives raw_path from the same httpx URL the signer used; a real server
    parses it off the wire. Percent-encoded paths and queries must still verify."""
    from functools import partial

    import trio
    from hypercorn.config import Config
    from hypercorn.trio import serve

    import shoal

    app = FastAPI()
    verifier = RequestVerifier()

    @app.get("/v1/jobs/{job_id}")
    async def describe(job_id: str, request: Request, client_id: str = Depends(verifier)) -> dict[str, str]:
        return {"id": job_id, "raw": request.scope["raw_path"].decode(), "owner": client_id}

    config = Config()
    config.bind = ["127.0.0.1:0"]
    config.loglevel = "WARNING"
    shutdown = trio.Event()
    async with trio.open_nursery() as nursery:
        binds = await nursery.start(partial(serve, app, config, shutdown_trigger=shutdown.wait))
        async with shoal.AsyncClient(binds[0], key=key) as client:
            request = client._describe_request("a b ü?&x", wait=1.5)
            response = await client._http.send(request)
        shutdown.set()
    assert response.status_code == 200, response.text
    assert response.json() == {
        "id": "a b ü?&x",
        "raw": "/v1/jobs/a%20b%20%C3%BC%3F%26x",
        "owner": key.client_id,
    }


# -- checked before the body ------------------------------------------------------------------------

def before_body(verifier: RequestVerifier, request: httpx.Request) -> bytes | None:
    """``verify_before_body`` on ``request`` as a node sees it before a byte of its body arrived."""
    from starlette.requests import Request as StarletteRequest

    scope = {"type": "http", "method": request.method, "path": request.url.path, "raw_path": request.url.raw_path,
             "query_string": b"", "headers": [(k.lower().encode(), v.encode()) for k, v in request.headers.items()]}
    return verifier.verify_before_body(StarletteRequest(scope))


async def test_a_declared_body_hash_lets_the_signature_be_checked_before_the_body(http, verifier, key, clock) -> None:
    """What a node open only to some keys does before it gives a body room (node.api.middleware.Admitted)."""
    from fastapi import HTTPException

    request = signed(http, key, "POST", "/v1/echo", clock, json={"text": "x"})
    assert before_body(verifier, request) == b64decode(key.public_key_b64)
    forged = signed(http, ClientKey.generate(), "POST", "/v1/echo", clock, json={"text": "x"})
    forged.headers[HEADER_KEY] = key.public_key_b64
    with pytest.raises(HTTPException) as refused:
        before_body(verifier, forged)
    assert refused.value.status_code == 401 and refused.value.detail == "bad signature"
    request.headers[HEADER_BODY_SHA256] = hashlib.sha256(b'{"text":"y"}').hexdigest()  # not what was signed
    with pytest.raises(HTTPException):
        before_body(verifier, request)
    del request.headers[HEADER_BODY_SHA256]
    assert before_body(verifier, request) is None  # declares nothing: checked once its body has arrived


async def test_a_body_other_than_the_one_declared_is_refused_once_it_arrives(http, key, clock) -> None:
    original = signed(http, key, "POST", "/v1/echo", clock, json={"text": "pay 1"})
    other = http.build_request("POST", "/v1/echo", json={"text": "pay 9"}, headers=original.headers)
    assert other.headers[HEADER_BODY_SHA256] == hashlib.sha256(original.content).hexdigest()
    assert detail(await http.send(other)) == "bad signature"


async def test_a_replay_is_refused_before_its_body(http, verifier, key, clock, monkeypatch) -> None:
    """A request seen on the wire, sent again with a long body, would otherwise hold room until its body came."""
    from fastapi import HTTPException

    import node.api.auth

    monkeypatch.setattr(node.api.auth, "RECENT", 2)
    requests = [signed(http, key, "POST", "/v1/echo", clock, json={"text": str(i)}) for i in range(3)]
    for request in requests:
        assert (await http.send(request)).status_code == 200
    with pytest.raises(HTTPException) as refused:
        before_body(verifier, requests[2])
    assert refused.value.status_code == 401 and refused.value.detail == "nonce already used"
    assert before_body(verifier, requests[0]) == b64decode(key.public_key_b64)  # past the last RECENT: looked at
    assert detail(await http.send(requests[0])) == "nonce already used"  # once its body has come

"""Verifying signed API requests: returns the caller's client id, or raises 401 saying why.

Usable as a FastAPI dependency::

    verifier = RequestVerifier()

    @app.post("/v1/jobs")
    async def submit(body: SubmitRequest, client_id: str = Depends(verifier)) -> JobDescription: ...

The node's app calls it from a middleware instead (``node.api.app._Signed``), so that it runs
before FastAPI parses the body: an unsigned request gets 401 whatever it carries.

The canonical string and headers are defined once, in ``shoal._auth`` (the SDK signs with it).
Checks run cheapest and least trusting first: headers present → key well-formed → timestamp
within ``max_skew`` → signature over the received bytes → nonce unused. A nonce is recorded only
after its signature verified, so unsigned garbage cannot fill the cache and evict real nonces.

Replay protection is per node: the nonce cache is in memory, so a restart forgets it (a replay
inside the 5-minute window of a pre-restart request is then possible), and a request signed
for one node is also valid for another node within the window (the host is not signed).
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import NoReturn
from urllib.parse import quote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import HTTPException, Request

from shoal._auth import (
    HEADER_NONCE,
    HEADER_TIMESTAMP,
    NONCE_BYTES,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    SIGNATURE_HEADERS,
    b64decode,
    canonical_request,
    canonical_target,
    client_id_for,
)

__all__ = ["NonceCache", "RequestVerifier"]

_HEX = frozenset("0123456789abcdef")


class NonceCache:
    """Nonces seen recently, per client key, bounded in time and in size.

    An entry is needed only while its request's timestamp is inside the verifier's window;
    after that the timestamp check rejects a replay on its own, so entries expire. When
    ``max_entries`` is reached the oldest entry is evicted: memory stays bounded (roughly
    200 bytes an entry) at the price of forgetting the oldest nonce early.
    """

    def __init__(self, max_entries: int = 1_000_000) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self.max_entries = max_entries
        # (public key + nonce bytes) → expiry, in insertion order; OrderedDict because popping
        # the oldest of a plain dict degrades once many entries have been deleted from the front.
        self._entries: OrderedDict[bytes, float] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def add(self, public_key: bytes, nonce: bytes, *, now: float, expires_at: float) -> bool:
        """Record ``nonce`` for ``public_key``; False if it is already recorded (a replay)."""
        self._expire(now)
        entry = public_key + nonce
        if entry in self._entries:
            return False
        while len(self._entries) >= self.max_entries:
            self._entries.popitem(last=False)
        self._entries[entry] = expires_at
        return True

    def _expire(self, now: float) -> None:
        # Entries are in arrival order, not exactly expiry order (client timestamps vary within
        # the window); stopping at the first live one keeps this O(1) amortised, and the few
        # expired entries left behind are only kept a little longer than needed.
        entries = self._entries
        while entries:
            entry, expires_at = next(iter(entries.items()))
            if expires_at > now:
                return
            del entries[entry]


class RequestVerifier:
    """FastAPI dependency: ``client_id: str = Depends(verifier)``. Raises 401 naming the problem.

    One instance per app (it owns the nonce cache). ``clock`` returns unix seconds; tests
    inject their own.
    """

    def __init__(
        self,
        *,
        max_skew: int = 300,
        nonce_cache: NonceCache | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_skew = max_skew
        self.nonces = nonce_cache if nonce_cache is not None else NonceCache()
        self._clock = clock

    async def __call__(self, request: Request) -> str:
        headers = request.headers
        missing = [name for name in SIGNATURE_HEADERS if not headers.get(name)]
        if missing:
            _reject(f"missing signature headers: {', '.join(missing)}")
        key_text, timestamp, nonce, signature_text = (headers[name] for name in SIGNATURE_HEADERS)

        try:
            public_key = b64decode(key_text)
            if len(public_key) != PUBLIC_KEY_BYTES:
                raise ValueError
            verifying_key = Ed25519PublicKey.from_public_bytes(public_key)
        except ValueError:
            _reject("malformed key")

        if not timestamp.isascii() or not timestamp.isdigit() or len(timestamp) > 12:
            _reject(f"malformed timestamp: {HEADER_TIMESTAMP} must be integer unix seconds")
        now = self._clock()
        skew = abs(now - int(timestamp))
        if skew > self.max_skew:
            _reject(f"timestamp {math.ceil(skew)} s off (max {self.max_skew})")

        if len(nonce) != 2 * NONCE_BYTES or not set(nonce) <= _HEX:
            _reject(f"malformed nonce: {HEADER_NONCE} must be {NONCE_BYTES} random bytes as lower-case hex")

        body = await request.body()  # Starlette caches it: the route can still read the body
        raw_path = request.scope.get("raw_path") or quote(request.scope["path"]).encode("ascii")
        target = canonical_target(raw_path.split(b"?", 1)[0], request.scope.get("query_string", b""))
        message = canonical_request(request.method, target, timestamp, nonce, body)
        try:
            signature = b64decode(signature_text)
            if len(signature) != SIGNATURE_BYTES:
                raise ValueError
            verifying_key.verify(signature, message)
        except (ValueError, InvalidSignature):
            _reject("bad signature")

        if not self.nonces.add(
            public_key, bytes.fromhex(nonce), now=now, expires_at=int(timestamp) + self.max_skew
        ):
            _reject("nonce already used")

        client_id = client_id_for(public_key)
        request.state.client_id = client_id
        request.state.public_key = public_key  # for the authorization that follows (node.api.access)
        return client_id


def _reject(detail: str) -> NoReturn:
    raise HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Shoal-Ed25519"})

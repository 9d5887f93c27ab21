"""Verifying signed API requests: returns the caller's client id, or raises 401 saying why.

Usable as a FastAPI dependency::

    verifier = RequestVerifier()

    @app.post("/v1/jobs")
    async def submit(body: SubmitRequest, client_id: str = Depends(verifier)) -> JobDescription: ...

The node's app calls it from a middleware instead (``node.api.middleware.Signed``), so that it runs
before FastAPI parses the body: an unsigned request gets 401 whatever it carries.

The canonical string and headers are defined once, in ``shoal._auth`` (the SDK signs with it).
Checks run cheapest and least trusting first: headers present → signature version → host names
this node → key well-formed → timestamp within ``max_skew`` → signature over the received bytes
→ nonce unused. A nonce is recorded only after its signature verified, so unsigned garbage
cannot fill the record.

Replay protection: the host is signed, so a request made for one node is refused by another
(``hosts``: the authorities this node answers to). Nonces are recorded durably (the node's
SQLite store, one row per request in the writer's group commit) until their request's
timestamp leaves the window, so a replay against a restarted node is refused too. Each client
may hold at most ``per_client`` live nonces: past that it gets 429 with ``Retry-After``, and
never evicts anyone else's; the node as a whole holds at most ``total`` (then 503).
"""

from __future__ import annotations

import hashlib
import math
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any, Literal, NamedTuple, NoReturn, Protocol
from urllib.parse import quote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from fastapi import HTTPException, Request

from jobs import ShoalError
from shoal._auth import (
    AUTH_VERSION,
    HEADER_BODY_SHA256,
    HEADER_NONCE,
    HEADER_TIMESTAMP,
    HEADER_VERSION,
    NONCE_BYTES,
    PUBLIC_KEY_BYTES,
    SIGNATURE_BYTES,
    SIGNATURE_HEADERS,
    b64decode,
    canonical_target,
    client_id_for,
    signed_message,
)

__all__ = ["MemoryNonceStore", "NonceLedger", "Nonces", "RequestVerifier"]

_HEX = frozenset("0123456789abcdef")


NONCES_PER_CLIENT = 250_000  # live nonces one client may hold: ~830 requests/s sustained over the window
NONCES_TOTAL = 2_000_000  # live nonces of all clients together (rows of the nonces table)
RECENT = 50_000  # nonces also kept in memory (4 MB), for a look before a request's body: a replay of a
# request seen on the wire is refused then unless 50,000 requests came after it (within the 300 s window)
PURGE_EVERY = 30.0  # seconds between two deletions of expired nonces

NonceVerdict = Literal["ok", "replay", "client_full", "node_full"]


class NonceStore(Protocol):
    """Where nonces are kept: ``node.store.Store`` on a node; ``MemoryNonceStore`` in tests."""

    async def record_nonce(self, client: str, nonce: bytes, expires: float) -> bool: ...
    async def purge_nonces(self, now: float) -> int: ...
    async def nonce_counts(self, now: float) -> list[tuple[str, int, int]]: ...


class MemoryNonceStore:
    """A ``NonceStore`` in a dict: forgets everything when the process ends (apps without a node)."""

    def __init__(self) -> None:
        self._rows: dict[tuple[str, bytes], float] = {}

    async def record_nonce(self, client: str, nonce: bytes, expires: float) -> bool:
        if (client, nonce) in self._rows:
            return False
        self._rows[(client, nonce)] = expires
        return True

    async def purge_nonces(self, now: float) -> int:
        stale = [k for k, expires in self._rows.items() if expires < now]
        for k in stale:
            del self._rows[k]
        return len(stale)

    async def nonce_counts(self, now: float) -> list[tuple[str, int, int]]:
        counts: dict[tuple[str, int], int] = defaultdict(int)
        for (client, _), expires in self._rows.items():
            if expires >= now:
                counts[(client, int(expires))] += 1
        return [(client, second, n) for (client, second), n in counts.items()]


class NonceLedger:
    """How many live nonces each client holds, counted per whole second of expiry: decides
    whether a client may record another without keeping the nonces themselves in memory.

    Pure (no clock, no I/O): callers pass ``now``.
    """

    def __init__(self, per_client: int = NONCES_PER_CLIENT, total: int = NONCES_TOTAL) -> None:
        if per_client < 1 or total < 1:
            raise ValueError("nonce bounds must be at least 1")
        self.per_client = per_client
        self.total_limit = total
        self.total = 0
        self._clients: dict[str, int] = {}
        self._seconds: dict[int, dict[str, int]] = {}  # expiry second -> client -> count
        self._floor: int | None = None  # every second before it has been forgotten

    def held(self, client: str) -> int:
        return self._clients.get(client, 0)

    def room(self, client: str, now: float) -> NonceVerdict:
        """"ok", or which bound a new nonce of ``client`` would cross."""
        self.forget(now)
        if self._clients.get(client, 0) >= self.per_client:
            return "client_full"
        if self.total >= self.total_limit:
            return "node_full"
        return "ok"

    def add(self, client: str, expires: float, n: int = 1) -> None:
        second = int(expires)
        bucket = self._seconds.setdefault(second, {})
        bucket[client] = bucket.get(client, 0) + n
        self._clients[client] = self._clients.get(client, 0) + n
        self.total += n
        if self._floor is None or second < self._floor:
            self._floor = second

    def remove(self, client: str, expires: float) -> None:
        """Undo one ``add`` (the nonce turned out to be a replay)."""
        bucket = self._seconds.get(int(expires), {})
        if bucket.get(client, 0) > 0:
            self._drop(int(expires), client, 1)

    def forget(self, now: float) -> None:
        """Drop the counts of every second that ended before ``now``."""
        if self._floor is None:
            return
        end = int(now)
        if not self._seconds:
            self._floor = end
            return
        if end - self._floor > len(self._seconds):  # a long gap: visit the seconds held, not every second
            for second in [s for s in self._seconds if s < end]:
                for client, n in list(self._seconds[second].items()):
                    self._drop(second, client, n)
        else:
            for second in range(self._floor, end):
                for client, n in list(self._seconds.get(second, {}).items()):
                    self._drop(second, client, n)
        self._floor = max(self._floor, end)

    def retry_after(self, client: str, now: float) -> int:
        """Seconds until ``client``'s oldest live nonce expires (at least 1)."""
        for second in sorted(self._seconds):
            if client in self._seconds[second]:
                return max(1, math.ceil(second + 1 - now))
        return 1

    def _drop(self, second: int, client: str, n: int) -> None:
        bucket = self._seconds[second]
        bucket[client] -= n
        if bucket[client] <= 0:
            del bucket[client]
            if not bucket:
                del self._seconds[second]
        self._clients[client] -= n
        if self._clients[client] <= 0:
            del self._clients[client]
        self.total -= n


class Nonces:
    """Used nonces, per client, kept durably in ``store`` until their request's timestamp is stale,
    and bounded by a ``NonceLedger``. ``load`` reads the live counts back after a restart; ``run``
    purges expired rows every ``PURGE_EVERY`` seconds."""

    def __init__(self, store: NonceStore | None = None, *, per_client: int = NONCES_PER_CLIENT,
                 total: int = NONCES_TOTAL) -> None:
        self.store: NonceStore = store if store is not None else MemoryNonceStore()
        self.ledger = NonceLedger(per_client, total)
        self.refused = {"replay": 0, "client_full": 0, "node_full": 0}  # for /metrics
        self.recent: dict[bytes, None] = {}  # the last RECENT nonces recorded, oldest first

    def used_recently(self, nonce: bytes) -> bool:
        """Whether ``nonce`` is one of the last RECENT recorded (by any client: they are 16 random bytes). A
        cheap look before a request's body is read; ``record`` remains the check."""
        return nonce in self.recent

    def __len__(self) -> int:
        return self.ledger.total

    async def load(self, now: float) -> None:
        for client, second, n in await self.store.nonce_counts(now):
            self.ledger.add(client, second, n)

    async def record(self, client: str, nonce: bytes, *, expires: float, now: float) -> NonceVerdict:
        verdict = self.ledger.room(client, now)
        if verdict == "ok":
            self.ledger.add(client, expires)  # counted before the write: concurrent requests see it
            try:
                fresh = await self.store.record_nonce(client, nonce, expires)
            except BaseException:
                self.ledger.remove(client, expires)
                raise
            if not fresh:
                self.ledger.remove(client, expires)
                verdict = "replay"
            else:
                self.recent[nonce] = None
                if len(self.recent) > RECENT:
                    del self.recent[next(iter(self.recent))]
        if verdict != "ok":
            self.refused[verdict] += 1
        return verdict

    async def run(self, clock: Callable[[], float] = time.time, *, task_status: Any = None) -> None:
        """Load the live counts (before the API serves: ``nursery.start``), then purge for ever."""
        import trio

        await self.load(clock())
        (task_status or trio.TASK_STATUS_IGNORED).started()
        while True:
            await trio.sleep(PURGE_EVERY)
            await self.store.purge_nonces(clock())


class RequestVerifier:
    """FastAPI dependency: ``client_id: str = Depends(verifier)``. Raises 401 naming the problem
    (429 or 503 with ``Retry-After`` when a nonce bound is reached).

    One instance per app (it owns the nonces). ``hosts``: the ``Host`` values (lower case) this
    node answers to; None accepts any (an app that is not a node). ``clock`` returns unix
    seconds; tests inject their own.
    """

    def __init__(
        self,
        *,
        max_skew: int = 300,
        nonces: Nonces | None = None,
        hosts: Iterable[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.max_skew = max_skew
        self.nonces = nonces if nonces is not None else Nonces()
        self.hosts = frozenset(h.lower() for h in hosts) if hosts is not None else None
        self._clock = clock

    def verify_before_body(self, request: Request) -> bytes | None:
        """The signer's public key, when the request declares its body's SHA-256 (``X-Shoal-Body-SHA256``)
        and its signature over that verifies: checked before a byte of the body is read. None when it
        declares none. Raises 401 as ``__call__`` does, which still checks the body that arrives."""
        declared = request.headers.get(HEADER_BODY_SHA256)
        if declared is None:
            return None
        signer = self._signer(request)
        self._verify(request, signer, declared)
        if self.nonces.used_recently(bytes.fromhex(signer.nonce)):
            _reject("nonce already used")  # a replay, its body perhaps made long to hold room
        return signer.public_key

    async def __call__(self, request: Request, admit: Callable[[bytes], None] | None = None, *,
                       verified_before_body: bool = False) -> str:
        """The verified caller's client id; raises ``HTTPException`` (401, 429, or 503 when the nonce
        store is full or cannot be written). ``admit(public_key)`` runs once the signature verified, before
        the nonce is recorded: it raises to refuse the key (403), so a stranger's requests take no room in
        the nonce store. ``verified_before_body``: ``verify_before_body`` passed on this request, so only the
        body's hash is left to compare with the one declared and signed."""
        signer = self._signer(request)
        body = await request.body()  # Starlette caches it: the route can still read the body
        body_sha256 = hashlib.sha256(body).hexdigest()
        if not verified_before_body:
            self._verify(request, signer, body_sha256)
        elif body_sha256 != request.headers.get(HEADER_BODY_SHA256):
            _reject("bad signature")  # the body is not the one whose hash was signed
        public_key, timestamp, nonce, now = signer.public_key, signer.timestamp, signer.nonce, signer.now
        if admit is not None:
            admit(public_key)

        client_id = client_id_for(public_key)
        try:
            verdict = await self.nonces.record(client_id, bytes.fromhex(nonce), now=now,
                                               expires=int(timestamp) + self.max_skew)
        except ShoalError as e:
            if not e.retryable:
                raise
            # the node cannot write its store now (its disk is full, say): it did nothing, and carries on
            raise HTTPException(503, detail=f"{e}; nothing was done, retry later", headers={"Retry-After": "5"}) from e
        if verdict == "replay":
            _reject("nonce already used")
        if verdict != "ok":
            retry = str(self.nonces.ledger.retry_after(client_id, now) if verdict == "client_full" else 10)
            who = (f"client {client_id} has signed {self.nonces.ledger.per_client} requests within the "
                   f"{2 * self.max_skew} s replay window" if verdict == "client_full"
                   else "this node holds as many signed requests as it can remember")
            raise HTTPException(429 if verdict == "client_full" else 503, detail=f"{who}: retry in {retry} s",
                                headers={"Retry-After": retry})

        request.state.client_id = client_id
        request.state.public_key = public_key
        return client_id

    def _signer(self, request: Request) -> _Signer:
        """The request's signature headers, checked as far as they can be without its body (401)."""
        headers = request.headers
        missing = [name for name in SIGNATURE_HEADERS if not headers.get(name)]
        if missing:
            _reject(f"missing signature headers: {', '.join(missing)}")
        if headers.get(HEADER_VERSION) != AUTH_VERSION:
            _reject(f"this node takes requests signed with version {AUTH_VERSION} of the canonical string "
                    f"(it covers the host; {HEADER_VERSION}: {AUTH_VERSION}): upgrade your Shoal client")
        host = headers.get("host", "")
        if self.hosts is not None and host.lower() not in self.hosts:
            _reject(f"the request was made for host {host[:100]!r}, which is not a name of this node "
                    "(a node's names: its API address, and each shoal serve --api-name)")
        key_text, timestamp, nonce, signature = (headers[name] for name in SIGNATURE_HEADERS)

        try:
            public_key = b64decode(key_text)
            if len(public_key) != PUBLIC_KEY_BYTES:
                raise ValueError
            Ed25519PublicKey.from_public_bytes(public_key)
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
        return _Signer(public_key, host, timestamp, nonce, signature, now)

    @staticmethod
    def _verify(request: Request, signer: _Signer, body_sha256: str) -> None:
        """401 unless ``signer``'s signature is over this request with a body of ``body_sha256``."""
        raw_path = request.scope.get("raw_path") or quote(request.scope["path"]).encode("ascii")
        target = canonical_target(raw_path.split(b"?", 1)[0], request.scope.get("query_string", b""))
        message = signed_message(request.method, signer.host, target, signer.timestamp, signer.nonce, body_sha256)
        try:
            signature = b64decode(signer.signature)
            if len(signature) != SIGNATURE_BYTES:
                raise ValueError
            Ed25519PublicKey.from_public_bytes(signer.public_key).verify(signature, message)
        except (ValueError, InvalidSignature):
            _reject("bad signature")


class _Signer(NamedTuple):
    """A request's signature headers, checked but for the signature itself."""

    public_key: bytes
    host: str
    timestamp: str
    nonce: str
    signature: str
    now: float


def _reject(detail: str) -> NoReturn:
    raise HTTPException(401, detail=detail, headers={"WWW-Authenticate": "Shoal-Ed25519"})


def node_authorities(bind_host: str, port: int, names: Iterable[str] = (),
                     local_addresses: Iterable[str] = ()) -> frozenset[str]:
    """The ``Host`` values (lower case) that name this node: its API address, loopback names when
    it listens on loopback, every local address and the host name when it listens on all of
    them (``local_addresses``, ``socket.gethostname()``), and each extra name (``--api-name``;
    one without a port stands for itself and for itself with ``port``)."""
    import ipaddress
    import socket

    def with_port(name: str) -> str:
        return f"[{name}]:{port}" if ":" in name else f"{name}:{port}"

    bind = bind_host.strip("[]").lower()
    loopback = {"127.0.0.1", "localhost", "::1"}
    hosts: set[str] = {bind}
    try:
        address = ipaddress.ip_address(bind)
        wildcard, is_loopback = address.is_unspecified, address.is_loopback
    except ValueError:
        wildcard, is_loopback = False, bind == "localhost"
    if is_loopback or wildcard:
        hosts |= loopback
    if wildcard:
        hosts |= {a.split("%")[0].lower() for a in local_addresses}
        hosts |= {socket.gethostname().lower(), socket.getfqdn().lower()}
    out = {with_port(h) for h in hosts}
    if port in (80, 443):  # clients leave the scheme's default port out of Host
        out |= {f"[{h}]" if ":" in h else h for h in hosts}
    for name in names:
        name = name.strip().lower()
        if name:
            out.add(name)
            if ":" not in name.rsplit("]", 1)[-1]:
                out.add(f"{name}:{port}")
    return frozenset(out)

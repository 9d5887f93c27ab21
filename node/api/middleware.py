"""The ASGI middleware in front of every route: on a node open only to some keys, a signature checked before
the body (``Admitted``); body limits (413/408/503); request signatures (401/403). Each answers before a
route, or FastAPI's body parsing, sees the request."""

import contextlib

import trio
from fastapi import Request
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from jobs.spec import MAX_SPEC_BYTES
from node.api.access import AuthorizedKeys, authorize, capability_for
from node.api.auth import RequestVerifier
from node.api.errors import error, http_error

MAX_BODY = MAX_SPEC_BYTES  # contexts travel through storage, not this body
MAX_CONTEXT_BODY = 12 << 20  # a packed working directory (10 MiB of files plus tar headers)
CONTEXT_UPLOADS = 4  # context bodies read at once (each up to MAX_CONTEXT_BODY in memory); more get 503
BODY_TIMEOUT = 30.0  # a request body must arrive within this (408): a slow sender holds no connection long
# request body bytes held at once, all requests together (503 past it): bodies are read before their signature
# can be checked, and 1,000 strangers' connections stalled 576 bytes short of 1 MiB held 1.5 GB for 30 s
BODY_BUDGET = 256 << 20

# methods whose requests carry no body: one held for as long as its answer streams (events, a long poll) kept
# room all members share, and 128 such requests from one of them held every other member's submissions at 503
BODILESS = frozenset({"GET", "HEAD"})

UNSIGNED_PATHS = frozenset({"/healthz", "/readyz", "/v1/version", "/metrics", "/openapi.json", "/docs",
                            "/docs/oauth2-redirect", "/redoc"})


class BodyRoom:
    """What the bodies being read at once may take: CONTEXT_UPLOADS uploads and ``budget`` bytes."""

    def __init__(self, budget: int) -> None:
        self.uploads = trio.CapacityLimiter(CONTEXT_UPLOADS)
        self.budget = budget
        self.buffered = 0  # body bytes of the requests being read or handled now


class BodyLimit:
    """Pure ASGI middleware: 413 for bodies over MAX_BODY, whether declared or streamed; a declared
    Content-Length over it is refused before a byte of the body is read. A body must arrive
    within BODY_TIMEOUT of its first read (408); past BODY_BUDGET of bodies in memory, 503.

    With ``admitted_room``, requests whose signer ``Admitted`` let in before their body
    (``scope[SIGNER_ADMITTED]``) have room of their own, half of BODY_BUDGET: whoever else sends bodies
    slowly cannot take it from them."""

    def __init__(self, app, admitted_room: bool = False) -> None:
        self.app = app
        budget = BODY_BUDGET // 2 if admitted_room else BODY_BUDGET
        self.rooms = {False: BodyRoom(budget), True: BodyRoom(budget)}

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        room = self.rooms[scope.get(SIGNER_ADMITTED, False)]
        if scope["path"] == "/v1/contexts":  # a large body is read before its signature can be checked
            try:
                room.uploads.acquire_nowait()
            except trio.WouldBlock:
                await answer_early(error(503, "unavailable", f"{CONTEXT_UPLOADS} uploads in progress: retry in a "
                                         "second", headers={"Retry-After": "1"}), scope, receive, send)
                return
            try:
                await self._limited(scope, receive, send, MAX_CONTEXT_BODY, room)
            finally:
                room.uploads.release()
        elif scope["method"] in BODILESS:
            await self._limited(scope, receive, send, 0, room)
        else:
            await self._limited(scope, receive, send, MAX_BODY, room)

    async def _limited(self, scope, receive, send, limit: int, room: BodyRoom) -> None:
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and not declared.isdigit():
            await answer_early(error(400, "bad_request", "malformed Content-Length header"), scope, receive, send)
            return
        if declared is not None and int(declared) > limit:
            status = (400, "bad_request") if limit == 0 else (413, "body_too_large")
            await answer_early(error(*status, too_large(limit)), scope, receive, send)
            return
        seen = 0
        body_done = False
        deadline: float | None = None

        async def limited_receive():
            nonlocal seen, body_done, deadline
            if body_done:
                return await receive()  # after the body: a disconnect, awaited by streaming responses
            if deadline is None:
                deadline = trio.current_time() + BODY_TIMEOUT
            with trio.move_on_at(deadline):
                message = await receive()
                size = len(message.get("body", b""))
                seen += size
                room.buffered += size
                if seen > limit:
                    raise StarletteHTTPException(400 if limit == 0 else 413, too_large(limit))
                if room.buffered > room.budget:
                    raise StarletteHTTPException(503, "the node is reading too many request bodies: retry in a second",
                                                 headers={"Retry-After": "1"})
                body_done = not message.get("more_body", False)
                return message
            raise StarletteHTTPException(408, f"the request body did not arrive within {BODY_TIMEOUT:g} s")

        try:
            await self.app(scope, limited_receive, send)
        finally:
            room.buffered -= seen


async def answer_early(response: JSONResponse, scope, receive, send) -> None:
    """Answer before reading the body. hypercorn then closes the connection, and a client that has
    read the answer may hang up while the last frame goes out: that is no error of ours."""
    with contextlib.suppress(trio.BusyResourceError, trio.BrokenResourceError, trio.ClosedResourceError):
        await response(scope, receive, send)


def too_large(limit: int = MAX_BODY) -> str:
    if limit == 0:
        return "a GET request carries no body"
    if limit == MAX_BODY:
        return f"request body over {MAX_BODY} bytes ({MAX_BODY >> 20} MiB): a job spec must be smaller"
    return f"request body over {limit} bytes: a working directory sent with a job must be smaller"


def admit(access: AuthorizedKeys | None, request: Request, public_key: bytes) -> None:
    """403 saying why, unless ``access`` lets ``public_key`` make ``request`` (without a file, anyone may)."""
    if access is not None:
        refusal = authorize(public_key, capability_for(request.method, request.scope["path"]), access.table())
        if refusal is not None:
            raise StarletteHTTPException(403, refusal)
        request.state.access = access  # a stream checks its caller against it again while it lasts (streams.py)


SIGNER_ADMITTED = "shoal.signer_admitted"  # an ASGI scope key: Admitted let the signer in before the body


class OnSignedRoutes:
    """Pure ASGI middleware that acts on requests to signed routes (``signed``) and passes the rest on."""

    def __init__(self, app, verifier: RequestVerifier, access: AuthorizedKeys | None = None) -> None:
        self.app = app
        self.verifier = verifier
        self.access = access  # an authorized-keys file; None: any key

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http" or scope["path"] in UNSIGNED_PATHS:
            await self.app(scope, receive, send)
        else:
            await self.signed(scope, receive, send)

    async def signed(self, scope, receive, send) -> None:
        raise NotImplementedError


class Signed(OnSignedRoutes):
    """Pure ASGI middleware: the signature of every request outside UNSIGNED_PATHS is verified
    before anything else reads the request, so an unsigned one learns nothing (not even whether
    its JSON parses, which FastAPI would tell before running a route's dependencies).

    The verified body is handed on unchanged; routes read the caller from ``request.state.client_id``
    (``client_id``). With ``access`` (an authorized-keys file), a verified key that the file does not
    let make this request gets 403 saying why (``node.api.access``), on every signed route.
    """

    async def signed(self, scope, receive, send) -> None:
        request = Request(scope, receive)
        try:
            # reads the whole body (bounded by BodyLimit)
            await self.verifier(request, lambda key: admit(self.access, request, key),
                                verified_before_body=scope.get(SIGNER_ADMITTED, False))
            body = await request.body()
        except StarletteHTTPException as exc:
            await http_error(exc)(scope, receive, send)
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # after the body: disconnects, for streaming responses

        await self.app(scope, replay, send)


class Admitted(OnSignedRoutes):
    """Pure ASGI middleware, outermost on a node with an authorized-keys file (``access``): a request that
    declares its body's SHA-256 (the SDK does: ``X-Shoal-Body-SHA256``) has its signature checked and its
    key admitted before a byte of its body is read, and answers 401/403 then; the requests it lets in get
    body room of their own (``BodyLimit``). ``Signed`` still checks the body that arrives.

    A body's signature can otherwise be checked only once the body has arrived: four strangers' slowly sent
    12 MiB uploads held every upload slot, and members' uploads got 503. Requests without the header (other
    clients) go on as before, in the room strangers can fill. A refused request's body is read and dropped
    before the answer, so that its client reads the answer rather than a reset (within BODY_TIMEOUT and
    MAX_CONTEXT_BODY). A replay of a request seen on the wire is refused before its body too
    (``Nonces.used_recently``).
    """

    async def signed(self, scope, receive, send) -> None:
        request = Request(scope)
        try:
            key = self.verifier.verify_before_body(request)
            if key is not None:
                admit(self.access, request, key)
        except StarletteHTTPException as exc:
            await drop_body(receive)  # (hypercorn has sent a "100 Continue" to a client that asked for one)
            await answer_early(http_error(exc), scope, receive, send)
            return
        scope[SIGNER_ADMITTED] = key is not None
        await self.app(scope, receive, send)


async def drop_body(receive) -> None:
    """Read a request's body and keep none of it, for at most BODY_TIMEOUT and MAX_CONTEXT_BODY bytes."""
    seen = 0
    with trio.move_on_after(BODY_TIMEOUT):
        while seen <= MAX_CONTEXT_BODY:
            message = await receive()
            seen += len(message.get("body", b""))
            if message["type"] != "http.request" or not message.get("more_body", False):
                return


async def client_id(request: Request) -> str:
    """The verified caller (see ``Signed``): a route dependency. ``async`` only so that FastAPI calls
    it in line: a plain ``def`` dependency costs every request a worker-thread round trip."""
    return request.state.client_id

"""Wire messages between nodes: frozen, versioned, validated on decode.

Gossip carries ``Announce`` (a job needs nodes) and ``NodeInfo`` (a compute node's offer).
Everything else is a direct request answered by a ``Reply``: bids, decisions, results,
cancels and liveness queries. Nothing unvalidated reaches a role or the store.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Iterator, Sequence
from typing import Annotated, Literal, Protocol, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, field_validator

from jobs.errors import MalformedMessage
from jobs.model import Identifier, RunResult
from jobs.selector import check_labels
from jobs.spec import JobSpec, Resources, check_secret_env
from jobs.sweep import SweepSpec

PROTOCOL_VERSION = 1
MAX_MESSAGE_BYTES = 1 << 20  # a spec with inline code and 64 inputs fits well below this
# a requester repeats the announcement of a job short of nodes at least this often, and a compute node keeps
# an offer it had no room for this long after it last heard it (then the requester is taken to have its nodes)
REPEAT_AT_LEAST_EVERY = 100.0
BACKLOG_STALE = 120.0
QUERY_IDS = 10_000  # ids in one open or status query, at most
QUERY_BYTES = MAX_MESSAGE_BYTES // 2  # of those ids, as JSON (a peer chooses them: 128 characters, escaped)

_EngineName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_-]{0,31}$")]  # docker, wasm, …: shown to users as is


class _Message(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", hide_input_in_errors=True,  # never echo a secret
                              allow_inf_nan=False)  # a NaN deadline is after no time: no wait ever ends
    v: int = PROTOCOL_VERSION


class Announce(_Message):
    kind: Literal["announce"] = "announce"
    job_id: Identifier
    spec: JobSpec
    requester: Identifier
    requester_addrs: list[str] = Field(default=[], max_length=16)
    attempt: int = Field(0, ge=0)
    bid_deadline: float | None = None  # unix time after which bids are pointless
    # Nodes asked to bid (empty: everyone). The first announcement of a job names a few nodes
    # with room, so bids per job do not grow with the network; re-announcements ask everyone.
    # Sent to a named node as a request, it is answered "pending" (a Bid follows) or "rejected".
    candidates: list[Identifier] = Field(default=[], max_length=100)

    @field_validator("spec")
    @classmethod
    def _no_secrets(cls, v: JobSpec) -> JobSpec:
        """An offer goes to nodes that may never run the job: its secrets travel with the acceptance."""
        return v.without_secrets()

    @property
    def key(self) -> tuple[str, str]:
        """What a compute node knows the job by: a job id is only unique within its requester, so a
        peer that announces another requester's id (with any attempt number) shadows nothing."""
        return (self.requester, self.job_id)


class NodeInfo(_Message):
    kind: Literal["node_info"] = "node_info"
    peer_id: Identifier
    addrs: list[str] = Field(default=[], max_length=16)
    engines: list[_EngineName] = Field(default=[], max_length=16)
    max_per_job: Resources
    total: Resources
    free: Resources
    running: int = 0
    backlog: int = 0
    boot: str = Field("", max_length=64)  # new at every start: a change means the node restarted, backlog empty
    labels: dict[str, str] = {}  # what job selectors match (``shoal serve --label``); bounded and checked on receipt
    network: bool = False  # gives jobs that ask for it network access (shoal serve --allow-network)

    _labels = field_validator("labels")(check_labels)


class Bid(_Message):
    kind: Literal["bid"] = "bid"
    job_id: Identifier
    execution_id: Identifier
    attempt: int = 0


class Decision(_Message):
    """Requester → compute: the verdict on a bid, when it was not given in the bid's reply."""

    kind: Literal["decision"] = "decision"
    job_id: Identifier
    execution_id: Identifier
    accepted: bool
    reason: str = ""
    secret_env: dict[str, str] = Field({}, repr=False)  # the job's secrets, to an accepted node only (see JobSpec)

    _secret_env = field_validator("secret_env")(check_secret_env)


class _Signed(_Message):
    """A message its sending node vouches for: ``signature`` is its key's over ``statement()``, urlsafe base64."""

    signature: str = ""

    def statement(self) -> bytes:
        raise NotImplementedError

    def signed(self, peers: Peers) -> Self:
        return self.model_copy(update={"signature": base64.urlsafe_b64encode(peers.sign(self.statement())).decode()})

    def signed_by(self, peers: Peers, peer: str) -> bool:
        """Whether it carries ``peer``'s own signature over what it states."""
        try:
            signature = base64.urlsafe_b64decode(self.signature)
        except ValueError:  # binascii.Error among them
            return False
        return peers.verify(peer, self.statement(), signature)


class Result(_Signed):
    """Compute → requester: the outcome of one execution (or why there is none), signed by the node.

    ``digest`` is the outcome digest the node vouches for (``RunResult.digest()``, which covers
    every field the requester records); the signature covers the job, the execution and that
    digest. A message whose fields do not hash to its digest is refused.
    """

    kind: Literal["result"] = "result"
    job_id: Identifier
    execution_id: Identifier
    result: RunResult | None = None
    error: str | None = Field(None, max_length=64 * 1024)
    retryable: bool = False  # True: the job may succeed elsewhere (node lost, infra error)
    digest: str = Field("", max_length=128)

    def outcome(self) -> str:
        """The digest of what this message's fields say."""
        return outcome_digest(self.result, self.error)

    def statement(self) -> bytes:
        """What the node signs: the job, the execution and the digest of its outcome."""
        return f"shoal/result/v2\n{self.job_id}\n{self.execution_id}\n{self.digest}".encode()


def outcome_digest(result: RunResult | None, error: str | None) -> str:
    """One execution's outcome as one digest: a run's result, or the error that prevented it."""
    if result is not None:
        return result.digest()
    return "error:" + hashlib.sha256((error or "").encode("utf-8", "surrogatepass")).hexdigest()


LOG_CHUNK_BYTES = 64 * 1024  # the most output one Output message carries


LIVE_CAP = 1 << 20  # bytes of each stream a run shows live (from its start); the rest is only in the final result


class Output(_Message):
    """Compute → requester: what a running execution wrote to one stream, from byte ``offset`` on.

    Shown live (``shoal logs -f``) and never recorded: the signed result stays the record. The
    requester keeps what continues the stream and answers with the offset it holds in ``stopped``,
    so a node that lost a reply sends again from there."""

    model_config = ConfigDict(ser_json_bytes="base64", val_json_bytes="base64")
    kind: Literal["output"] = "output"
    job_id: Identifier
    execution_id: Identifier
    stream: Literal["stdout", "stderr"]
    offset: int = Field(ge=0, le=1 << 40)
    data: bytes = Field(max_length=LOG_CHUNK_BYTES)


class Cancel(_Message):
    kind: Literal["cancel"] = "cancel"
    job_id: Identifier
    execution_id: Identifier
    reason: str = ""


class OpenQuery(_Message):
    """Compute → requester: which of these jobs (from my backlog) still need nodes?

    Answered in ``Reply.states`` with "open" or "closed" per job id. A node asks before bidding
    on what it passed over, so it does not bid on jobs another node took meanwhile.
    """

    kind: Literal["open_query"] = "open_query"
    job_ids: list[Identifier] = Field(max_length=QUERY_IDS)


def query_parts(ids: Sequence[str]) -> Iterator[slice]:
    """``ids`` cut into runs that each fit one ``OpenQuery`` or ``StatusQuery`` (``QUERY_IDS``, ``QUERY_BYTES``)."""
    start, size = 0, 0
    for i, one in enumerate(ids):
        n = len(json.dumps(one)) + 1  # escaped to ASCII: at least what the message takes
        if i > start and (size + n > QUERY_BYTES or i - start == QUERY_IDS):
            yield slice(start, i)
            start, size = i, 0
        size += n
    if start < len(ids):
        yield slice(start, len(ids))


class SweepAnnounce(_Message):
    """A sweep has indexes nobody has claimed: compute nodes that can run its template claim some."""

    kind: Literal["sweep"] = "sweep"
    sweep_id: Identifier
    spec: SweepSpec
    requester: Identifier
    requester_addrs: list[str] = Field(default=[], max_length=16)
    pending: int = Field(0, ge=0)

    @property
    def key(self) -> tuple[str, str]:
        """What a compute node knows the sweep by, as a job by ``Announce.key``: a peer announcing
        another requester's sweep id claims from itself, never in that requester's place."""
        return (self.requester, self.sweep_id)


class IndexResult(BaseModel):
    """How one index of a claim ended (a run's result, or why there is none)."""

    model_config = ConfigDict(frozen=True)
    index: int = Field(ge=0)
    result: RunResult | None = None
    error: str | None = None
    retryable: bool = False

    def outcome(self) -> str:
        return outcome_digest(self.result, self.error)


class Claim(_Signed):
    """Compute → requester, for one claim on a sweep: results of finished indexes, indexes given
    back unrun, and how many more the node wants. The reply carries the ranges granted
    (``Reply.ranges``); ``verdict="rejected"`` ends the claim (stop what still runs).

    Sent when results are ready, when the node runs short of work, and as a heartbeat: the
    requester re-offers a claim's indexes when the node goes silent for the job's ``silence``.
    """

    kind: Literal["claim"] = "claim"
    sweep_id: Identifier
    claim_id: Identifier
    want: int = Field(0, ge=0, le=100_000)
    results: list[IndexResult] = Field(default=[], max_length=100_000)
    released: list[int] = Field(default=[], max_length=1_000_000)

    def statement(self) -> bytes:
        """The node vouches for every result in the batch."""
        lines = [f"shoal/claim/v1\n{self.sweep_id}\n{self.claim_id}"]
        lines += [f"{r.index}:{r.outcome()}" for r in self.results]
        return "\n".join(lines).encode()


class StatusQuery(_Message):
    """Requester → compute: are these executions still alive on you?"""

    kind: Literal["status"] = "status"
    execution_ids: list[Identifier] = Field(max_length=QUERY_IDS)


class Reply(_Message):
    kind: Literal["reply"] = "reply"
    ok: bool = True
    verdict: Literal["accepted", "rejected", "pending"] | None = None
    reason: str = ""
    states: dict[str, str] = {}
    ranges: list[tuple[int, int]] = Field(default=[], max_length=100_000)  # a Claim's grant: [start, end) runs
    stopped: int = 0  # a Cancel of a sweep's claim: how many running indexes it stopped
    secret_env: dict[str, str] = Field({}, repr=False)  # an accepted Bid's: the job's secrets (see JobSpec)

    _secret_env = field_validator("secret_env")(check_secret_env)


Message = Annotated[
    Announce | NodeInfo | Bid | Decision | Result | Output | Cancel | StatusQuery | Reply | SweepAnnounce | Claim
    | OpenQuery,
    Field(discriminator="kind"),
]
_adapter: TypeAdapter[Message] = TypeAdapter(Message)


def encode(message: _Message) -> bytes:
    return message.model_dump_json(exclude_defaults=False).encode()


def decode(data: bytes) -> Message:
    """Bytes from a peer → a validated message, or ``MalformedMessage`` naming the problem."""
    if len(data) > MAX_MESSAGE_BYTES:
        raise MalformedMessage(f"message of {len(data)} bytes exceeds {MAX_MESSAGE_BYTES}")
    try:
        message = _adapter.validate_json(data)
    except ValidationError as e:
        raise MalformedMessage(f"invalid message: {e.error_count()} problem(s): {e.errors()[0]['msg']}") from e
    except Exception as e:  # a validator that failed otherwise than with ValueError: still the peer's bytes
        raise MalformedMessage(f"invalid message: {type(e).__name__}") from e
    if message.v != PROTOCOL_VERSION:
        raise MalformedMessage(f"unsupported protocol version {message.v}")
    if b"\\u" in data and _has_lone_surrogate(message):  # JSON escapes can smuggle in text no store can keep
        raise MalformedMessage("invalid message: text that is not valid Unicode (a lone surrogate)")
    return message


def _has_lone_surrogate(message: _Message) -> bool:
    try:
        json.dumps(message.model_dump(mode="json"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


class Peers(Protocol):
    """What the roles need from the network; ``node`` implements it, tests fake it in memory."""

    node_id: str

    async def request(self, peer_id: str, message: _Message, *, timeout: float, addrs: Sequence[str] = ()) -> Reply:
        """Deliver one message and return the peer's reply; raises ``Unreachable``."""
        ...

    async def publish(self, message: Announce | NodeInfo | SweepAnnounce) -> None:
        """Gossip to every node (best effort: gossip drops silently under load)."""
        ...

    def addrs(self) -> list[str]: ...

    def sign(self, data: bytes) -> bytes:
        """Sign with this node's key."""
        ...

    def verify(self, peer_id: str, data: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is ``peer_id``'s over ``data``."""
        ...

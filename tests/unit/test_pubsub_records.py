"""The signed-peer-record shortcuts keep libp2p's checks: only proven bytes skip verification."""

from __future__ import annotations

from dataclasses import dataclass

from node.net.pubsub_records import OWN_RECORD_TTL, VERIFIED_TTL, remember_verified, reuse_own


@dataclass
class Peer:
    raw: bytes

    def to_bytes(self) -> bytes:
        return self.raw


class Rpc:
    def __init__(self, record: bytes | None) -> None:
        self.senderRecord = record

    def HasField(self, name: str) -> bool:
        return getattr(self, name) is not None


class Clock:
    now = 0.0

    def __call__(self) -> float:
        return self.now


class Verifier:
    """Stands in for libp2p's check: records starting with b"good" verify."""

    def __init__(self) -> None:
        self.calls: list[bytes] = []

    def __call__(self, msg: Rpc, host: object, peer: Peer) -> bool:
        self.calls.append(msg.senderRecord)
        return msg.senderRecord.startswith(b"good")


def test_a_record_is_verified_once_per_peer_until_it_changes() -> None:
    verifier, clock = Verifier(), Clock()
    consume = remember_verified(verifier, clock)
    a, b = Peer(b"a"), Peer(b"b")
    assert all(consume(Rpc(b"good-a1"), None, a) for _ in range(5))
    assert verifier.calls == [b"good-a1"]
    assert consume(Rpc(b"good-a1"), None, b)  # the same bytes from another peer: checked for that peer
    assert consume(Rpc(b"good-a2"), None, a)  # new addresses, new record: checked
    assert verifier.calls == [b"good-a1", b"good-a1", b"good-a2"]


def test_a_bad_record_is_refused_every_time() -> None:
    verifier = Verifier()
    consume = remember_verified(verifier, Clock())
    assert not any(consume(Rpc(b"forged"), None, Peer(b"a")) for _ in range(3))
    assert verifier.calls == [b"forged"] * 3


def test_a_verified_record_is_checked_again_after_the_ttl() -> None:
    verifier, clock = Verifier(), Clock()
    consume = remember_verified(verifier, clock)
    consume(Rpc(b"good"), None, Peer(b"a"))
    clock.now = VERIFIED_TTL - 1
    consume(Rpc(b"good"), None, Peer(b"a"))
    clock.now = VERIFIED_TTL + 1
    consume(Rpc(b"good"), None, Peer(b"a"))
    assert verifier.calls == [b"good", b"good"]


def test_an_rpc_without_a_record_passes_unchecked() -> None:
    verifier = Verifier()
    assert remember_verified(verifier, Clock())(Rpc(None), None, Peer(b"a"))
    assert verifier.calls == []


def test_our_own_record_is_reissued_after_a_few_seconds() -> None:
    issued: list[object] = []
    clock = Clock()

    class Host:
        pass

    def issue(host: object) -> tuple[bytes, bool]:
        issued.append(host)
        return b"record-%d" % len(issued), True

    send = reuse_own(issue, clock)
    one, two = Host(), Host()
    assert send(one) == (b"record-1", True)
    assert send(one) == (b"record-1", False)
    assert send(two) == (b"record-2", True)  # per host
    clock.now = OWN_RECORD_TTL + 0.1
    assert send(one) == (b"record-3", True)

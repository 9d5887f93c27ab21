"""Who may connect to a node: a private network's shared key, and an optional list of trusted peers.

The network key is libp2p's private-network pre-shared key (pnet): every byte of a connection,
the security negotiation included, is encrypted with it (Salsa20, a fresh nonce per direction).
A peer without the key cannot complete the Noise handshake, so it never reaches a Shoal stream
or gossip, and nothing readable is sent to it. The key itself never travels.

Trusted peers narrow that further: once Noise has authenticated the remote peer id, a peer not
on the list is disconnected before the connection is multiplexed (no stream, no gossip).

The key file uses the swarm.key format of go-libp2p and Kubo (three lines:
``/key/swarm/psk/1.0.0/``, ``/base16/``, 64 hex digits); a file holding just the 64 hex digits
is accepted too.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from jobs.errors import ShoalError

KEY_BYTES = 32
KEY_HEADER = "/key/swarm/psk/1.0.0/"
KEY_ENCODING = "/base16/"
MAX_FILE = 1 << 20
"""Key and trusted-peer files larger than this are refused (they are a few lines)."""


class AdmissionError(ShoalError):
    """A network key or trusted-peers file that cannot be used (the message says why)."""


def new_network_key() -> str:
    """A fresh random network key in swarm.key format (the text of the file)."""
    return f"{KEY_HEADER}\n{KEY_ENCODING}\n{secrets.token_hex(KEY_BYTES)}\n"


def parse_network_key(text: str) -> bytes:
    """The 32-byte key in a swarm.key file (or a bare line of 64 hex digits)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if len(lines) == 3 and lines[0] == KEY_HEADER:
        if lines[1] != KEY_ENCODING:
            raise AdmissionError(f"unsupported key encoding {lines[1]!r} (only {KEY_ENCODING})")
        digits = lines[2]
    elif len(lines) == 1:
        digits = lines[0]
    else:
        raise AdmissionError(f"not a network key: expected {KEY_HEADER}, {KEY_ENCODING} and 64 hex digits")
    if len(digits) != 2 * KEY_BYTES:
        raise AdmissionError(f"a network key is {2 * KEY_BYTES} hex digits, not {len(digits)}")
    try:
        return bytes.fromhex(digits)
    except ValueError:
        raise AdmissionError("a network key is hex digits only") from None


def is_peer_id(text: str) -> bool:
    """A base58 libp2p peer id: a multihash, identity (``12D3KooW…``) or sha2-256 (``Qm…``)."""
    from libp2p.peer.id import ID

    try:
        raw = ID.from_base58(text).to_bytes()
    except Exception:
        return False
    return len(raw) > 2 and raw[0] in (0x00, 0x12) and raw[1] == len(raw) - 2 and (raw[0] == 0x00 or raw[1] == 32)


def parse_trusted_peers(text: str) -> frozenset[str]:
    """Peer ids, one per line; blank lines and ``#`` comments ignored; each id checked."""
    peers: set[str] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if not is_peer_id(line):
            raise AdmissionError(f"line {number}: {line[:80]!r} is not a peer id")
        peers.add(line)
    return frozenset(peers)


def _read(path: Path, what: str) -> str:
    try:
        with path.open("rb") as f:
            data = f.read(MAX_FILE + 1)
    except OSError as exc:
        raise AdmissionError(f"cannot read {what} {path}: {exc.strerror}") from None
    if len(data) > MAX_FILE:
        raise AdmissionError(f"{what} {path} is over {MAX_FILE} bytes")
    try:
        return data.decode()
    except UnicodeDecodeError:
        raise AdmissionError(f"{what} {path} is not text") from None


def load_network_key(path: Path) -> bytes:
    text = _read(path, "network key")
    try:
        return parse_network_key(text)
    except AdmissionError as exc:
        raise AdmissionError(f"network key {path}: {exc}") from None


def load_trusted_peers(path: Path) -> frozenset[str]:
    text = _read(path, "trusted peers file")
    try:
        return parse_trusted_peers(text)
    except AdmissionError as exc:
        raise AdmissionError(f"trusted peers file {path}: {exc}") from None


def load_admission(network_key: Path | None, trusted_peers: Path | None) -> Admission:
    """A node's ``Admission`` from its ``--network-key`` and ``--trusted-peers`` files (None: not given)."""
    return Admission(
        network_key=None if network_key is None else load_network_key(network_key),
        trusted_peers=None if trusted_peers is None else load_trusted_peers(trusted_peers),
    )


@dataclass(frozen=True)
class Admission:
    """Who a node lets in. The default admits every peer (an open network)."""

    network_key: bytes | None = None
    trusted_peers: frozenset[str] | None = None
    """None: any peer (that holds the key, if there is one)."""

    def __post_init__(self) -> None:
        if self.network_key is not None and len(self.network_key) != KEY_BYTES:
            raise ValueError(f"a network key is {KEY_BYTES} bytes")

    def __repr__(self) -> str:  # never the key itself in a log or traceback
        key = "set" if self.network_key is not None else "none"
        trusted = "any" if self.trusted_peers is None else f"{len(self.trusted_peers)} peers"
        return f"Admission(network_key={key}, trusted_peers={trusted})"

    def admits(self, peer_id: str) -> bool:
        """Whether a peer whose id Noise authenticated may stay connected.

        (The network key is checked before: a peer without it never gets this far.)
        """
        return self.trusted_peers is None or peer_id in self.trusted_peers


OPEN = Admission()
"""No key, no list: every peer is admitted (the default)."""

"""The node's Ed25519 identity: a 32-byte seed in the data dir, so the peer id survives restarts."""

from __future__ import annotations

import secrets
from pathlib import Path

from jobs.errors import ShoalError
from shoal._auth import create_key_file

KEY_FILE = "node.key"


class IdentityError(ShoalError):
    """The node's key file cannot be read or written; the message names it and says what to do."""


def load_or_create_seed(data_dir: Path) -> bytes:
    path = data_dir / KEY_FILE
    try:
        if path.exists():
            seed = path.read_bytes()
            if len(seed) != 32:
                raise IdentityError(f"{path} is not a 32-byte Ed25519 seed; move it away to create a new identity")
            return seed
        data_dir.mkdir(parents=True, exist_ok=True)
        seed = secrets.token_bytes(32)
        create_key_file(path, seed)
        return seed
    except OSError as e:
        raise IdentityError(f"cannot keep the node's identity in {e.filename or path}: {e.strerror or e}") from e


# A libp2p peer id of an Ed25519 key is the identity multihash of the protobuf-encoded public
# key: 0x00 (identity), 0x24 (36 bytes), then PublicKey{Type: Ed25519 (08 01), Data: 32 bytes (12 20 …)}.
_ED25519_PEER_PREFIX = bytes([0x00, 0x24, 0x08, 0x01, 0x12, 0x20])


def peer_id_of(public_key: bytes) -> str:
    import base58

    return base58.b58encode(_ED25519_PEER_PREFIX + public_key).decode()


def public_key_of(peer_id: str) -> bytes:
    """The Ed25519 public key a peer id embeds; ValueError for anything else."""
    import base58

    try:
        raw = base58.b58decode(peer_id)
    except ValueError as e:
        raise ValueError(f"not a peer id: {peer_id!r}") from e
    if len(raw) != 38 or not raw.startswith(_ED25519_PEER_PREFIX):
        raise ValueError(f"not an Ed25519 peer id: {peer_id!r}")
    return raw[6:]


class Identity:
    """Signs with the node key; anyone can check a signature against the signer's peer id."""

    def __init__(self, seed: bytes) -> None:
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self._key = Ed25519PrivateKey.from_private_bytes(seed)
        self.peer_id = peer_id_of(self._key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw))

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data)

    @staticmethod
    def verify(peer_id: str, data: bytes, signature: bytes) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

        try:
            Ed25519PublicKey.from_public_bytes(public_key_of(peer_id)).verify(signature, data)
        except (ValueError, InvalidSignature):
            return False
        return True

import os
import secrets
import stat

import pytest

from node.identity import Identity, IdentityError, load_or_create_seed, public_key_of


async def _noop(*_):
    return b""


def test_peer_id_matches_libp2p_for_the_same_seed():
    from node.net import Network

    seed = secrets.token_bytes(32)
    network = Network(seed=seed, listen=["/ip4/127.0.0.1/tcp/0"], peers=[], on_gossip=_noop, on_request=_noop)
    assert Identity(seed).peer_id == network.peer_id


def test_signatures_are_checked_against_the_peer_id():
    alice, bob = Identity(secrets.token_bytes(32)), Identity(secrets.token_bytes(32))
    sig = alice.sign(b"statement")
    assert Identity.verify(alice.peer_id, b"statement", sig)
    assert not Identity.verify(alice.peer_id, b"tampered", sig)
    assert not Identity.verify(bob.peer_id, b"statement", sig)
    assert not Identity.verify("not-a-peer-id", b"statement", sig)
    with pytest.raises(ValueError):
        public_key_of("QmT78zSuBmuS4z925WZfrqQ1qHaJ56DQaTfyMUF7F8ff5o")  # a CID, not an Ed25519 peer id


def test_seed_survives_restarts_and_is_private(tmp_path):
    first = load_or_create_seed(tmp_path)
    assert load_or_create_seed(tmp_path) == first
    assert stat.S_IMODE(os.stat(tmp_path / "node.key").st_mode) == 0o600
    (tmp_path / "node.key").write_bytes(b"short")
    with pytest.raises(IdentityError, match="32-byte"):
        load_or_create_seed(tmp_path)

import os
import secrets
import stat

import pytest

from node.identity import Identity, IdentityError, load_or_create_seed, public_key_of
from shoal._auth import create_key_file


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


def test_a_key_is_written_whole_or_not_at_all_with_or_without_hard_links(tmp_path, monkeypatch):
    import errno

    def no_room(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", no_room)
        with pytest.raises(IdentityError, match="No space left on device"):
            load_or_create_seed(tmp_path)
    assert os.listdir(tmp_path) == []  # no empty node.key for the next start to refuse

    def no_links(src: object, dst: object) -> None:
        raise OSError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_links)  # e.g. a vfat or SMB data dir
    seed = load_or_create_seed(tmp_path)
    assert os.listdir(tmp_path) == ["node.key"] and load_or_create_seed(tmp_path) == seed
    with pytest.raises(FileExistsError):
        create_key_file(tmp_path / "node.key", b"x" * 32)
    assert (tmp_path / "node.key").read_bytes() == seed

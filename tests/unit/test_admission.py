"""node.net.admission: the network key file, the trusted-peers file, and who is admitted."""

from __future__ import annotations

import hashlib
import stat

import pytest
from libp2p.crypto.ed25519 import create_new_key_pair
from libp2p.peer.id import ID

from node.net.admission import (
    KEY_HEADER,
    MAX_FILE,
    OPEN,
    Admission,
    AdmissionError,
    is_peer_id,
    load_admission,
    load_network_key,
    load_trusted_peers,
    new_network_key,
    parse_network_key,
    parse_trusted_peers,
)


def peer(name: str) -> str:
    pair = create_new_key_pair(hashlib.sha256(name.encode()).digest())
    return ID.from_pubkey(pair.public_key).to_base58()


def test_a_new_key_is_a_swarm_key_file_of_32_random_bytes() -> None:
    text = new_network_key()
    assert text.splitlines()[:2] == [KEY_HEADER, "/base16/"]
    key = parse_network_key(text)
    assert len(key) == 32 and text.splitlines()[2] == key.hex()
    assert parse_network_key(new_network_key()) != key


def test_a_bare_line_of_64_hex_digits_is_a_key_too() -> None:
    assert parse_network_key("ab" * 32 + "\n") == bytes([0xAB]) * 32
    assert parse_network_key(f"\n{KEY_HEADER}\n/base16/\n{'AB' * 32}\n\n") == bytes([0xAB]) * 32


@pytest.mark.parametrize(("text", "says"), [
    ("", "not a network key"),
    ("ab" * 31, "64 hex digits, not 62"),
    ("ab" * 33, "64 hex digits, not 66"),
    ("zz" * 32, "hex digits only"),
    (f"{KEY_HEADER}\n/base64/\n{'ab' * 32}", "unsupported key encoding '/base64/'"),
    (f"/key/swarm/psk/2.0.0/\n/base16/\n{'ab' * 32}", "not a network key"),
    ("ab" * 32 + "\n" + "cd" * 32, "not a network key"),
])  # fmt: skip
def test_a_malformed_key_is_refused_saying_why(text: str, says: str) -> None:
    with pytest.raises(AdmissionError, match=says):
        parse_network_key(text)


def test_key_files_name_themselves_in_errors(tmp_path) -> None:
    missing = tmp_path / "missing.key"
    with pytest.raises(AdmissionError, match=f"cannot read network key {missing}"):
        load_network_key(missing)
    bad = tmp_path / "bad.key"
    bad.write_text("secret\n")
    with pytest.raises(AdmissionError, match=f"network key {bad}: "):
        load_network_key(bad)
    huge = tmp_path / "huge.key"
    huge.write_bytes(b"a" * (MAX_FILE + 1))
    with pytest.raises(AdmissionError, match="is over"):
        load_network_key(huge)
    binary = tmp_path / "binary.key"
    binary.write_bytes(b"\xff" * 64)
    with pytest.raises(AdmissionError, match="is not text"):
        load_network_key(binary)


def test_trusted_peers_one_per_line_with_comments() -> None:
    a, b = peer("a"), peer("b")
    text = f"# the cluster\n{a}\n\n  {b}   # node b\n{a}\n"
    assert parse_trusted_peers(text) == {a, b}
    assert parse_trusted_peers("") == frozenset()


@pytest.mark.parametrize("bad", ["bad", "12D3KooW", peer("a")[:-1], "QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5",
                                 "0OIl"])
def test_a_line_that_is_not_a_peer_id_is_refused_with_its_number(bad: str) -> None:
    with pytest.raises(AdmissionError, match=f"line 2: {bad!r} is not a peer id"):
        parse_trusted_peers(f"{peer('a')}\n{bad}\n")
    assert not is_peer_id(bad)


def test_peer_ids_of_both_kinds_are_recognised() -> None:
    assert is_peer_id(peer("a"))  # Ed25519, identity multihash: 12D3KooW...
    assert is_peer_id("QmYyQSo1c1Ym7orWxLYvCrM2EmxFTANf8wXmmE7DWjhx5N")  # sha2-256 (RSA keys)


def test_trusted_peers_file_errors_name_the_file(tmp_path) -> None:
    path = tmp_path / "trusted"
    path.write_text("nope\n")
    with pytest.raises(AdmissionError, match=f"trusted peers file {path}: line 1"):
        load_trusted_peers(path)


def test_admission_without_a_list_admits_everyone_and_with_one_only_those() -> None:
    a, b = peer("a"), peer("b")
    assert OPEN.admits(a) and OPEN.admits(b)
    keyed = Admission(network_key=b"k" * 32)
    assert keyed.admits(a) and keyed.admits(b)  # the key itself was proven by the handshake
    narrowed = Admission(network_key=b"k" * 32, trusted_peers=frozenset({a}))
    assert narrowed.admits(a) and not narrowed.admits(b)
    assert not Admission(trusted_peers=frozenset()).admits(a)
    with pytest.raises(ValueError):
        Admission(network_key=b"short")


def test_the_key_never_shows_in_a_repr() -> None:
    key = bytes(range(32))
    text = repr(Admission(network_key=key, trusted_peers=frozenset({peer("a")})))
    assert key.hex() not in text and str(key) not in text
    assert text == "Admission(network_key=set, trusted_peers=1 peers)"


def test_load_admission_from_the_serve_flags(tmp_path) -> None:
    key_file, trusted = tmp_path / "network.key", tmp_path / "trusted"
    key_file.write_text(new_network_key())
    trusted.write_text(peer("a") + "\n")
    assert load_admission(None, None) == OPEN
    both = load_admission(key_file, trusted)
    assert both.network_key == parse_network_key(key_file.read_text()) and both.trusted_peers == {peer("a")}
    assert load_admission(None, trusted).network_key is None


def test_cli_network_key_new_prints_a_usable_key(tmp_path) -> None:
    from typer.testing import CliRunner

    from cli.main import app

    assert "  network-key " in CliRunner().invoke(app, ["--help"]).stdout
    result = CliRunner().invoke(app, ["network-key", "new"])
    assert result.exit_code == 0, result.output
    (tmp_path / "k").write_text(result.stdout)
    assert len(load_network_key(tmp_path / "k")) == 32


def test_devstack_makes_one_private_key_file(tmp_path) -> None:
    from devstack.stack import Devstack

    stack = Devstack(2, base_dir=tmp_path / "stack", write_state=False, network_key=True)
    stack._ensure_network_key()
    assert stack.network_key is not None
    key = load_network_key(stack.network_key)
    assert stat.S_IMODE(stack.network_key.stat().st_mode) == 0o600
    stack._ensure_network_key()  # kept, not replaced: restarted nodes must still agree
    assert load_network_key(stack.network_key) == key
    commands = [stack._command(node) for node in stack.nodes]
    assert all(cmd[cmd.index("--network-key") + 1] == str(stack.network_key) for cmd in commands)


def test_serve_takes_the_key_and_trusted_peers_files_and_refuses_bad_ones(monkeypatch, tmp_path) -> None:
    import sys
    import types

    from typer.testing import CliRunner

    from cli.main import app

    seen: list = []
    monkeypatch.setitem(sys.modules, "node.daemon", types.SimpleNamespace(main=seen.append))
    key_file, trusted = tmp_path / "network.key", tmp_path / "trusted"
    key_file.write_text(new_network_key())
    trusted.write_text(peer("a") + "\n")
    runner = CliRunner()
    result = runner.invoke(app, ["serve", "--network-key", str(key_file), "--trusted-peers", str(trusted)])
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert (config.network_key, config.trusted_peers) == (key_file, trusted)
    trusted.write_text("12D3KooWnot-a-peer\n")
    result = runner.invoke(app, ["serve", "--network-key", str(key_file), "--trusted-peers", str(trusted)])
    assert result.exit_code == 2 and f"trusted peers file {trusted}: line 1" in result.output
    result = runner.invoke(app, ["serve", "--network-key", str(tmp_path / "nothing")])
    assert result.exit_code == 2 and "cannot read network key" in result.output
    assert len(seen) == 1  # no node started on a bad file


def test_a_devstack_is_open_unless_asked() -> None:
    from devstack.stack import Devstack

    stack = Devstack(1, write_state=False)
    assert stack.network_key is None and "--network-key" not in stack._command(stack.nodes[0])


def test_shoal_devstack_runs_a_private_network(monkeypatch, tmp_path) -> None:
    from devstack import stack as module

    made: list = []

    class Stop(Exception):
        pass

    def fake(*args, **kwargs):
        made.append(kwargs)
        raise Stop

    monkeypatch.setattr(module, "Devstack", fake)
    with pytest.raises(Stop):
        module.main(1, base_dir=tmp_path, kubo=False)
    assert made[0]["network_key"] is True

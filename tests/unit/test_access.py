"""Who may use a node's API (``node.api.access``): the pure decision, the file format, the route
capabilities, when a node may start without keys, and the file re-read when it changes."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from node.api.access import (
    ALL,
    AuthorizedKeys,
    authorize,
    capability_for,
    exposure_problem,
    is_loopback,
    parse_authorized_keys,
)
from shoal import ClientKey
from shoal._auth import b64encode, parse_public_key

ALICE = ClientKey.from_seed(b"a" * 32)
BOB = ClientKey.from_seed(b"b" * 32)
EVE = ClientKey.from_seed(b"e" * 32)


def test_a_key_absent_from_the_table_is_refused_naming_it() -> None:
    table = {ALICE.public_key: ALL}
    assert authorize(ALICE.public_key, "submit", table) is None
    refusal = authorize(EVE.public_key, "read", table)
    assert refusal == f"client {EVE.public_key_b64} is not authorized on this node"


def test_an_empty_table_refuses_everyone_and_no_table_is_open() -> None:
    assert authorize(ALICE.public_key, "read", {}) is not None
    for capability in ("submit", "read", "cancel", "admin"):
        assert authorize(EVE.public_key, capability, None) is None


def test_a_capability_the_key_lacks_is_refused_naming_it() -> None:
    table = {BOB.public_key: frozenset({"submit", "read"})}
    assert authorize(BOB.public_key, "read", table) is None
    refusal = authorize(BOB.public_key, "cancel", table)
    assert refusal is not None and "'cancel'" in refusal and BOB.public_key_b64 in refusal
    assert "it has: submit, read" in refusal
    assert "not authorized" not in refusal  # known key: it is the capability that is missing


@pytest.mark.parametrize(("method", "path", "capability"), [
    ("POST", "/v1/jobs", "submit"),
    ("POST", "/v1/sweeps", "submit"),
    ("POST", "/v1/contexts", "submit"),
    ("POST", "/v1/sweeps/s-1/retry", "submit"),
    ("POST", "/v1/jobs/j-1/cancel", "cancel"),
    ("POST", "/v1/sweeps/s-1/cancel", "cancel"),
    ("POST", "/v1/jobs/j-1/shares", "read"),
    ("POST", "/v1/sweeps/s-1/shares", "read"),
    ("GET", "/v1/jobs", "read"),
    ("GET", "/v1/jobs/j-1", "read"),
    ("GET", "/v1/jobs/j-1/events", "read"),
    ("GET", "/v1/jobs/j-1/logs", "read"),
    ("GET", "/v1/jobs/j-1/results", "read"),
    ("GET", "/v1/sweeps/s-1/indexes/3/results", "read"),
    ("GET", "/v1/node", "admin"),
    ("GET", "/v1/peers", "admin"),
    ("GET", "/v1/nodes", "admin"),
    ("GET", "/v1/jobs/cancel", "read"),  # a GET never cancels
    ("POST", "/v1/nowhere", "read"),  # unknown: the least a key needs to hear 404
])  # fmt: skip
def test_every_route_needs_its_capability(method: str, path: str, capability: str) -> None:
    assert capability_for(method, path) == capability


def test_file_format_keys_capabilities_comments() -> None:
    unpadded = BOB.public_key_b64.rstrip("=")
    text = (f"# the operator\n{ALICE.public_key_b64}\n\n"
            f"  {unpadded}   submit, read  # the CI\n"
            f"{EVE.public_key_b64} cancel\n{EVE.public_key_b64} read\n")
    table, problems = parse_authorized_keys(text)
    assert problems == []
    assert table == {ALICE.public_key: ALL, BOB.public_key: {"submit", "read"}, EVE.public_key: {"cancel", "read"}}


def test_bad_lines_are_reported_by_number_and_grant_nothing() -> None:
    text = f"{ALICE.public_key_b64} submit\nnot-a-key\n{BOB.public_key_b64} root\n{EVE.public_key_b64[:-4]}\n"
    table, problems = parse_authorized_keys(text)
    assert table == {ALICE.public_key: {"submit"}}
    assert [p.split(":")[0] for p in problems] == ["line 2", "line 3", "line 4"]
    assert "unknown capability 'root'" in problems[1]


def test_parse_public_key_accepts_what_key_show_prints_only() -> None:
    assert parse_public_key(ALICE.public_key_b64) == ALICE.public_key
    assert b64encode(parse_public_key(ALICE.public_key_b64.rstrip("="))) == ALICE.public_key_b64
    for bad in ("", "abc", "!" * 44, b64encode(b"x" * 31), b64encode(b"x" * 33)):
        with pytest.raises(ValueError, match="not a client key"):
            parse_public_key(bad)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True), ("localhost", True),
    ("0.0.0.0", False), ("::", False), ("", False), ("10.0.0.5", False), ("example.com", False),
])  # fmt: skip
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


def test_an_api_beyond_loopback_needs_keys_or_an_explicit_open_api(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    assert exposure_problem("127.0.0.1", None, False) is None
    assert exposure_problem("0.0.0.0", keys, False) is None
    assert exposure_problem("0.0.0.0", None, True) is None
    problem = exposure_problem("0.0.0.0", None, False)
    assert problem is not None and "\n" not in problem
    assert "--authorized-keys" in problem and "--open-api" in problem and "0.0.0.0" in problem
    assert "contradict" in (exposure_problem("127.0.0.1", keys, True) or "")


def test_the_file_is_re_read_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "authorized_keys"
    path.write_text(f"{ALICE.public_key_b64}\n")
    keys = AuthorizedKeys(path)
    keys.load()
    assert set(keys.table()) == {ALICE.public_key}
    path.write_text(f"{ALICE.public_key_b64} read\n{BOB.public_key_b64}\n")  # in place: size and mtime change
    assert keys.table() == {ALICE.public_key: {"read"}, BOB.public_key: ALL}
    replacement = tmp_path / "new"
    replacement.write_text(f"{BOB.public_key_b64} read\n")
    os.replace(replacement, path)  # an editor's atomic save: a new inode
    assert keys.table() == {BOB.public_key: {"read"}}


def test_a_bad_reload_grants_nothing_more(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "authorized_keys"
    path.write_text(f"{ALICE.public_key_b64}\n{BOB.public_key_b64}\n")
    keys = AuthorizedKeys(path)
    keys.load()
    path.write_text(f"{ALICE.public_key_b64} submit\n{BOB.public_key_b64} sudo\n")
    assert keys.table() == {ALICE.public_key: {"submit"}}  # the bad line (Bob's) grants nothing
    assert "line 2" in caplog.text
    path.unlink()
    assert keys.table() == {}  # gone: nobody, until it is back
    path.write_text(f"{EVE.public_key_b64}\n")
    assert set(keys.table()) == {EVE.public_key}


def test_load_refuses_a_file_it_cannot_use(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot read authorized keys"):
        AuthorizedKeys(tmp_path / "missing").load()
    bad = tmp_path / "bad"
    bad.write_text(f"{ALICE.public_key_b64}\n{ALICE.public_key_b64} write\n")
    with pytest.raises(ValueError, match="line 2: unknown capability 'write'"):
        AuthorizedKeys(bad).load()


# -- shoal serve: the flags, checked before the node starts -------------------------------------


def _serve(monkeypatch: pytest.MonkeyPatch, *args: str) -> tuple[Any, list[Any]]:
    import sys
    import types

    from typer.testing import CliRunner

    from cli.main import app

    seen: list[Any] = []
    monkeypatch.setitem(sys.modules, "node.daemon", types.SimpleNamespace(main=seen.append))
    return CliRunner().invoke(app, ["serve", *args]), seen


def test_serve_beyond_loopback_without_keys_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    result, seen = _serve(monkeypatch, "--api-host", "0.0.0.0")
    assert result.exit_code == 2 and not seen
    assert result.stderr.startswith("Error: the API would listen on 0.0.0.0") and result.stderr.count("\n") == 1
    result, seen = _serve(monkeypatch, "--api-host", "0.0.0.0", "--open-api")
    assert result.exit_code == 0 and seen[0].open_api and seen[0].authorized_keys is None


def test_serve_takes_an_output_entry_cap_that_clients_can_unpack(monkeypatch: pytest.MonkeyPatch) -> None:
    result, seen = _serve(monkeypatch, "--max-output-entries", "1000")
    assert result.exit_code == 0 and seen[0].max_output_entries == 1000
    result, seen = _serve(monkeypatch, "--max-output-entries", "200001")  # shoal get would refuse such results
    assert result.exit_code == 2 and not seen
    assert result.stderr == "Error: --max-output-entries: at most 200,000, what a client unpacks from one result\n"


def test_serve_checks_the_keys_file_and_the_tls_pair(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text(f"{ALICE.public_key_b64} submit\n")
    result, seen = _serve(monkeypatch, "--api-host", "0.0.0.0", "--authorized-keys", str(keys))
    assert result.exit_code == 0, result.stderr
    assert seen[0].authorized_keys == keys and seen[0].api_host == "0.0.0.0"
    keys.write_text(f"{ALICE.public_key_b64} submit\n{ALICE.public_key_b64} everything\n")
    result, seen = _serve(monkeypatch, "--authorized-keys", str(keys))
    assert result.exit_code == 2 and not seen and "line 2: unknown capability 'everything'" in result.stderr
    result, seen = _serve(monkeypatch, "--tls-cert", str(keys))
    assert result.exit_code == 2 and "--tls-cert and --tls-key go together" in result.stderr
    result, seen = _serve(monkeypatch, "--tls-cert", str(keys), "--tls-key", str(keys))  # not a certificate
    assert result.exit_code == 2 and not seen and "cannot use --tls-cert" in result.stderr


# -- shares in the store -------------------------------------------------------------------------


async def test_shares_open_in_an_old_data_dir_are_bounded_and_go_with_their_job(tmp_path: Path) -> None:
    import sqlite3

    import trio

    from jobs import Job, JobSpec, JobState
    from node.store import ExpiredRecords, Store

    path = tmp_path / "shoal.db"
    with sqlite3.connect(path) as conn:  # a data dir from before shares: no such table
        conn.execute("CREATE TABLE reputation (peer TEXT PRIMARY KEY, accepted INTEGER NOT NULL, "
                     "rejected INTEGER NOT NULL)")
    store = Store(path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        job = Job(id="j-1", owner="alice", spec=JobSpec.model_validate({"engine": {"name": "noop"}}),
                  state=JobState.COMPLETED, created_at=0, updated_at=0)
        await store.save(new_job=job)
        assert not await store.is_shared("j-1", "bob")
        assert await store.share("j-1", "bob", limit=2) and await store.share("j-1", "bob", limit=2)  # idempotent
        assert await store.share("j-1", "carol", limit=2)
        assert not await store.share("j-1", "dave", limit=2)  # full: nothing written
        assert await store.is_shared("j-1", "bob") and not await store.is_shared("j-1", "dave")
        assert not await store.is_shared("j-2", "bob")  # one job, not another
        stored = await store.get_job("j-1")
        assert await store.delete_records(ExpiredRecords(jobs=[stored])) == 1
        assert not await store.is_shared("j-1", "bob")  # a later job with that id starts with no readers
        nursery.cancel_scope.cancel()


# -- the SDK: share, Forbidden, the pinned certificate ----------------------------------------


def _recording_client(seen: list[Any], status: int = 200, body: dict | None = None) -> Any:
    import httpx

    from shoal import Client

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(status, json=body)

    return Client("http://node.test", key=ALICE, transport=httpx.MockTransport(handle))


def test_share_posts_the_key_to_the_job_or_the_sweep() -> None:
    import json

    from shoal import InvalidRequest

    seen: list[Any] = []
    bob = BOB.public_key_b64
    for some_id, path in (("j-1", "/v1/jobs/j-1/shares"), ("s-1", "/v1/sweeps/s-1/shares")):
        with _recording_client(seen, body={"id": some_id, "key": bob, "client_id": BOB.client_id}) as client:
            shared = client.share(some_id, bob.rstrip("="))  # unpadded, as some tools print it
        assert (shared.id, shared.key) == (some_id, bob)
        assert seen[-1].method == "POST" and seen[-1].url.path == path
        assert json.loads(seen[-1].content) == {"key": bob}
    with _recording_client(seen) as client, pytest.raises(InvalidRequest, match="not a client key"):
        client.share("j-1", "ssh-ed25519 AAAA")
    assert len(seen) == 2  # a bad key is refused before anything is sent


def test_403_is_forbidden_with_the_nodes_message() -> None:
    from shoal import Forbidden

    message = f"client {EVE.public_key_b64} is not authorized on this node"
    body = {"error": {"code": "forbidden", "message": message, "fields": []}}
    with _recording_client([], 403, body) as client, pytest.raises(Forbidden) as refused:
        client.list()
    assert str(refused.value) == message and refused.value.status == 403 and refused.value.code == "forbidden"


def test_ca_cert_pins_https_only_and_must_be_readable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from shoal import Client, ShoalAPIError

    missing = tmp_path / "missing.pem"
    with pytest.raises(ShoalAPIError, match=r"cannot use .*missing\.pem as the node's certificate"):
        Client("https://node.test", key=ALICE, ca_cert=missing)
    monkeypatch.setenv("SHOAL_CA_CERT", str(missing))  # the same from the environment
    with pytest.raises(ShoalAPIError, match="SHOAL_CA_CERT"):
        Client("https://node.test", key=ALICE)
    Client("http://node.test", key=ALICE).close()  # plain HTTP: nothing to pin, the setting is not read
    monkeypatch.delenv("SHOAL_CA_CERT")
    bundle = tmp_path / "not-a-cert.pem"
    bundle.write_text("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    with pytest.raises(ShoalAPIError, match=r"not-a-cert\.pem"):
        Client("https://node.test", key=ALICE, ca_cert=bundle)

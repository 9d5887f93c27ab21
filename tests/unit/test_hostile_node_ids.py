"""A node (or a peer) that sends back ids of its own making: a path out of the current directory, escape
sequences, rich markup. ``jobs.model.Identifier`` refuses them where they arrive; ``shoal get`` keeps its
default destination in the current directory even so."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

import cli.connect
import shoal
from cli.main import app
from jobs import Job, JobSpec, MalformedMessage
from jobs.messages import Announce, decode, encode
from jobs.views import JobDescription
from node.store.queries import _valid
from shoal._auth import ClientKey
from tests.unit.test_client import results_archive

ESC = "\x1b]0;PWNED-TITLE\x07\x1b[2J"
LINK = "[link=https://evil.example/]click[/link]"
GOOD_ID = "j-0123456789abcdef0123456789abcdef"


class HostileNode:
    """Answers every request for a job with a completed job whose fields are ``job``'s, and its results."""

    def __init__(self, **job: str) -> None:
        self.cid, self.tar = results_archive({"stdout": b"HELLO-FROM-HOSTILE-NODE\n", "stderr": b"",
                                              "exitCode": b"0", "outputs/owned.txt": b"written by the node\n"})
        self.job = {"id": GOOD_ID, "owner": "c-x", "requester": "", **job}
        self.version = "0.1.0"

    def describe(self) -> dict[str, Any]:
        now = time.time()
        job = {**self.job, "spec": {"engine": {"name": "noop"}}, "state": "completed", "reason": "done",
               "created_at": now - 5, "updated_at": now, "result": {"exit_code": 0, "cid": self.cid}}
        return {"job": job, "executions": []}

    def handle(self, request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/v1/version":
            return httpx.Response(200, json={"version": self.version})
        if path == "/v1/peers":
            return httpx.Response(200, json={"peers": ["12D3KooW" + ESC]})
        if path == "/v1/jobs":
            return httpx.Response(200, json={"jobs": [self.describe()["job"]], "total": 1})
        if path.endswith("/results"):
            return httpx.Response(200, headers={"content-type": "application/x-tar", "X-Shoal-CID": self.cid},
                                  content=self.tar)
        if path.startswith("/v1/jobs/"):
            return httpx.Response(200, json=self.describe())
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no", "fields": []}})

    def client(self) -> shoal.Client:
        return shoal.Client("http://127.0.0.1:65001", key=ClientKey.generate(),
                            transport=httpx.MockTransport(self.handle))


@pytest.fixture
def node(monkeypatch: pytest.MonkeyPatch) -> HostileNode:
    hostile = HostileNode()
    monkeypatch.setattr(cli.connect, "make_client", lambda *a, **kw: hostile.client())
    monkeypatch.delenv("SHOAL_API", raising=False)
    monkeypatch.setenv("SHOAL_CONFIG", os.devnull)
    return hostile


def run(*args: str) -> Any:
    return CliRunner().invoke(app, list(args))


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_get_with_a_node_given_id_never_writes_outside_the_current_directory(
    node: HostileNode, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    victim = tmp_path / "victim"
    (victim / "outputs").mkdir(parents=True)
    (victim / "outputs" / "thesis.tex").write_text("four years of work\n")
    here = victim / "a" / "b" / "c"
    here.mkdir(parents=True)
    monkeypatch.chdir(here)
    before = tree(tmp_path)
    node.job["id"] = "/../../../.."  # job-/../../../.. is the victim directory, three levels up

    result = run("get", GOOD_ID)

    assert tree(tmp_path) == before  # the attacker got nothing: no file written, none removed, none replaced
    assert result.exit_code != 0
    assert "unexpected response" in result.stderr and "Traceback" not in result.stderr


def test_get_default_destination_refuses_a_separator_even_past_the_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Belt and braces: an id that reached the CLI without the model's check still names no other directory."""
    downloads: list[Path] = []
    forged = Job.model_construct(id="j-/../../x", owner="c", spec=JobSpec(engine={"name": "noop"}),
                                 created_at=1.0, updated_at=1.0)

    class Forged:
        def describe(self, job_id: str) -> JobDescription:
            return JobDescription.model_construct(job=forged, executions=[])

        def download(self, job_id: str, dest: Path, **kw: object) -> Path:
            downloads.append(dest)
            return dest

    monkeypatch.setattr(cli.connect, "make_client", lambda *a, **kw: Forged())
    monkeypatch.setenv("SHOAL_CONFIG", os.devnull)
    monkeypatch.chdir(tmp_path)

    result = run("get", "j-x")

    assert result.exit_code != 0 and "names no directory here" in result.stderr
    assert downloads == []


@pytest.mark.parametrize("field", ["id", "requester", "owner"])
@pytest.mark.parametrize("value", [f"j-{ESC}", LINK, "j-[/]", "j-1\n"])
def test_describe_and_wait_show_nothing_of_a_hostile_id(node: HostileNode, field: str, value: str) -> None:
    node.job[field] = value
    for command in ("describe", "wait"):
        result = run(command, GOOD_ID)
        assert result.exit_code != 0
        assert "unexpected response" in result.stderr and "Traceback" not in result.stderr
        output = result.stdout + result.stderr
        assert "\x1b" not in output and "evil.example" not in output and "PWNED" not in output


def test_the_sdk_refuses_a_hostile_id_with_a_shoal_error(node: HostileNode) -> None:
    node.job["id"] = f"j-{ESC}"
    with pytest.raises(shoal.ShoalAPIError) as caught:
        node.client().describe(GOOD_ID)
    assert caught.value.code == "bad_response" and "\x1b" not in str(caught.value)


def test_version_and_peers_reach_the_terminal_as_text(node: HostileNode) -> None:
    node.version = "9.9 " + ESC
    for command in ("version", "peers"):
        result = run(command)
        assert result.exit_code == 0
        assert "\x1b" not in result.stdout and "\\x1b]0;PWNED-TITLE\\x07" in result.stdout


def test_a_peer_message_with_a_hostile_id_is_refused_at_decode() -> None:
    honest = Announce(job_id=GOOD_ID, spec=JobSpec(engine={"name": "noop"}), requester="12D3KooWA")
    for field in ("job_id", "requester"):
        for value in ("../../etc", f"j-{ESC}", LINK, "j-[/]", "j 1"):
            forged = encode(honest).replace(f'"{getattr(honest, field)}"'.encode(),
                                            f'"{value.encode("unicode_escape").decode()}"'.encode())
            with pytest.raises(MalformedMessage):
                decode(forged)


def test_the_ids_the_project_makes_pass_and_others_do_not() -> None:
    from libp2p.crypto.ed25519 import create_new_key_pair
    from libp2p.peer.id import ID

    peer = ID.from_pubkey(create_new_key_pair().public_key).to_base58()
    client = ClientKey.generate().client_id
    made = [f"j-{uuid.uuid4().hex}", f"e-{uuid.uuid4().hex}", f"c-{uuid.uuid4().hex}-17", client, peer]
    for ident in made:
        Job(id=ident, owner=client, requester=peer, spec=JobSpec(engine={"name": "noop"}), created_at=1, updated_at=1)
    for hostile in ("c\x1b[2J", LINK, "../x", "a b", "", "x" * 129):
        with pytest.raises(ValueError, match="should match pattern"):
            Job(id=GOOD_ID, owner=hostile, spec=JobSpec(engine={"name": "noop"}), created_at=1, updated_at=1)


def test_a_stored_record_with_an_id_now_refused_is_set_aside() -> None:
    body = Job.model_construct(id="j-[/]", owner="c", spec=JobSpec(engine={"name": "noop"}), created_at=1.0,
                               updated_at=1.0).model_dump_json()
    assert _valid(Job, "jobs", body, id="j-[/]") is None

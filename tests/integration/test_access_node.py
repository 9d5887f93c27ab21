"""Authorized clients and TLS, against a real ``shoal serve`` process.

One noop node serves its API over HTTPS (a self-signed certificate made here with
``cryptography``) and lets in only the keys of its authorized-keys file: the owner (every
capability), a reader (``read``), a submitter (``submit, read``) and a friend (every
capability, but owning nothing). A stranger's key gets 403 on every route and changes
nothing; the CLI says it is not authorized and exits 3. Capabilities are enforced, the file
is re-read when it changes, ``shoal share`` lets one key read one job or sweep and nothing
else. A client that does not pin the node's certificate, or pins another, is refused before
sending anything. A node whose API listens beyond loopback will not start without keys.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import os
import socket
import ssl
import subprocess
import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest

from node.api.middleware import CONTEXT_UPLOADS, MAX_CONTEXT_BODY
from shoal import Client, ClientKey, ConnectionFailed, Forbidden, NotFound, ShoalAuth
from shoal._auth import HEADER_BODY_SHA256, HEADER_KEY
from shoal._context import pack_context
from tests.integration.rogue import free_base_port
from tests.integration.single_node import REPO, SHOAL, noop_node

pytestmark = pytest.mark.slow

PORT = free_base_port(1)
API = f"https://127.0.0.1:{PORT}"
NOOP = {"engine": {"name": "noop"}}
SWEEP = {"job": NOOP, "grid": {"x": ["1", "2"]}}


def self_signed(directory: Path, hosts: tuple[str, ...] = ("127.0.0.1",)) -> tuple[Path, Path]:
    """A self-signed certificate for ``hosts`` (IP SANs) and its key, as PEM files in ``directory``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory.mkdir(parents=True, exist_ok=True)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "shoal test node")])
    now = datetime.now(UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(h)) for h in hosts]),
                           critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))  # fmt: skip
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


class Keys:
    """Each client's key in its own SHOAL_HOME, so the CLI can be run as any of them."""

    def __init__(self, root: Path) -> None:
        self.homes = {name: root / name for name in ("owner", "reader", "submitter", "friend", "stranger", "late")}
        self.key = {name: ClientKey.load_or_create(home / "client.key") for name, home in self.homes.items()}

    def line(self, name: str, capabilities: str = "") -> str:
        return f"{self.key[name].public_key_b64} {capabilities}".rstrip() + "\n"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    return Keys(tmp_path_factory.mktemp("clients"))


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def keys_file(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> Path:
    path = tmp_path_factory.mktemp("access") / "authorized_keys"
    path.write_text("# the test's clients\n" + keys.line("owner") + keys.line("reader", "read")
                    + keys.line("submitter", "submit, read") + keys.line("friend"))
    return path


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, tls: tuple[Path, Path], keys_file: Path) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("node-home")
    args = ["--authorized-keys", str(keys_file), "--tls-cert", str(tls[0]), "--tls-key", str(tls[1])]
    with noop_node(home, PORT, args=args):
        yield home


def client(keys: Keys, name: str, tls: tuple[Path, Path]) -> Client:
    return Client(API, key=keys.key[name], ca_cert=tls[0], timeout=30)


@pytest.fixture(scope="module")
def owned(node: Path, keys: Keys, tls: tuple[Path, Path]) -> dict[str, str]:
    """The owner's two completed jobs and a completed sweep."""
    with client(keys, "owner", tls) as c:
        first = c.run(NOOP, timeout=30).job.id
        second = c.run(NOOP, timeout=30).job.id
        sweep = c.run_sweep(SWEEP, timeout=60).sweep.id
    return {"job": first, "other_job": second, "sweep": sweep}


def cli(keys: Keys, name: str, *args: str, ca_cert: Path | None = None) -> subprocess.CompletedProcess:
    path = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {k: v for k, v in os.environ.items() if k not in ("SHOAL_API", "SHOAL_CA_CERT")}
    env.update(SHOAL_HOME=str(keys.homes[name]), NO_COLOR="1", PYTHONPATH=os.pathsep.join(path))
    if ca_cert is not None:
        env["SHOAL_CA_CERT"] = str(ca_cert)
    return subprocess.run([SHOAL, "--api", API, *args], capture_output=True, text=True, env=env, timeout=60)


def metrics(tls: tuple[Path, Path]) -> str:
    """The node's metrics, less its network counters: those move on their own (periodic gossip)."""
    with httpx.Client(verify=Client(API, key=ClientKey.generate(), ca_cert=tls[0])._http_kwargs()["verify"]) as h:
        text = h.get(f"{API}/metrics").text
    return "\n".join(line for line in text.splitlines() if not line.startswith("shoal_network"))


def every_signed_route(owned: dict[str, str], tls: tuple[Path, Path]) -> list[tuple[str, str]]:
    """(method, path) of every signed route the node documents, with real ids filled in."""
    with httpx.Client(verify=Client(API, key=ClientKey.generate(), ca_cert=tls[0])._http_kwargs()["verify"]) as h:
        schema = h.get(f"{API}/openapi.json").json()
    routes = []
    for path, operations in schema["paths"].items():
        for method, operation in operations.items():
            if operation.get("security"):
                routes.append((method.upper(), path.format(job_id=owned["job"], sweep_id=owned["sweep"], index=0)))
    return routes


def body_for(method: str, path: str, key: ClientKey) -> tuple[bytes, str]:
    """A body the route would accept from an authorized key, so only authorization can refuse it."""
    import json

    if path == "/v1/contexts":
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo("main.py")
            info.size = 0
            tar.addfile(info, io.BytesIO(b""))
        return buf.getvalue(), "application/x-tar"
    if path == "/v1/jobs":
        return json.dumps({"spec": NOOP}).encode(), "application/json"
    if path == "/v1/sweeps":
        return json.dumps({"spec": SWEEP}).encode(), "application/json"
    if path.endswith("/shares"):
        return json.dumps({"key": key.public_key_b64}).encode(), "application/json"
    return b"", "application/json"


def test_a_strangers_key_gets_403_on_every_route_and_changes_nothing(
    owned: dict[str, str], keys: Keys, tls: tuple[Path, Path]
) -> None:
    stranger = keys.key["stranger"]
    routes = every_signed_route(owned, tls)
    assert len(routes) >= 20 and ("POST", "/v1/jobs") in routes and ("GET", "/v1/node") in routes
    routes.append(("GET", "/v1/no-such-route"))
    before = metrics(tls)
    expected = f"client {stranger.public_key_b64} is not authorized on this node"
    with client(keys, "stranger", tls) as c:
        for method, path in routes:
            body, content_type = body_for(method, path, stranger)
            request = c._http.build_request(method, path, content=body or None,
                                            headers={"Content-Type": content_type} if body else None)
            response = c._http.send(request)
            assert response.status_code == 403, (method, path, response.text)
            assert response.json()["error"] == {"code": "forbidden", "message": expected, "fields": []}
        # a bad signature is still 401, whoever the key is
        for name in ("stranger", "owner"):
            request = ShoalAuth(keys.key[name]).sign(c._http.build_request("GET", "/v1/jobs"))
            request.headers["X-Shoal-Nonce"] = "0" * 32
            response = c._http.send(request, auth=None)
            assert response.status_code == 401 and response.json()["error"]["message"] == "bad signature"
    assert metrics(tls) == before  # no job, sweep or event was made; nothing ran
    with client(keys, "owner", tls) as c:
        assert c.describe(owned["job"]).job.state == "completed"
        assert c.describe_sweep(owned["sweep"]).sweep.state == "completed"
        assert c.list().total == 2


def test_slow_uploads_from_strangers_forgers_or_replays_leave_members_their_upload_slots(
    node: Path, keys: Keys, tls: tuple[Path, Path], tmp_path: Path
) -> None:
    """A node reads at most CONTEXT_UPLOADS upload bodies at once, and a signature over a body could be
    checked only once the body had arrived (in up to 30 s). Four connections that sent a little of a 12 MiB
    upload and then nothing held every slot, whatever key they named: members' uploads got 503 for as long
    as they kept that up. The SDK now declares its body's hash, so its signature is checked first."""
    context = ssl.create_default_context(cafile=str(tls[0]))
    host = f"127.0.0.1:{PORT}"
    (tmp_path / "main.py").write_text("print(1)\n")
    archive = pack_context(tmp_path)

    def upload(size: int, *, signer: str = "stranger", named: str | None = None, declared: bool = True,
               body: bytes | None = None) -> dict[str, str]:
        """The headers of an upload of ``size`` bytes signed by ``signer``, naming ``named``'s key."""
        signature = ShoalAuth(keys.key[signer]).headers_for("POST", host, b"/v1/contexts", body or b"\0" * size)
        signature[HEADER_KEY] = keys.key[named or signer].public_key_b64
        if not declared:
            del signature[HEADER_BODY_SHA256]
        return {"Host": host, "Content-Type": "application/x-tar", "Content-Length": str(size), **signature}

    def head(headers: dict[str, str]) -> bytes:
        lines = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        return f"POST /v1/contexts HTTP/1.1\r\n{lines}\r\n".encode()

    def connect() -> ssl.SSLSocket:
        sock = socket.create_connection(("127.0.0.1", PORT), timeout=10)
        return context.wrap_socket(sock, server_hostname="127.0.0.1")

    def answer(sock: ssl.SSLSocket) -> bytes:
        received = b""
        while b"}" not in received and (chunk := sock.recv(4096)):
            received += chunk
        return received

    seen = upload(len(archive), signer="owner", body=archive)  # the owner's upload, as seen on the wire
    with connect() as sock:
        sock.sendall(head(seen) + archive)
        assert answer(sock).startswith(b"HTTP/1.1 201")
    size = MAX_CONTEXT_BODY - 1
    stalled = []
    try:
        for headers in (
            [upload(size)] * CONTEXT_UPLOADS  # a stranger's own key
            + [upload(size, named="owner")] * CONTEXT_UPLOADS  # the owner's key, in requests the stranger signed
            + [upload(size, named="owner", declared=False)] * CONTEXT_UPLOADS  # the same, with no hash declared
            + [{**seen, "Content-Length": str(size)}] * CONTEXT_UPLOADS  # the owner's own request, replayed
        ):
            sock = connect()
            sock.sendall(head(headers) + b"\0" * (64 << 10))  # and no more
            stalled.append(sock)
        time.sleep(1)
        with client(keys, "owner", tls) as c:  # while all of those are open
            assert c.upload_context(archive)
        for headers, status, message in ((upload(1 << 20), b"403", b"is not authorized on this node"),
                                         (upload(1 << 20, named="owner"), b"401", b"bad signature")):
            with connect() as sock:  # one that sends its whole body reads its answer, rather than a reset
                sock.sendall(head(headers) + b"\0" * (1 << 20))
                got = answer(sock)
            assert got.startswith(b"HTTP/1.1 " + status) and message in got, got[:300]
    finally:
        for sock in stalled:
            sock.close()


def test_a_body_other_than_the_one_signed_is_refused_after_the_signature_was_checked_before_it(
    owned: dict[str, str], keys: Keys, tls: tuple[Path, Path]
) -> None:
    signed_body, sent_body = b'{"spec": {"engine": {"name": "noop"}}} ', b' {"spec": {"engine": {"name": "noop"}}}'
    with client(keys, "owner", tls) as c:
        before = c.list().total
        request = ShoalAuth(keys.key["owner"]).sign(c._http.build_request("POST", "/v1/jobs", content=signed_body))
        assert request.headers[HEADER_BODY_SHA256] == hashlib.sha256(signed_body).hexdigest()
        sent = c._http.build_request("POST", "/v1/jobs", content=sent_body, headers=request.headers)
        response = c._http.send(sent, auth=None)
        assert response.status_code == 401 and response.json()["error"]["message"] == "bad signature"
        assert c.list().total == before


def test_the_cli_says_not_authorized_and_exits_non_zero(node: Path, keys: Keys, tls: tuple[Path, Path]) -> None:
    key = keys.key["stranger"].public_key_b64
    for args in (["list"], ["run", "noop", "--no-wait"], ["nodes"]):
        r = cli(keys, "stranger", *args, ca_cert=tls[0])
        assert r.returncode == 3, (args, r.stdout, r.stderr)
        assert r.stderr == f"Error: client {key} is not authorized on this node\n", r.stderr
        assert r.stdout == ""
    shown = cli(keys, "stranger", "key", "show")
    assert shown.returncode == 0 and shown.stdout == f"{key}\n"


def test_an_authorized_key_works_over_the_pinned_certificate(
    owned: dict[str, str], keys: Keys, tls: tuple[Path, Path]
) -> None:
    r = cli(keys, "owner", "list", "--json", ca_cert=tls[0])
    assert r.returncode == 0, r.stderr
    assert owned["job"] in r.stdout and owned["other_job"] in r.stdout
    r = subprocess.run([SHOAL, "--api", API, "--ca-cert", str(tls[0]), "describe", owned["job"], "--json"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "SHOAL_HOME": str(keys.homes["owner"]), "PYTHONPATH": str(REPO)})
    assert r.returncode == 0 and '"completed"' in r.stdout, r.stderr


def test_capabilities_are_enforced(owned: dict[str, str], keys: Keys, tls: tuple[Path, Path]) -> None:
    with client(keys, "reader", tls) as reader:
        assert reader.list().total == 0  # may read (its own: none)
        with pytest.raises(Forbidden, match="lacks the 'submit' capability") as refused:
            reader.submit(NOOP)
        assert refused.value.status == 403
        with pytest.raises(Forbidden, match="'admin'"):
            reader.nodes()
    with client(keys, "submitter", tls) as submitter:
        job = submitter.submit({**NOOP, "deal": {"concurrency": 5}})  # one node: it never ends
        with pytest.raises(Forbidden, match="lacks the 'cancel' capability"):
            submitter.cancel(job.job.id)
        assert submitter.describe(job.job.id).job.state in ("pending", "running")  # not cancelled
    with client(keys, "owner", tls) as owner:
        assert owner.node().peer_id  # every capability: admin too
        with pytest.raises(NotFound):  # capabilities never reach other keys' jobs
            owner.cancel(job.job.id)


def test_the_file_is_re_read_when_it_changes(node: Path, keys: Keys, tls: tuple[Path, Path], keys_file: Path) -> None:
    original = keys_file.read_text()
    with client(keys, "late", tls) as late:
        with pytest.raises(Forbidden, match="is not authorized on this node"):
            late.list()
        try:
            keys_file.write_text(original + keys.line("late", "read"))
            assert late.list().total == 0
            with pytest.raises(Forbidden, match="'submit'"):
                late.submit(NOOP)
        finally:
            keys_file.write_text(original)
        with pytest.raises(Forbidden, match="is not authorized on this node"):
            late.list()


def test_share_gives_read_access_to_one_job_only(owned: dict[str, str], keys: Keys, tls: tuple[Path, Path]) -> None:
    job, other = owned["job"], owned["other_job"]
    friend_key = keys.key["friend"].public_key_b64
    with client(keys, "friend", tls) as friend:
        with pytest.raises(NotFound):
            friend.describe(job)
        r = cli(keys, "owner", "share", job[:10], friend_key, ca_cert=tls[0])  # a prefix, as `shoal list` shows
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"Job {job} can now be read by client {friend_key}\n"
        assert friend.describe(job).job.state == "completed"
        assert [e.kind for e in friend.events(job)][-1] == "Completed"
        assert friend.logs(job) == ""
        assert (friend.download(job, keys.homes["friend"] / "results") / "exitCode").read_text() == "0"
        # nothing else: not the owner's other job, not cancelling, not sharing on, not listing
        with pytest.raises(NotFound):
            friend.describe(other)
        with pytest.raises(NotFound):
            friend.cancel(job)
        with pytest.raises(NotFound):
            friend.share(job, keys.key["stranger"].public_key_b64)
        assert friend.list().total == 0
        # a sweep, through the SDK: its own read routes, not its jobs' control
        sweep = owned["sweep"]
        with pytest.raises(NotFound):
            friend.describe_sweep(sweep)
        with client(keys, "owner", tls) as owner:
            shared = owner.share(sweep, friend_key)
        assert (shared.id, shared.key, shared.client_id) == (sweep, friend_key, keys.key["friend"].client_id)
        assert friend.describe_sweep(sweep).sweep.state == "completed"
        assert friend.sweep_indexes(sweep).total == 2
        assert friend.index_logs(sweep, 1) == ""
        with pytest.raises(NotFound):
            friend.cancel_sweep(sweep)
        with pytest.raises(NotFound):
            friend.retry_sweep(sweep)
    with client(keys, "stranger", tls) as stranger, pytest.raises(Forbidden):
        stranger.describe(job)  # sharing with one key lets in no other


def test_an_unpinned_or_wrong_certificate_is_refused(
    node: Path, keys: Keys, tls: tuple[Path, Path], tmp_path: Path
) -> None:
    wrong, _ = self_signed(tmp_path / "other")
    with Client(API, key=keys.key["owner"]) as unpinned, pytest.raises(ConnectionFailed, match="certificate"):
        unpinned.list()  # the system's CAs: a self-signed certificate is not among them
    with Client(API, key=keys.key["owner"], ca_cert=wrong) as pinned_elsewhere, \
            pytest.raises(ConnectionFailed, match="certificate verify failed"):
        pinned_elsewhere.list()
    r = cli(keys, "owner", "list")
    assert r.returncode == 3 and "certificate verify failed" in r.stderr, r.stderr
    r = cli(keys, "owner", "list", ca_cert=wrong)
    assert r.returncode == 3 and "certificate verify failed" in r.stderr, r.stderr


def test_a_node_whose_api_listens_beyond_loopback_needs_keys(tmp_path: Path, keys: Keys) -> None:
    env = {**os.environ, "SHOAL_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    started = time.monotonic()
    r = subprocess.run([SHOAL, "serve", "--noop", "--api-host", "0.0.0.0", "--api-port", "0", "--ipfs-api", "none",
                        "--data-dir", str(tmp_path / "node")], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2 and "READY" not in r.stdout
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("Error: the API would listen on 0.0.0.0"), r.stderr
    assert "--authorized-keys" in r.stderr and "--open-api" in r.stderr
    assert not (tmp_path / "node").exists()  # refused before anything was made
    assert time.monotonic() - started < 30

"""Inputs from URLs, against a real HTTP server on loopback (trio sockets, hand-written responses)."""

from __future__ import annotations

import contextlib
import gzip
import random
from functools import partial

import httpx
import pytest
import trio

from jobs import InputSpec
from storage import HttpInput, InputRegistry, InvalidSource, NotFound, StorageError, TooLarge, Unavailable

BIG = random.Random(5).randbytes(3 << 20)
BOMB = gzip.compress(gzip.compress(bytes(2 << 20)))


def _response(status: str, body: bytes = b"", headers: dict[str, str] | None = None) -> bytes:
    head = {"Content-Length": str(len(body)), **(headers or {})}
    lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in head.items()), "Connection: close", "", ""]
    return "\r\n".join(lines).encode() + body


async def read_request(stream: trio.SocketStream) -> bytes | None:
    """An HTTP request's head as it arrives (None: the client hung up first)."""
    request = b""
    while b"\r\n\r\n" not in request:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        request += chunk
    return request


async def _handler(stream: trio.SocketStream) -> None:
    request = await read_request(stream)
    if request is None:
        return
    path = request.split(b" ")[1].decode()
    try:
        if path == "/hello":
            await stream.send_all(_response("200 OK", b"hello world\n"))
        elif path == "/big":
            await stream.send_all(_response("200 OK", BIG))
        elif path == "/big-chunked":  # no Content-Length: the limit must hold while streaming
            await stream.send_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
            for i in range(0, len(BIG), 65536):
                piece = BIG[i: i + 65536]
                await stream.send_all(b"%x\r\n" % len(piece) + piece + b"\r\n")
            await stream.send_all(b"0\r\n\r\n")
        elif path == "/redirect":
            await stream.send_all(_response("302 Found", headers={"Location": "/hello"}))
        elif path == "/error":
            await stream.send_all(_response("503 Service Unavailable", b"busy"))
        elif path == "/forbidden":
            await stream.send_all(_response("403 Forbidden", b"no"))
        elif path == "/stall":
            await trio.sleep_forever()
        elif path == "/bomb":  # 2 MiB of zeros gzipped twice, whatever the client asked for
            await stream.send_all(_response("200 OK", BOMB, {"Content-Encoding": "gzip, gzip"}))
        elif path == "/asked":  # what the client asked for, as the body
            await stream.send_all(_response("200 OK", request))
        elif path == "/cut":  # promises more than it sends
            await stream.send_all(_response("200 OK", b"x" * 100)[:-50])
        else:
            await stream.send_all(_response("404 Not Found", b"nothing here"))
    except trio.BrokenResourceError:
        pass  # the client hung up early (size limit): that is the point of some tests
    finally:
        await stream.aclose()


@pytest.fixture
async def server(nursery):
    listeners = await nursery.start(partial(trio.serve_tcp, _handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    return f"http://127.0.0.1:{port}"


@pytest.fixture
def http() -> HttpInput:
    return HttpInput(allow_private=True, stall_timeout=1.0)


async def test_download_follows_redirects_and_writes_the_file(server, http, tmp_path):
    assert http.handles(f"{server}/hello") and http.handles("https://example.com/x") and not http.handles("Qm")
    await http.fetch(f"{server}/redirect", tmp_path / "hello", max_bytes=100)
    assert (tmp_path / "hello").read_bytes() == b"hello world\n"
    await http.fetch(f"{server}/big-chunked", tmp_path / "big", max_bytes=len(BIG))
    assert (tmp_path / "big").read_bytes() == BIG


@pytest.mark.parametrize("path", ["/big", "/big-chunked"])
async def test_size_limit_stops_the_download(server, http, tmp_path, path):
    with pytest.raises(TooLarge) as info:
        await http.fetch(f"{server}{path}", tmp_path / "big", max_bytes=1 << 20)
    assert info.value.limit == 1 << 20 and f"{server}{path}" in str(info.value)
    assert not (tmp_path / "big").exists()


async def test_a_compressed_body_is_saved_as_sent_and_never_inflated_in_the_node(server, http, tmp_path):
    """A 5 KB body sent with Content-Encoding: gzip inflated to 3 GiB in the node's own memory before its size
    was checked (the node stopped answering for 24 s). The node asks for the body as it is, and saves what
    comes, as curl does: the limit counts the bytes that arrive."""
    await http.fetch(f"{server}/asked", tmp_path / "asked", max_bytes=10_000)
    assert b"accept-encoding: identity" in (tmp_path / "asked").read_bytes().lower()
    await http.fetch(f"{server}/bomb", tmp_path / "bomb", max_bytes=10_000)
    assert (tmp_path / "bomb").read_bytes() == BOMB  # the compressed bytes, not 2 MiB of zeros
    with pytest.raises(TooLarge):
        await http.fetch(f"{server}/bomb", tmp_path / "small", max_bytes=len(BOMB) - 1)


async def test_http_errors_are_translated(server, http, tmp_path):
    with pytest.raises(NotFound, match="HTTP 404"):
        await http.fetch(f"{server}/missing", tmp_path / "x", max_bytes=100)
    with pytest.raises(Unavailable, match="HTTP 503"):
        await http.fetch(f"{server}/error", tmp_path / "x", max_bytes=100)
    with pytest.raises(StorageError, match="HTTP 403") as info:
        await http.fetch(f"{server}/forbidden", tmp_path / "x", max_bytes=100)
    assert not info.value.retryable
    with pytest.raises(Unavailable, match="broke"):
        await http.fetch(f"{server}/cut", tmp_path / "x", max_bytes=1000)
    with pytest.raises(Unavailable, match="silent"):
        await http.fetch(f"{server}/stall", tmp_path / "x", max_bytes=100)
    closed = trio.socket.socket()
    await closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()
    with pytest.raises(Unavailable, match="cannot connect"):
        await http.fetch(f"http://127.0.0.1:{port}/x", tmp_path / "x", max_bytes=100)
    assert not (tmp_path / "x").exists()


async def test_private_addresses_are_refused_by_default(server, tmp_path):
    strict = HttpInput()
    for url in [f"{server}/hello", "http://localhost:1/x", "http://169.254.169.254/computeMetadata/v1/",
                "http://10.0.0.1/x", "http://[::1]:1/x"]:
        with pytest.raises(InvalidSource, match="local or private"):
            await strict.fetch(url, tmp_path / "x", max_bytes=100)


async def test_slow_input_fails_within_the_deadline_naming_it(server, tmp_path):
    # the staging deadline, not the download's own stall timeout (30 s here), ends the stalled input; it is
    # long enough for the first input to arrive on a loaded machine
    registry = InputRegistry([HttpInput(allow_private=True, stall_timeout=30.0)])
    inputs = [InputSpec(source=f"{server}/hello", path="/in/a"), InputSpec(source=f"{server}/stall", path="/in/b")]
    start = trio.current_time()
    with pytest.raises(Unavailable, match=rf"input 1 \({server}/stall → /in/b\).*3 s input deadline"):
        await registry.prepare_inputs(inputs, tmp_path, deadline=3.0, max_bytes=1000)
    assert trio.current_time() - start < 15
    assert (tmp_path / "0").read_bytes() == b"hello world\n"  # the caller's cleanup removes the execution dir
    assert not (tmp_path / "1").exists()


# -- DNS rebinding: the address that was checked is the one connected to ------------------------------

PUBLIC = "93.184.216.34"  # any global address; no packet is sent to it (see _NoEgress)
# Each name below resolves to PUBLIC at most once, then to loopback: code that resolved a second time
# to connect (the bug) would reach loopback, never send a packet to PUBLIC.


class _Resolver(trio.abc.HostnameResolver):
    """A local resolver: each lookup of a name returns the next answer in its list (the last one repeats)."""

    def __init__(self, answers: dict[str, list[list[str]]]) -> None:
        self.answers = answers
        self.lookups: list[str] = []

    async def getaddrinfo(self, host, port, family=0, type=0, proto=0, flags=0):
        name = host.decode() if isinstance(host, bytes) else host
        self.lookups.append(name)
        queue = self.answers.get(name)
        if not queue:
            raise trio.socket.gaierror(trio.socket.EAI_NONAME, "Name or service not known")
        addresses = queue.pop(0) if len(queue) > 1 else queue[0]
        return [(trio.socket.AF_INET6 if ":" in a else trio.socket.AF_INET, trio.socket.SOCK_STREAM, 6, "",
                 (a, int(port or 0), 0, 0) if ":" in a else (a, int(port or 0))) for a in addresses]

    async def getnameinfo(self, sockaddr, flags):
        raise NotImplementedError


class _NoEgress(httpx.AsyncBaseTransport):
    """Sends requests for loopback on (a real connection); answers those for the public address itself."""

    def __init__(self, public_answer: httpx.Response, **options) -> None:
        self.real = httpx.AsyncHTTPTransport(**options)
        self.public_answer = public_answer
        self.to_public: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.host == PUBLIC:
            self.to_public.append(request)
            return self.public_answer
        return await self.real.handle_async_request(request)

    async def aclose(self) -> None:
        await self.real.aclose()


@pytest.fixture
async def witness(nursery):
    """An HTTP server on 127.0.0.1 that records every request it receives: the one a rebinding name aims at."""
    seen: list[bytes] = []

    async def handler(stream: trio.SocketStream) -> None:
        seen.append(await stream.receive_some(4096))
        await stream.send_all(_response("200 OK", b"private data\n"))
        await stream.aclose()

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    return listeners[0].socket.getsockname()[1], seen


async def test_a_rebinding_name_never_reaches_loopback(witness, tmp_path):
    port, seen = witness
    resolver = _Resolver({"rebind.test": [[PUBLIC], ["127.0.0.1"]]})  # public when checked, loopback after
    trio.socket.set_custom_hostname_resolver(resolver)
    transport = _NoEgress(httpx.Response(200, stream=httpx.ByteStream(b"public data\n")))
    await HttpInput(transport=transport).fetch(f"http://rebind.test:{port}/secret", tmp_path / "x", max_bytes=100)
    assert seen == []  # the loopback server was never asked
    assert (tmp_path / "x").read_bytes() == b"public data\n"  # what the checked address served
    assert resolver.lookups == ["rebind.test"]  # resolved once
    [request] = transport.to_public
    assert request.headers["host"] == f"rebind.test:{port}" and request.url.path == "/secret"


async def test_a_name_with_any_private_address_is_refused(witness, tmp_path):
    port, seen = witness
    trio.socket.set_custom_hostname_resolver(_Resolver({"mixed.test": [[PUBLIC, "127.0.0.1"], ["127.0.0.1"]],
                                                        "mapped.test": [["::ffff:127.0.0.1"]]}))
    transport = _NoEgress(httpx.Response(200, stream=httpx.ByteStream(b"public data\n")))
    for name in ("mixed.test", "mapped.test"):
        with pytest.raises(InvalidSource, match="local or private"):
            await HttpInput(transport=transport).fetch(f"http://{name}:{port}/", tmp_path / "x", max_bytes=100)
    assert seen == [] and transport.to_public == [] and not (tmp_path / "x").exists()


@pytest.mark.parametrize("location", ["http://127.0.0.1:{port}/secret", "http://2130706433:{port}/secret",
                                      "http://rebind.test:{port}/secret", "http://[::ffff:127.0.0.1]:{port}/"])
async def test_every_redirect_is_checked_again(witness, tmp_path, location):
    port, seen = witness
    trio.socket.set_custom_hostname_resolver(_Resolver({"public.test": [[PUBLIC], ["127.0.0.2"]],
                                                        "rebind.test": [["127.0.0.1"]]}))
    redirect = httpx.Response(302, headers={"Location": location.format(port=port)})
    transport = _NoEgress(redirect)
    with pytest.raises(InvalidSource, match="local or private"):
        await HttpInput(transport=transport).fetch(f"http://public.test:{port}/go", tmp_path / "x", max_bytes=100)
    assert seen == [] and len(transport.to_public) == 1 and not (tmp_path / "x").exists()


async def test_https_to_a_pinned_address_still_checks_the_certificate_for_the_name(nursery, tmp_path):
    """The connection goes to the resolved address, while SNI and the certificate check use the name."""
    import ssl

    cert, key = _self_signed("files.test", tmp_path)
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    names: list[str | None] = []
    server_ctx.sni_callback = lambda sock, name, ctx: names.append(name)

    async def handler(stream: trio.SocketStream) -> None:
        tls = trio.SSLStream(stream, server_ctx, server_side=True)
        with contextlib.suppress(trio.BrokenResourceError, ssl.SSLError):  # the refused handshake
            await _handler(tls)

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host="127.0.0.1"))
    port = listeners[0].socket.getsockname()[1]
    trio.socket.set_custom_hostname_resolver(_Resolver({"files.test": [["127.0.0.1"]],
                                                        "other.test": [["127.0.0.1"]]}))
    client_ctx = ssl.create_default_context(cafile=str(cert))
    http = HttpInput(allow_private=True, transport=httpx.AsyncHTTPTransport(verify=client_ctx))
    await http.fetch(f"https://files.test:{port}/hello", tmp_path / "hello", max_bytes=100)
    assert (tmp_path / "hello").read_bytes() == b"hello world\n" and names == ["files.test"]
    with pytest.raises(Unavailable, match="cannot connect"):  # the certificate does not name other.test
        await http.fetch(f"https://other.test:{port}/hello", tmp_path / "other", max_bytes=100)
    assert not (tmp_path / "other").exists()


def _self_signed(name: str, where):
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = where / "cert.pem", where / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path

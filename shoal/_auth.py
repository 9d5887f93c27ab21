"""Client identity (an Ed25519 key) and request signing.

Every API request is signed over the exact bytes that go on the wire. The signed message
(version 2) is::

    "shoal-auth-2" "\\n" METHOD "\\n" HOST "\\n" TARGET "\\n" TIMESTAMP "\\n" NONCE "\\n" SHA256-HEX(BODY)

- ``METHOD``: upper case, e.g. ``POST``.
- ``HOST``: the ``Host`` header (the authority the request was sent to, e.g. ``127.0.0.1:8700``),
  lower case: a request signed for one node is refused by another, which checks that the host
  names itself.
- ``TARGET``: the raw (still percent-encoded) path, plus ``?`` and the raw query string when the
  query is not empty: ``/v1/jobs?state=running&limit=50``.
- ``TIMESTAMP``: unix seconds, a decimal integer; the same string as the header.
- ``NONCE``: 16 random bytes as 32 lower-case hex characters; the same string as the header.
- ``SHA256-HEX(BODY)``: lower-case hex digest of the body bytes (of ``b""`` when there is none).

Headers: ``X-Shoal-Key`` (urlsafe base64 of the 32-byte raw public key), ``X-Shoal-Timestamp``,
``X-Shoal-Nonce``, ``X-Shoal-Signature`` (urlsafe base64 of the 64-byte signature) and
``X-Shoal-Auth: 2`` (the version of the signed message; requests from SDKs before the host was
signed carry none and are refused with a message saying to upgrade). Base64 is sent padded; the
verifier also accepts it unpadded. ``X-Shoal-Body-SHA256`` (optional; the SDK sends it) carries the
``SHA256-HEX(BODY)`` of the message: with it a node checks the signature before the body arrives, so a
node open only to some keys reads no body from anyone else (``node.api.middleware.Admitted``).

Nothing is re-serialised before verifying (the hash is over the received bytes), every route is
signed (not just submit), and the verifier in ``node.api.auth`` rejects stale timestamps and
reused nonces. This module is the one definition of the format; the verifier imports it.

``cryptography`` is imported on first use of a key, not at import time.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import errno
import hashlib
import os
import secrets
import time
from collections.abc import Callable, Generator
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

HEADER_KEY = "X-Shoal-Key"
HEADER_TIMESTAMP = "X-Shoal-Timestamp"
HEADER_NONCE = "X-Shoal-Nonce"
HEADER_SIGNATURE = "X-Shoal-Signature"
HEADER_VERSION = "X-Shoal-Auth"
HEADER_BODY_SHA256 = "X-Shoal-Body-SHA256"
SIGNATURE_HEADERS = (HEADER_KEY, HEADER_TIMESTAMP, HEADER_NONCE, HEADER_SIGNATURE)
AUTH_VERSION = "2"  # the canonical string below; 1 (no version header) did not sign the host

NONCE_BYTES = 16
PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64


def shoal_home() -> Path:
    """``$SHOAL_HOME`` or ``~/.shoal`` (same rule as ``node.config.shoal_home``)."""
    return Path(os.environ.get("SHOAL_HOME") or Path.home() / ".shoal")


def default_key_path() -> Path:
    return shoal_home() / "client.key"


def client_id_for(public_key: bytes) -> str:
    """The stable id of a client: ``"c"`` + the first 32 hex characters of sha256(raw public key)."""
    return "c" + hashlib.sha256(public_key).hexdigest()[:32]


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii")


def b64decode(text: str) -> bytes:
    """Urlsafe base64, padded or not. Raises ``ValueError`` on anything else."""
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as e:
        raise ValueError(f"not urlsafe base64: {e}") from None


def parse_public_key(text: str) -> bytes:
    """A client's public key as ``shoal key show`` prints it (urlsafe base64, padded or not, as in
    the ``X-Shoal-Key`` header) → its 32 raw bytes. Raises ``ValueError`` saying what is wrong."""
    try:
        raw = b64decode(text.strip())
    except ValueError:
        raw = b""
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError(f"not a client key (expected {PUBLIC_KEY_BYTES} bytes as urlsafe base64, "
                         f"as 'shoal key show' prints): {text.strip()[:60]!r}")
    return raw


def canonical_target(path: bytes, query: bytes) -> bytes:
    """``path`` or ``path?query``; an empty query adds no ``?`` (servers cannot tell them apart)."""
    return path + b"?" + query if query else path


def canonical_request(method: str, host: str, target: bytes, timestamp: str, nonce: str, body: bytes) -> bytes:
    """The bytes that are signed; see the module docstring."""
    return signed_message(method, host, target, timestamp, nonce, hashlib.sha256(body).hexdigest())


def signed_message(method: str, host: str, target: bytes, timestamp: str, nonce: str, body_sha256: str) -> bytes:
    """``canonical_request`` from the body's SHA-256 (lower-case hex) rather than the body."""
    return b"\n".join(
        (
            b"shoal-auth-" + AUTH_VERSION.encode("ascii"),
            method.upper().encode("ascii"),
            host.lower().encode("ascii", "replace"),
            target,
            timestamp.encode("ascii"),
            nonce.encode("ascii"),
            body_sha256.encode("ascii", "replace"),
        )
    )


class ClientKey:
    """An Ed25519 private key that identifies a client to every Shoal node.

    The key is the identity: jobs are owned by ``client_id``, so losing the file means losing
    access to your jobs' listing and cancel rights. The file is PEM (PKCS#8, unencrypted), so
    ``openssl pkey -in ~/.shoal/client.key -pubout`` can read it.
    """

    def __init__(self, private_key: Ed25519PrivateKey, path: Path | None = None) -> None:
        from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

        self._private_key = private_key
        self.path = path
        self.public_key: bytes = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.client_id: str = client_id_for(self.public_key)

    def __repr__(self) -> str:
        where = f", path='{self.path}'" if self.path else ""
        return f"ClientKey(client_id={self.client_id!r}{where})"

    @property
    def public_key_b64(self) -> str:
        """The value of the ``X-Shoal-Key`` header."""
        return b64encode(self.public_key)

    def sign(self, message: bytes) -> bytes:
        return self._private_key.sign(message)

    @classmethod
    def generate(cls) -> ClientKey:
        """A new in-memory key (tests, throwaway clients); nothing is written."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> ClientKey:
        """A key from its raw 32-byte private seed."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        return cls(Ed25519PrivateKey.from_private_bytes(seed))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ClientKey:
        """Read a key file: PEM (what ``load_or_create`` writes) or a raw 32-byte seed."""
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
        from cryptography.hazmat.primitives.serialization import load_pem_private_key

        path = Path(path).expanduser()
        data = path.read_bytes()
        if data.lstrip().startswith(b"-----BEGIN"):
            try:
                key = load_pem_private_key(data, password=None)
            except (ValueError, TypeError) as e:
                raise ValueError(f"cannot read client key {path}: {e}") from None
            if not isinstance(key, Ed25519PrivateKey):
                raise ValueError(f"client key {path} is not an Ed25519 key")
        elif len(data) == 32:
            key = Ed25519PrivateKey.from_private_bytes(data)
        else:
            raise ValueError(f"cannot read client key {path}: expected PEM or a raw 32-byte Ed25519 seed")
        return cls(key, path)

    @classmethod
    def load_or_create(cls, path: str | os.PathLike[str] | None = None) -> ClientKey:
        """Load the key at ``path`` (default ``$SHOAL_HOME/client.key``), creating it on first use.

        A new file is written with mode 0600 (its directory, if created, 0700) and published
        atomically with a hard link, so concurrent first runs agree on a single key instead of
        one silently overwriting the other's identity.
        """
        path = Path(path).expanduser() if path is not None else default_key_path()
        try:
            return cls.load(path)
        except FileNotFoundError:
            pass
        key = cls.generate()
        if not path.parent.is_dir():
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(path.parent, 0o700)  # mkdir's mode is filtered by the umask
        with contextlib.suppress(FileExistsError):
            create_key_file(path, key._pem())
        # Load what is on disk: if another process won the race, its key is the identity.
        return cls.load(path)

    def _pem(self) -> bytes:
        from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

        return self._private_key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption())


def create_key_file(path: Path, content: bytes) -> None:
    """Write a new private file (0600) whole or not at all; ``FileExistsError`` if it exists, as ``O_EXCL``.

    A full disk or a kill once left an empty node key, which every later start refused as "not a 32-byte
    seed" until someone moved it away (and the node's identity with it). The file is published with a hard
    link, so concurrent first runs agree on one key instead of one overwriting the other's; where the file
    system has no hard links, with a rename, which is whole too. The node's keys are written here as well.
    """
    partial = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
    fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o600)  # the mode given to open is filtered by the umask
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(partial, path)  # fails if another run created it meanwhile
        except FileExistsError:
            raise
        except OSError:  # a file system without hard links
            if path.exists():
                raise FileExistsError(errno.EEXIST, "exists", str(path)) from None
            os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


class ShoalAuth(httpx.Auth):
    """Signs every request (see the module docstring) with a fresh timestamp and nonce.

    Retries and reconnections go through ``auth_flow`` again, so each attempt carries its own
    nonce and is never rejected as a replay of the attempt before it.
    """

    requires_request_body = True

    def __init__(self, key: ClientKey, *, clock: Callable[[], float] = time.time) -> None:
        self.key = key
        self._clock = clock

    def headers_for(self, method: str, host: str, raw_target: bytes, body: bytes) -> dict[str, str]:
        """The ``X-Shoal-*`` headers for a request, with a fresh timestamp and nonce.

        ``host`` is the ``Host`` header the request carries (``127.0.0.1:8700``); ``raw_target``
        the path and query exactly as they go on the wire (``/v1/jobs?limit=5``). For clients
        other than httpx (another HTTP library, a fuzzer); ``sign`` uses it too.
        """
        timestamp = str(int(self._clock()))
        nonce = secrets.token_hex(NONCE_BYTES)
        path, _, query = raw_target.partition(b"?")
        body_sha256 = hashlib.sha256(body).hexdigest()
        message = signed_message(method, host, canonical_target(path, query), timestamp, nonce, body_sha256)
        return {
            HEADER_VERSION: AUTH_VERSION,
            HEADER_KEY: self.key.public_key_b64,
            HEADER_TIMESTAMP: timestamp,
            HEADER_NONCE: nonce,
            HEADER_SIGNATURE: b64encode(self.key.sign(message)),
            HEADER_BODY_SHA256: body_sha256,
        }

    def sign(self, request: httpx.Request) -> httpx.Request:
        """Add the ``X-Shoal-*`` headers to ``request`` (whose body must have been read)."""
        host = request.headers.get("Host") or request.url.netloc.decode("ascii")
        request.headers.update(self.headers_for(request.method, host, request.url.raw_path, request.content))
        return request

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        yield self.sign(request)

"""Kubo (the IPFS daemon) over its RPC API: a small async client, an input source and a publisher.

The RPC API is POST-only, has no authentication (bind it to 127.0.0.1) and reports errors as
HTTP 500 (or 400) with JSON ``{"Message", "Code", "Type"}``. ``KuboClient`` is the only code in
Shoal that talks to Kubo, and the only place its errors are translated:

    httpx.ConnectError                    → Unavailable  ("connection refused … is the daemon running?")
    httpx.TimeoutException                → Unavailable  ("did not answer within N s")
    other httpx transport errors          → Unavailable  ("connection broke during …")
    HTTP 404/405 without Kubo's JSON      → StorageError ("not a Kubo RPC endpoint")
    HTTP 200 without Kubo's JSON, or JSON of another shape → Unavailable ("… not Kubo's JSON")
    Message "…not found…", "no link named…", "not pinned" → NotFound
    Message "invalid path/cid…"           → InvalidSource
    "context deadline exceeded" on a lookup → NotFoundInTime ("… not found on the IPFS network within 30 s",
    retryable: it is this node's view of the network)
    anything else                         → StorageError with Kubo's message

Imports always pass Kubo's default settings explicitly (CIDv0, sha2-256, 256 KiB chunks, dag-pb
leaves, balanced layout, 174 links, HAMT fanout 256), so a daemon configured otherwise still
produces the CIDs ``storage.unixfs`` computes. Two settings the RPC cannot override decide when a
directory is sharded: ``Import.UnixFSHAMTDirectorySizeThreshold`` (256 KiB) and
``Import.UnixFSHAMTDirectorySizeEstimation`` ("links"); leave them at their defaults.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import urllib.parse
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import trio

from storage.base import parse_ipfs_source
from storage.errors import InvalidSource, NotFound, NotFoundInTime, StorageError, TooLarge, Unavailable
from storage.tarsafe import MAX_ENTRIES
from storage.tarstream import extract_tar
from storage.unixfs import CHUNK_SIZE, HAMT_FANOUT, MAX_LINKS, is_cid

log = logging.getLogger("shoal.storage")
T = TypeVar("T")

__all__ = [
    "DEFAULT_API",
    "DEFAULT_FIND_TIMEOUT",
    "KuboClient",
    "KuboInput",
    "KuboPublisher",
    "PathStat",
]

DEFAULT_API = "http://127.0.0.1:5001"
DEFAULT_FIND_TIMEOUT = 30.0  # seconds Kubo may search the network for a CID before we call it missing
PATIENCE = 20.0  # seconds in which a fetch or publish that found the daemon unavailable is tried again
CALL_TIMEOUT = 30.0  # seconds for a plain RPC call (id, pin/rm, swarm/connect) to answer
STALL_TIMEOUT = 60.0  # seconds a streaming transfer may go without a byte before it is abandoned
GC_TIMEOUT = 600.0  # seconds a repo gc may take: it answers only when done, and a big repo takes minutes
PROBLEM_TIMEOUT = 5.0  # seconds Kubo's RPC may take to say its version before it counts as down
READ_SIZE = 1 << 20

# `ipfs add` defaults, pinned so that a daemon's Import.* config cannot change the CIDs we get.
ADD_DEFAULTS: dict[str, str] = {
    "cid-version": "0",
    "hash": "sha2-256",
    "raw-leaves": "false",
    "chunker": f"size-{CHUNK_SIZE}",
    "trickle": "false",
    "inline": "false",
    "max-file-links": str(MAX_LINKS),
    "max-hamt-fanout": str(HAMT_FANOUT),
    "progress": "false",
    "wrap-with-directory": "false",
    "empty-dirs": "true",
}

_NO_SPACE = ("no space left on device", "disk quota exceeded")  # this node's repo is full: another node may do
_NOT_FOUND = ("not found", "no link named", "could not find", "does not exist", "not pinned", "no such file")
_INVALID = ("invalid path", "invalid cid", "failed to parse", "selected encoding not supported", "illegal base",
            "invalid ipfs path", "varint", "unknown multibase", "path must start with")


def _duration(seconds: float) -> str:
    """A Go duration string for Kubo's global ``timeout`` option."""
    return f"{max(seconds, 0.001):.3f}s"


@dataclass(frozen=True)
class PathStat:
    """``files/stat`` of an ``/ipfs/…`` path."""

    cid: str
    type: str  # "file", "directory", "symlink"
    size: int  # bytes of a file (0 for directories)
    cumulative_size: int  # bytes of every block of the DAG (an upper bound for the content)


class KuboClient:
    """An async client for one Kubo RPC endpoint (``http://127.0.0.1:5001``), over httpx; runs on trio.

    Args:
        api_url: the RPC endpoint (scheme, host, port). A multiaddr such as
            ``/ip4/127.0.0.1/tcp/5001`` is accepted too.
        call_timeout: seconds a plain call may take.
        stall_timeout: seconds a streaming transfer may go without receiving a byte.
        transport: an httpx transport (tests).
    """

    def __init__(self, api_url: str = DEFAULT_API, *, call_timeout: float = CALL_TIMEOUT,
                 stall_timeout: float = STALL_TIMEOUT, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.url = _http_url(api_url)
        self.call_timeout = call_timeout
        self.stall_timeout = stall_timeout
        self._http = httpx.AsyncClient(
            base_url=f"{self.url}/api/v0/", transport=transport,
            timeout=httpx.Timeout(call_timeout, read=stall_timeout, write=stall_timeout),
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> KuboClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- plumbing: every request goes through _stream, every Kubo error through _error_from_response

    @asynccontextmanager
    async def _stream(self, command: str, params: list[tuple[str, str]] | None = None, *,
                      content: AsyncIterator[bytes] | None = None, headers: dict[str, str] | None = None,
                      read_timeout: float | None = None) -> AsyncIterator[httpx.Response]:
        what = f"'{command}'"
        timeout = httpx.Timeout(self.call_timeout, read=read_timeout or self.stall_timeout, write=self.stall_timeout)
        try:
            async with self._http.stream("POST", command, params=params or [], content=content, headers=headers,
                                         timeout=timeout) as response:
                if response.status_code != 200:
                    body = await response.aread()
                    raise _error_from_response(self.url, command, response.status_code, body)
                yield response
        except httpx.ConnectError as exc:
            raise Unavailable(f"cannot reach Kubo RPC at {self.url}: {_reason(exc)} (is the daemon running?)") from exc
        except httpx.TimeoutException as exc:
            waited = read_timeout or self.stall_timeout
            raise Unavailable(f"Kubo RPC at {self.url} went silent for {waited:g} s during {what}") from exc
        except httpx.TransportError as exc:
            raise Unavailable(f"connection to Kubo RPC at {self.url} broke during {what}: {_reason(exc)}") from exc

    async def _call(self, command: str, params: list[tuple[str, str]] | None = None, *,
                    read_timeout: float | None = None, shape: Callable[[Any], Any] | None = None) -> Any:
        """Kubo's JSON answer (the last line of NDJSON), read by ``shape``: an answer that does not decode,
        or that ``shape`` cannot read, is ``Unavailable`` (something else answers in Kubo's place)."""
        async with self._stream(command, params, read_timeout=read_timeout or self.call_timeout) as response:
            body = await response.aread()
        try:
            try:
                out = json.loads(body) if body.strip() else None
            except ValueError:
                lines = [json.loads(line) for line in body.splitlines() if line.strip()]  # NDJSON
                out = lines[-1] if lines else None
            return shape(out) if shape else out
        except (ValueError, LookupError, TypeError, AttributeError) as exc:
            raise _not_kubo(self.url, command, body) from exc

    # -- node --------------------------------------------------------------------------------------

    async def id(self) -> dict[str, Any]:
        """``{"ID", "PublicKey", "Addresses", "AgentVersion", "Protocols"}`` of the daemon."""
        return await self._call("id")

    async def version(self) -> str:
        return await self._call("version", shape=lambda out: _text(out["Version"]))

    async def swarm_connect(self, multiaddr: str) -> None:
        """Connect to a peer (a full multiaddr ending in ``/p2p/<peer id>``)."""
        await self._call("swarm/connect", [("arg", multiaddr)])

    async def swarm_peers(self) -> list[str]:
        """Peer ids the daemon is connected to."""
        return await self._call("swarm/peers",
                                shape=lambda out: [_text(p["Peer"]) for p in (out or {}).get("Peers") or []])

    # -- content -----------------------------------------------------------------------------------

    async def add_bytes(self, data: bytes, *, pin: bool = True, only_hash: bool = False) -> str:
        """Add one file's content; return its CIDv0."""
        boundary = uuid.uuid4().hex

        async def body() -> AsyncIterator[bytes]:
            yield _part_header(boundary, "data", "application/octet-stream")
            yield data
            yield f"\r\n--{boundary}--\r\n".encode()

        entries = await self._add(body(), boundary, pin=pin, only_hash=only_hash)
        return entries[-1]["Hash"]

    async def add_path(self, path: Path, *, pin: bool = True, only_hash: bool = False) -> str:
        """Add a file or a directory (recursively, hidden files included, symlinks as symlinks); return its CIDv0.

        The multipart body is streamed from disk: parents before children, names sorted.
        """
        path = Path(path)
        parts = await trio.to_thread.run_sync(_walk, path, "d")
        boundary = uuid.uuid4().hex
        # A directory's add is silent: Kubo then names only its directories, once it has read every file.
        # Otherwise it answers a line per file while still reading them, and httpx reads no answer until
        # it has sent everything: past ~45,000 files both sides waited on full buffers until the 60 s
        # stall ended the add (a job's outputs may hold 50,000), and the job ran again elsewhere.
        silent = await trio.to_thread.run_sync(path.is_dir)
        entries = await self._add(_multipart(parts, boundary), boundary, pin=pin, only_hash=only_hash, silent=silent)
        roots = [e for e in entries if e.get("Name") == "d"]
        if not roots:
            raise Unavailable(f"Kubo's add of {path} ended without the root's CID (the daemon may have failed)")
        return roots[-1]["Hash"]

    async def _add(self, body: AsyncIterator[bytes], boundary: str, *, pin: bool, only_hash: bool,
                   silent: bool = False) -> list[dict]:
        params = [*ADD_DEFAULTS.items(), ("pin", str(pin).lower()), ("only-hash", str(only_hash).lower()),
                  ("silent", str(silent).lower())]
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
        entries = []
        async with self._stream("add", params, content=body, headers=headers) as response:
            async for line in response.aiter_lines():
                if line.strip():
                    entry = _add_entry(self.url, line)
                    if entry.get("Type") == "error":
                        raise _add_failed(str(entry.get("Message")))
                    if "Hash" in entry:
                        entries.append(entry)
        if not entries:
            raise Unavailable("Kubo's add returned no CID (the daemon may have failed mid-stream)")
        return entries

    async def stat(self, ipfs_path: str, *, find_timeout: float | None = None) -> PathStat:
        """``files/stat`` of ``/ipfs/CID[/path]``: resolves the path, fetching its root block if needed.

        Raises:
            NotFound: no such path, or nobody offered the block within ``find_timeout`` seconds.
        """
        params = [("arg", ipfs_path)]
        if find_timeout is not None:
            params.append(("timeout", _duration(find_timeout)))

        def shape(out: Any) -> PathStat:
            return PathStat(_text(out["Hash"]), _text(out["Type"]), int(out.get("Size") or 0),
                            int(out.get("CumulativeSize") or 0))

        try:
            return await self._call("files/stat", params, read_timeout=(find_timeout or 0) + self.call_timeout,
                                    shape=shape)
        except _DeadlineExceeded:
            raise NotFoundInTime(f"{ipfs_path.removeprefix('/ipfs/')} not found on the IPFS network within "
                           f"{find_timeout:g} s") from None

    async def iter_cat(self, ipfs_path: str) -> AsyncGenerator[bytes, None]:
        """Stream a file's bytes."""
        async with self._stream("cat", [("arg", ipfs_path), ("progress", "false")]) as response:
            async for chunk in response.aiter_bytes(READ_SIZE):
                yield chunk

    async def iter_get(self, ipfs_path: str) -> AsyncGenerator[bytes, None]:
        """Stream ``get`` of a path as a tar (top entry named after the path's last component)."""
        params = [("arg", ipfs_path), ("archive", "true"), ("compress", "false"), ("progress", "false")]
        async with self._stream("get", params) as response:
            async for chunk in response.aiter_bytes(READ_SIZE):
                yield chunk

    async def pin_add(self, cid: str) -> None:
        await self._call("pin/add", [("arg", cid), ("recursive", "true"), ("progress", "false")],
                         read_timeout=self.stall_timeout)

    async def pin_rm(self, cid: str) -> None:
        """Unpin (recursive). Raises ``NotFound`` if it is not pinned."""
        await self._call("pin/rm", [("arg", cid), ("recursive", "true")])

    async def is_pinned(self, cid: str) -> bool:
        """Whether ``cid`` is pinned recursively (directly, not as part of another pin). Never touches the network."""
        try:
            return await self._call("pin/ls", [("arg", cid), ("type", "recursive"), ("offline", "true")],
                                    shape=lambda out: cid in out["Keys"])
        except NotFound:
            return False

    async def repo_gc(self, *, timeout: float | None = None) -> None:
        """Delete unpinned blocks now (Kubo otherwise does it only with ``--enable-gc``).

        ``timeout``: seconds the collection may take (it says nothing until done); default the stall timeout.
        """
        async with self._stream("repo/gc", [("quiet", "true")], read_timeout=timeout) as response:
            await response.aread()


class _DeadlineExceeded(StorageError):
    """Kubo's own ``timeout`` option fired ("context deadline exceeded"); callers say what it means."""


def _reason(exc: Exception) -> str:
    text = str(exc) or type(exc).__name__
    return "connection refused" if "refused" in text.lower() else text


def _error_from_response(url: str, command: str, status: int, body: bytes) -> StorageError:
    try:
        message = str(json.loads(body)["Message"])
    except (ValueError, KeyError, TypeError):
        if status in (404, 405):
            return StorageError(f"{url} is not a Kubo RPC endpoint (HTTP {status} for /api/v0/{command})")
        text = body.decode("utf-8", "replace").strip()[:200]
        if status >= 500:
            return Unavailable(f"Kubo RPC at {url} failed on '{command}' (HTTP {status}): {text}")
        return StorageError(f"Kubo RPC at {url} refused '{command}' (HTTP {status}): {text}")
    low = message.lower()
    if "context deadline exceeded" in low:
        return _DeadlineExceeded(f"Kubo gave up on '{command}': {message}")
    if any(s in low for s in _NOT_FOUND):
        return NotFound(message)
    if any(s in low for s in _INVALID):
        return InvalidSource(message)
    if any(s in low for s in _NO_SPACE):
        return Unavailable(f"Kubo '{command}' failed, its repo is out of space: {message}")
    return StorageError(f"Kubo '{command}' failed: {message}")


def _not_kubo(url: str, command: str, body: bytes | str) -> Unavailable:
    text = (body.decode("utf-8", "replace") if isinstance(body, bytes) else body).strip()[:200]
    return Unavailable(f"Kubo RPC at {url} answered '{command}' with something that is not Kubo's JSON: {text}")


def _text(value: object) -> str:
    """``value``, a string in Kubo's answer; TypeError (the answer is not Kubo's) otherwise."""
    if not isinstance(value, str):
        raise TypeError(f"{value!r} is not a string")
    return value


def _add_entry(url: str, line: str) -> dict[str, Any]:
    """One line of ``add``'s answer: a JSON object whose ``Hash``, when there is one, is a CID."""
    try:
        entry = json.loads(line)
    except ValueError:
        entry = None
    if not isinstance(entry, dict) or ("Hash" in entry and not (isinstance(entry["Hash"], str)
                                                                and is_cid(entry["Hash"]))):
        raise _not_kubo(url, "add", line)
    return entry


def _add_failed(message: str) -> StorageError:
    if any(s in message.lower() for s in _NO_SPACE):
        return Unavailable(f"Kubo add failed, its repo is out of space: {message}")
    return StorageError(f"Kubo add failed: {message}")


def _http_url(api: str) -> str:
    """``http://host:port`` from a URL or a ``/ip4|dns/…/tcp/PORT`` multiaddr (as in $IPFS_PATH/api)."""
    if api.startswith("/"):
        parts = api.strip("/").split("/")
        if len(parts) >= 4 and parts[0] in ("ip4", "ip6", "dns", "dns4", "dns6") and parts[2] == "tcp":
            host = f"[{parts[1]}]" if parts[0] == "ip6" else parts[1]
            return f"http://{host}:{parts[3]}"
        raise ValueError(f"cannot use {api!r} as a Kubo RPC address")
    return api.rstrip("/")


# -- multipart bodies for `add` --------------------------------------------------------------------


@dataclass(frozen=True)
class _Part:
    name: str  # path inside the upload, "d/sub/file"
    kind: str  # "dir", "file", "symlink"
    path: Path
    size: int = 0
    target: str = ""


def _walk(path: Path, name: str) -> list[_Part]:
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        return [_Part(name, "symlink", path, target=os.readlink(path))]
    if stat.S_ISREG(st.st_mode):
        return [_Part(name, "file", path, st.st_size)]
    if stat.S_ISDIR(st.st_mode):
        out = [_Part(name, "dir", path)]
        for child in sorted(os.listdir(path), key=os.fsencode):
            out.extend(_walk(path / child, f"{name}/{child}"))
        return out
    raise InvalidSource(f"{path} is neither a file, a directory nor a symlink; it cannot be stored")


def _part_header(boundary: str, name: str, content_type: str) -> bytes:
    # Kubo url-unescapes the filename (QueryUnescape: '+' would become ' '), so escape everything.
    filename = urllib.parse.quote(name, safe="")
    return (f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: {content_type}\r\n\r\n").encode()


_TYPES = {"dir": "application/x-directory", "file": "application/octet-stream", "symlink": "application/symlink"}
SMALL_FILE = 64 * 1024  # files up to this size are read in batches, many per worker-thread call
BATCH_BYTES = 1 << 20  # bytes of small parts rendered per batch (and per chunk sent)


def _render(parts: list[_Part], boundary: str) -> bytes:
    """Several small parts, each followed by its CRLF (the next delimiter's leading CRLF)."""
    out = []
    for part in parts:
        out.append(_part_header(boundary, part.name, _TYPES[part.kind]))
        if part.kind == "symlink":
            out.append(os.fsencode(part.target))
        elif part.kind == "file":
            with open(part.path, "rb") as f:
                data = f.read(part.size + 1)
            if len(data) != part.size:
                raise StorageError(f"{part.path} changed size while being added ({part.size} → {len(data)} bytes)")
            out.append(data)
        out.append(b"\r\n")
    return b"".join(out)


async def _multipart(parts: list[_Part], boundary: str) -> AsyncIterator[bytes]:
    """The multipart/form-data body Kubo's ``add`` reads: parents before children, one part per entry.

    Small entries are rendered in batches in a worker thread (one thread hop per ~1 MiB, not per
    file); large files are streamed in 1 MiB reads.
    """
    i = 0
    while i < len(parts):
        batch, batched = [], 0
        while i < len(parts) and batched < BATCH_BYTES and (parts[i].kind != "file" or parts[i].size <= SMALL_FILE):
            batch.append(parts[i])
            batched += parts[i].size + 200
            i += 1
        if batch:
            yield await trio.to_thread.run_sync(_render, batch, boundary)
            continue
        part = parts[i]
        i += 1
        yield _part_header(boundary, part.name, _TYPES[part.kind])
        sent = 0
        async with await trio.open_file(part.path, "rb") as f:
            while chunk := await f.read(READ_SIZE):
                sent += len(chunk)
                yield chunk
        if sent != part.size:
            raise StorageError(f"{part.path} changed size while being added ({part.size} → {sent} bytes)")
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


# -- InputSource and Publisher ---------------------------------------------------------------------


async def _patiently(call: Callable[[], Awaitable[T]]) -> T:
    """``call()``, tried again while the daemon is ``Unavailable`` (restarting, refusing connections, failing
    with HTTP 5xx), backing off from 0.5 s, as long as a try may start within PATIENCE of the first. A 2 s
    restart of Kubo once failed jobs for good: their node reported the error at once, was offered the job
    again at once and failed it again, and a second error from one node ends its turn. (A stall, which
    ends a try only after ``stall_timeout``, is past the patience by then: it is reported.)"""
    give_up, delay = trio.current_time() + PATIENCE, 0.5
    while True:
        try:
            return await call()
        except Unavailable as exc:
            if trio.current_time() + delay > give_up:
                raise
            log.info("Kubo unavailable (%s): trying again in %g s", exc, delay)
            await trio.sleep(delay)
            delay = min(delay * 2, 5.0)


class KuboInput:
    """Fetches ``ipfs://CID[/path]``, ``/ipfs/CID[/path]`` and bare ``CID[/path]`` through a Kubo daemon.

    The daemon may have the content or get it from its peers (bitswap). Looking the path up may take
    ``find_timeout`` seconds; after that the input is ``NotFound`` with a reason saying so. Once found,
    the transfer may go ``stall_timeout`` (the client's) without a byte before it is ``Unavailable``.
    """

    name = "ipfs"

    def __init__(self, client: KuboClient, *, find_timeout: float = DEFAULT_FIND_TIMEOUT) -> None:
        self.client = client
        self.find_timeout = find_timeout

    def handles(self, source: str) -> bool:
        if source.startswith(("ipfs://", "/ipfs/")):
            return True
        return is_cid(source.partition("/")[0])

    async def fetch(self, source: str, dest: Path, *, max_bytes: int, max_entries: int = MAX_ENTRIES) -> None:
        await _patiently(lambda: self._fetch(source, dest, max_bytes=max_bytes, max_entries=max_entries))

    async def _fetch(self, source: str, dest: Path, *, max_bytes: int, max_entries: int) -> None:
        cid, subpath = parse_ipfs_source(source)
        ipfs_path = f"/ipfs/{cid}" + (f"/{subpath}" if subpath else "")
        try:
            info = await self.client.stat(ipfs_path, find_timeout=self.find_timeout)
            if info.type == "file":
                if info.size > max_bytes:
                    raise TooLarge(f"{info.size} bytes is more than the limit of {max_bytes}", limit=max_bytes)
                await _save_stream(self.client.iter_cat(ipfs_path), Path(dest), info.size, max_bytes)
            else:
                await extract_tar(self.client.iter_get(ipfs_path), Path(dest), max_bytes=max_bytes,
                                  max_entries=max_entries)
        except StorageError as exc:
            exc.source = exc.source or source
            raise


async def _save_stream(chunks: AsyncGenerator[bytes, None], dest: Path, expected: int, max_bytes: int) -> None:
    """Write a byte stream to a new file at ``dest``; it must be exactly ``expected`` bytes."""
    received = 0
    try:
        async with await trio.open_file(dest, "xb") as f:
            async for chunk in chunks:
                received += len(chunk)
                if received > max_bytes:
                    raise TooLarge(f"more than the limit of {max_bytes} bytes", limit=max_bytes)
                await f.write(chunk)
        if received != expected:  # the connection's doing, not the content's: another node may fare better
            raise Unavailable(f"transfer ended after {received} of {expected} bytes")
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lambda: dest.unlink(missing_ok=True))
        raise
    finally:
        with trio.CancelScope(shield=True):
            await chunks.aclose()  # ends the HTTP stream now, not when the generator is collected


class KuboPublisher:
    """Adds result directories to Kubo and pins them; serves them back as ``get`` tar streams.

    ``export(cid, fetch=True)`` also serves content this daemon does not keep, fetched from its peers
    (found within ``find_timeout`` seconds or ``NotFound``), so a node can return results another
    node published.
    """

    name = "ipfs"

    def __init__(self, client: KuboClient, *, find_timeout: float = DEFAULT_FIND_TIMEOUT) -> None:
        self.client = client
        self.find_timeout = find_timeout

    async def publish(self, directory: Path) -> str:
        return await _patiently(lambda: self.client.add_path(Path(directory), pin=True))

    async def add_bytes(self, data: bytes) -> str:
        return await self.client.add_bytes(data, pin=True)

    async def has(self, cid: str) -> bool:
        return await self.client.is_pinned(cid)

    async def export(self, cid: str, *, fetch: bool = False) -> AsyncIterator[bytes]:
        if not await self.has(cid):
            if not fetch:
                raise NotFound(f"{cid} is not kept by this node's Kubo", source=cid)
            await self.client.stat(f"/ipfs/{cid}", find_timeout=self.find_timeout)  # NotFound if nobody has it
        return self.client.iter_get(cid)

    async def remove(self, cid: str) -> None:
        with suppress(NotFound):
            await self.client.pin_rm(cid)

    async def collect_garbage(self) -> None:
        await self.client.repo_gc(timeout=GC_TIMEOUT)

    async def problem(self) -> str | None:
        with trio.move_on_after(PROBLEM_TIMEOUT):
            try:
                await self.client.version()
            except StorageError as e:
                return str(e)
            return None
        return f"Kubo RPC at {self.client.url} did not answer within {PROBLEM_TIMEOUT:g} s"

"""Job inputs from ``http://`` and ``https://`` URLs: streamed to disk under a size limit.

Translation of httpx errors happens here and nowhere else:

    HTTP 404 / 410                  → NotFound
    HTTP 401 / 403, other 4xx        → StorageError (not retryable: asking again will not help)
    HTTP 5xx, 429                    → Unavailable
    Content-Length or body too big  → TooLarge (the download stops at the limit)
    connect/read timeouts, resets   → Unavailable

By default URLs whose host is (or resolves to) a loopback, private or link-local address are
refused, so a job cannot make a compute node read its own Kubo RPC, its API or the cloud
metadata service. Redirects are followed by hand (at most ``MAX_REDIRECTS``) and each hop is
checked the same way. Devstacks and tests pass ``allow_private=True``.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import httpx
import trio

from storage.errors import InvalidSource, NotFound, StorageError, TooLarge, Unavailable

__all__ = ["HttpInput"]

CONNECT_TIMEOUT = 10.0
STALL_TIMEOUT = 30.0  # seconds without a byte from the server before the download is abandoned
MAX_REDIRECTS = 5
READ_SIZE = 1 << 20


class HttpInput:
    """Downloads a URL to a file.

    Args:
        allow_private: allow loopback/private/link-local hosts (devstack, tests).
        connect_timeout, stall_timeout: seconds to connect; seconds without a byte before giving up.
        transport: an httpx transport (tests).
    """

    name = "http"

    def __init__(self, *, allow_private: bool = False, connect_timeout: float = CONNECT_TIMEOUT,
                 stall_timeout: float = STALL_TIMEOUT, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.allow_private = allow_private
        self.timeout = httpx.Timeout(stall_timeout, connect=connect_timeout)
        self.transport = transport

    def handles(self, source: str) -> bool:
        return source.lower().startswith(("http://", "https://"))

    async def fetch(self, source: str, dest: Path, *, max_bytes: int) -> None:
        dest = Path(dest)
        try:
            async with httpx.AsyncClient(timeout=self.timeout, transport=self.transport,
                                         follow_redirects=False) as client:
                await self._download(client, source, dest, max_bytes)
        except httpx.ConnectError as exc:
            raise Unavailable(f"cannot connect: {exc or type(exc).__name__}", source=source) from exc
        except httpx.TimeoutException as exc:
            raise Unavailable(f"the server went silent for more than {self.timeout.read:g} s", source=source) from exc
        except httpx.InvalidURL as exc:
            raise InvalidSource(f"not a usable URL: {exc}", source=source) from exc
        except httpx.TransportError as exc:
            raise Unavailable(f"the download broke: {exc or type(exc).__name__}", source=source) from exc
        except StorageError as exc:
            exc.source = exc.source or source
            raise

    async def _download(self, client: httpx.AsyncClient, url: str, dest: Path, max_bytes: int) -> None:
        for _ in range(MAX_REDIRECTS + 1):
            await self._check_host(url)
            async with client.stream("GET", url) as response:
                if response.is_redirect and "location" in response.headers:
                    url = str(response.url.join(response.headers["location"]))
                    continue
                _check_status(response)
                length = response.headers.get("content-length")
                if length and length.isdigit() and int(length) > max_bytes:
                    raise TooLarge(f"{length} bytes is more than the limit of {max_bytes}", limit=max_bytes)
                await _save(response, dest, max_bytes)
                return
        raise StorageError(f"more than {MAX_REDIRECTS} redirects")

    async def _check_host(self, url: str) -> None:
        parsed = httpx.URL(url)
        if parsed.scheme not in ("http", "https") or not parsed.host:
            raise InvalidSource(f"{url!r} is not an http(s) URL with a host")
        if self.allow_private:
            return
        try:
            infos = await trio.socket.getaddrinfo(parsed.host, parsed.port or 443, type=trio.socket.SOCK_STREAM)
        except OSError as exc:
            raise Unavailable(f"cannot resolve {parsed.host}: {exc}") from exc
        for info in infos:
            address = ipaddress.ip_address(info[4][0].split("%")[0])
            if not address.is_global:
                raise InvalidSource(f"{parsed.host} is a local or private address ({address}); "
                                    "inputs must come from public hosts")


def _check_status(response: httpx.Response) -> None:
    status = response.status_code
    if status < 300:
        return
    if status in (404, 410):
        raise NotFound(f"the server answered HTTP {status} ({response.reason_phrase})")
    if status == 429 or status >= 500:
        raise Unavailable(f"the server answered HTTP {status} ({response.reason_phrase})")
    raise StorageError(f"the server refused the download: HTTP {status} ({response.reason_phrase})")


async def _save(response: httpx.Response, dest: Path, max_bytes: int) -> None:
    received = 0
    try:
        async with await trio.open_file(dest, "xb") as f:
            async for chunk in response.aiter_bytes(READ_SIZE):
                received += len(chunk)
                if received > max_bytes:
                    raise TooLarge(f"more than the limit of {max_bytes} bytes", limit=max_bytes)
                await f.write(chunk)
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lambda: os.path.lexists(dest) and os.unlink(dest))
        raise

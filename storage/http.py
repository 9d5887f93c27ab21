"""Job inputs from ``http://`` and ``https://`` URLs: streamed to disk under a size limit.

Translation of httpx errors happens here and nowhere else:

    HTTP 404 / 410                  → NotFound
    HTTP 401 / 403, other 4xx        → StorageError (not retryable: asking again will not help)
    HTTP 5xx, 429                    → Unavailable
    Content-Length or body too big  → TooLarge (the download stops at the limit)
    connect/read timeouts, resets   → Unavailable

By default only public addresses are fetched from, so a job cannot make a compute node read its
own Kubo RPC, its API or the cloud metadata service. A host name is resolved once, every address
it resolves to is checked (``is_public``), and the connection goes to a checked address (the URL's
host becomes that address; the ``Host`` header and TLS SNI and certificate check keep the name), so
a name that resolves to something else the second time ("DNS rebinding") gets nowhere. Numeric
hosts are read as the C resolver reads them (``2130706433``, ``0x7f.1``, ``127.1``). Redirects are
followed by hand (at most ``MAX_REDIRECTS``) and each hop is resolved and checked the same way.
Proxies from the environment are not used (they would resolve the name themselves). Devstacks and
tests pass ``allow_private=True``, which skips the check but still connects to the resolved address.
"""

from __future__ import annotations

import ipaddress
import os
import re
from pathlib import Path

import httpx
import trio

from storage.errors import InvalidSource, NotFound, StorageError, TooLarge, Unavailable
from storage.tarsafe import MAX_ENTRIES

__all__ = ["HttpInput", "is_public", "literal_address"]

CONNECT_TIMEOUT = 10.0
STALL_TIMEOUT = 30.0  # seconds without a byte from the server before the download is abandoned
MAX_REDIRECTS = 5
MAX_ADDRESSES = 4  # resolved addresses tried in turn when a connection is refused
READ_SIZE = 1 << 20

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
_NUMBER = re.compile(r"(0x[0-9a-f]*|[0-9]+)", re.IGNORECASE)


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

    async def fetch(self, source: str, dest: Path, *, max_bytes: int, max_entries: int = MAX_ENTRIES) -> None:
        """``max_entries`` concerns none: a URL becomes one file, with nothing below it."""
        dest = Path(dest)
        try:
            # No connection is reused: one made for one name (SNI, certificate) never carries another's request.
            async with httpx.AsyncClient(timeout=self.timeout, transport=self.transport, follow_redirects=False,
                                         trust_env=False, limits=httpx.Limits(max_keepalive_connections=0)) as client:
                await self._download(client, httpx.URL(source), dest, max_bytes)
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

    async def _download(self, client: httpx.AsyncClient, url: httpx.URL, dest: Path, max_bytes: int) -> None:
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._send(client, url)
            try:
                if response.is_redirect:
                    url = url.join(response.headers["location"])  # relative to the URL, not the pinned address
                    continue
                _check_status(response)
                length = response.headers.get("content-length")
                if length and length.isdigit() and int(length) > max_bytes:
                    raise TooLarge(f"{length} bytes is more than the limit of {max_bytes}", limit=max_bytes)
                await _save(response, dest, max_bytes)
                return
            finally:
                await response.aclose()
        raise StorageError(f"more than {MAX_REDIRECTS} redirects")

    async def _send(self, client: httpx.AsyncClient, url: httpx.URL) -> httpx.Response:
        """GET ``url`` from one of the addresses its host was checked to have, never from another."""
        addresses = await self._addresses(url)
        for i, address in enumerate(addresses):
            # the body as the server sends it, never inflated (as curl saves it): a 5 KB gzip body once
            # inflated to 3 GiB in the node's memory, blocking it for 24 s, before a size was checked
            request = client.build_request("GET", url.copy_with(host=str(address)),
                                           headers={"Host": url.netloc.decode("ascii"), "Accept-Encoding": "identity"},
                                           extensions=_tls_name(url))
            try:
                return await client.send(request, stream=True)
            except httpx.ConnectError:
                if i == len(addresses) - 1:
                    raise
        raise AssertionError("unreachable: _addresses returns at least one address")

    async def _addresses(self, url: httpx.URL) -> list[IPAddress]:
        """Resolve the URL's host once; refuse it unless every address is public (or private ones are allowed)."""
        if url.scheme not in ("http", "https") or not url.host:
            raise InvalidSource(f"{str(url)!r} is not an http(s) URL with a host")
        host = url.raw_host.decode("ascii")
        try:
            literal = literal_address(host)
        except ValueError as exc:
            raise InvalidSource(f"{host} is not a valid address: {exc}") from None
        addresses = [literal] if literal is not None else await _resolve(host, url.port or 443)
        if not self.allow_private:
            for address in addresses:
                if not is_public(address):
                    raise InvalidSource(f"{host} is a local or private address ({address}); "
                                        "inputs must come from public hosts")
        return addresses[:MAX_ADDRESSES]


async def _resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = await trio.socket.getaddrinfo(host, port, type=trio.socket.SOCK_STREAM)
    except OSError as exc:
        raise Unavailable(f"cannot resolve {host}: {exc}") from exc
    addresses: list[IPAddress] = []
    for info in infos:
        text = info[4][0]
        if isinstance(text, str) and info[0] in (trio.socket.AF_INET, trio.socket.AF_INET6):
            address = ipaddress.ip_address(text)
            if address not in addresses:
                addresses.append(address)
    if not addresses:
        raise Unavailable(f"cannot resolve {host}: no IPv4 or IPv6 address")
    return addresses


def _tls_name(url: httpx.URL) -> dict[str, str]:
    """The name TLS sends (SNI) and checks the certificate against: the URL's host, not the pinned address."""
    host = url.raw_host.decode("ascii")
    if url.scheme != "https" or literal_address(host) is not None:
        return {}
    return {"sni_hostname": host}


def literal_address(host: str) -> IPAddress | None:
    """The address a URL host names without DNS, or None when it is a name.

    IPv6 (with or without brackets; ``%25``-encoded zone ids kept), and IPv4 in every form the C
    resolver (``inet_aton``) accepts: ``127.0.0.1``, ``2130706433``, ``0177.0.0.1``, ``0x7f.1``,
    ``127.1``. A host whose last label is a number must be such an address (``ValueError``
    otherwise), as URL parsers treat it.
    """
    host = host.removeprefix("[").removesuffix("]")
    if ":" in host:
        return ipaddress.IPv6Address(host.replace("%25", "%"))
    labels = host.removesuffix(".").split(".")
    if not _NUMBER.fullmatch(labels[-1]):
        return None
    if len(labels) > 4 or not all(_NUMBER.fullmatch(label) for label in labels):
        raise ValueError(f"{host!r} ends in a number but is not an IPv4 address")
    numbers = [_aton_number(label) for label in labels]
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise ValueError(f"{host!r} has a part out of range")
    value = 0
    for n in numbers[:-1]:
        value = value << 8 | n
    value = value << 8 * (5 - len(numbers)) | numbers[-1]
    return ipaddress.IPv4Address(value)


def _aton_number(label: str) -> int:
    if label[:2].lower() == "0x":
        return int(label[2:] or "0", 16)
    if len(label) > 1 and label.startswith("0"):
        return int(label, 8)  # ValueError on 8 or 9
    return int(label)


def is_public(address: IPAddress) -> bool:
    """True only for a globally reachable unicast address.

    Refused: loopback, private and unique-local (fc00::/7), link-local, 0.0.0.0/8 and ``::``,
    multicast, reserved (240/4, broadcast, NAT64 and the IPv4-compatible ::/96), shared (100.64/10),
    documentation and benchmarking ranges, IPv4-mapped IPv6 (``::ffff:127.0.0.1``), and 6to4
    (2002::/16) around a non-public IPv4 address, IPv6 site-local (fec0::/10, deprecated), and the IETF's
    special-purpose 192.0.0.0/24 and 6to4 relay anycast 192.88.99.0/24 (some of which Python counts as global).
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id or address.is_site_local:
            return False
        for embedded in (address.ipv4_mapped, address.sixtofour):
            if embedded is not None and not is_public(embedded):
                return False
    elif any(address in network for network in _SPECIAL_IPV4):
        return False
    return address.is_global and not (address.is_multicast or address.is_reserved or address.is_unspecified
                                      or address.is_loopback or address.is_link_local or address.is_private)


_SPECIAL_IPV4 = (ipaddress.IPv4Network("192.0.0.0/24"), ipaddress.IPv4Network("192.88.99.0/24"))


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
            async for chunk in response.aiter_raw(READ_SIZE):
                received += len(chunk)
                if received > max_bytes:
                    raise TooLarge(f"more than the limit of {max_bytes} bytes", limit=max_bytes)
                await f.write(chunk)
    except BaseException:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(lambda: os.path.lexists(dest) and os.unlink(dest))
        raise

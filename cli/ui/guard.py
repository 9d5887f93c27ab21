"""Which browser requests the dashboard's proxy accepts: the decisions, apart from any I/O.

The proxy holds the user's key, so any page the browser shows could try to use it. It accepts:

- only requests whose ``Host`` names the proxy itself (its address and port: ``127.a.b.c:PORT``, and
  ``localhost:PORT`` when that address is 127.0.0.1), so a DNS-rebinding page (``evil.example`` resolved to
  127.0.0.1) is refused even for the page;
- the page to anyone: it holds no secret. The session token is in the address ``shoal ui`` prints, in its
  fragment (``/#key=TOKEN``), which a browser never sends to any server; the page keeps it in its own
  origin's storage. Never in a cookie: a browser sends a cookie for 127.0.0.1 to every port of
  127.0.0.1, so to any other local server the tab visits (another user's too);
- on ``/api`` and ``/ui/live``, only requests carrying the per-session token (as a header; on
  ``/ui/live`` as a query parameter, sent with no referrer): this also keeps other origins from
  *reading* through the proxy;
- for a state-changing method (anything but GET and HEAD), only with an ``Origin`` header equal to
  the proxy's own origin; a cross-origin ``Origin`` or ``Sec-Fetch-Site: cross-site`` is refused on
  every method.
"""

from __future__ import annotations

import hmac
import re
from dataclasses import dataclass

TOKEN_HEADER = "x-shoal-ui-token"
TOKEN_PARAM = "token"  # EventSource cannot send headers: /ui/live takes the token as a query parameter
KEY_PARAM = "key"  # the address shoal ui prints: /#key=TOKEN (a fragment: it reaches no server)
SAFE_METHODS = frozenset({"GET", "HEAD"})
LOOPBACK = "127.0.0.1"

# What /api/... may reach upstream: the node's v1 routes and its unsigned health and metrics.
_UPSTREAM_PATH = re.compile(r"^/(v1/[A-Za-z0-9._~-]+(/[A-Za-z0-9._~-]+)*|metrics|healthz|readyz)$")


@dataclass(frozen=True)
class Refusal:
    status: int
    message: str


def own_hosts(address: str, port: int) -> frozenset[str]:
    """The ``Host`` values (lower case) the proxy on ``address:port`` answers to."""
    names = (address, "localhost") if address == LOOPBACK else (address,)
    return frozenset(f"{name}:{port}" for name in names)


def check_host(host: str | None, address: str, port: int) -> Refusal | None:
    """Refuse a request not addressed to the proxy by its own name (DNS rebinding)."""
    if (host or "").lower() not in own_hosts(address, port):
        return Refusal(403, f"this dashboard answers only at http://{address}:{port} (Host {host!r} refused)")
    return None


def check_caller(method: str, host: str, origin: str | None, fetch_site: str | None, token: str | None,
                 session_token: str) -> Refusal | None:
    """Refuse an API request that does not come from the proxy's own page (see the module docstring).

    ``host`` has passed ``check_host``; ``origin`` and ``fetch_site`` are the browser's ``Origin`` and
    ``Sec-Fetch-Site`` headers (None when absent), ``token`` the one the request carries.
    """
    own_origin = f"http://{host.lower()}"
    if origin is not None and origin.lower() != own_origin:
        return Refusal(403, f"requests from {origin} are refused: only the dashboard's own page may call it")
    if fetch_site is not None and fetch_site.lower() == "cross-site":
        return Refusal(403, "cross-site requests are refused: only the dashboard's own page may call it")
    if method.upper() not in SAFE_METHODS and origin is None:
        return Refusal(403, f"a {method.upper()} needs the dashboard's Origin header")
    if not token or not hmac.compare_digest(token.encode(), session_token.encode()):
        return Refusal(403, "missing or wrong dashboard key: open the address shoal ui printed (it carries the key)")
    return None


def upstream_path(path: str) -> str | None:
    """The node's path for the proxy path ``/api/REST`` (``/v1/...``, ``/metrics``, ...), or None if not allowed."""
    if not path.startswith("/api/"):
        return None
    rest = path[len("/api"):]
    # fullmatch: a regex's $ also matches before a final newline (/v1/jobs%0a passed, and the proxy failed on it)
    if not _UPSTREAM_PATH.fullmatch(rest) or any(part in (".", "..") for part in rest.split("/")):
        return None
    return rest

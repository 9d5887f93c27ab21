"""Who may use this node's API: the authorized-keys file, route capabilities, and the decision.

A node started with ``--authorized-keys FILE`` lets in only the client keys listed there. One
key per line, as ``shoal key show`` prints it, optionally followed by the capabilities it gets
(separated by spaces or commas); ``#`` starts a comment::

    # alice: everything
    q1V3...Zw8=
    # the CI: submit and follow its own jobs, nothing else
    Hk2f...c0A= submit,read

A key listed with no capabilities gets all four, as a key in an SSH ``authorized_keys`` file is
a full user unless restricted; list them to restrict it. The capabilities (``capability_for``):

- ``submit``: submit jobs and sweeps, upload working directories, retry a sweep;
- ``read``:   list, describe, follow and download one's own jobs and sweeps (and those shared
  with the key), and share one's own (one can pass on only what one has);
- ``cancel``: cancel one's own jobs and sweeps;
- ``admin``:  the node and network routes (``/v1/node``, ``/v1/peers``, ``/v1/nodes``).

Every key sees only its own jobs whatever its capabilities; sharing (``shoal share``) is the
one way to let another key read a job or sweep. Without a file the API is open to any key,
which ``exposure_problem`` allows only on loopback (or with an explicit ``--open-api``).

The decision (``authorize``) and the parsing are pure; ``AuthorizedKeys`` is the file on disk,
re-read when its modification time, size or inode change (one ``stat`` per request).
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from shoal._auth import b64encode, parse_public_key

log = logging.getLogger("shoal.api")

Capability = Literal["submit", "read", "cancel", "admin"]
CAPABILITIES: tuple[Capability, ...] = ("submit", "read", "cancel", "admin")
ALL: frozenset[Capability] = frozenset(CAPABILITIES)

Table = Mapping[bytes, frozenset[Capability]]
"""Raw 32-byte public key → its capabilities."""

MAX_FILE_BYTES = 1 << 20  # an authorized-keys file larger than this is refused, not read into memory

_SUBMIT_PATHS = re.compile(r"^/v1/(jobs|sweeps|contexts)/?$|^/v1/sweeps/[^/]+/retry/?$")
_CANCEL_PATHS = re.compile(r"^/v1/(jobs|sweeps)/[^/]+/cancel/?$")
_ADMIN_PATHS = re.compile(r"^/v1/(node|peers|nodes)/?$")


def capability_for(method: str, path: str) -> Capability:
    """The capability a request needs, from its method and path alone (before routing).

    Whatever is not a submission, a cancellation or a node route needs ``read``: an unknown
    path then answers 404 to a key that may read, and 403 to one that may not.
    """
    if _ADMIN_PATHS.match(path):
        return "admin"
    if method.upper() == "POST":
        if _SUBMIT_PATHS.match(path):
            return "submit"
        if _CANCEL_PATHS.match(path):
            return "cancel"
    return "read"


def authorize(public_key: bytes, capability: Capability, table: Table | None) -> str | None:
    """None when the key may make a request that needs ``capability``; else why not (a 403's message).

    ``table`` None: the API is open (no authorized-keys file), every key may do everything.
    """
    if table is None:
        return None
    granted = table.get(public_key)
    if granted is None:
        return f"client {b64encode(public_key)} is not authorized on this node"
    if capability not in granted:
        have = ", ".join(c for c in CAPABILITIES if c in granted) or "none"
        return (f"client {b64encode(public_key)} lacks the '{capability}' capability on this node "
                f"(it has: {have})")
    return None


def parse_authorized_keys(text: str) -> tuple[dict[bytes, frozenset[Capability]], list[str]]:
    """The table, and one message per line that could not be used (``line N: why``).

    A bad line grants nothing; the lines around it still count. A key listed twice gets the
    union of its lines' capabilities.
    """
    table: dict[bytes, frozenset[Capability]] = {}
    problems: list[str] = []
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split("#", 1)[0].replace(",", " ").split()
        if not words:
            continue
        try:
            key = parse_public_key(words[0])
        except ValueError as e:
            problems.append(f"line {number}: {e}")
            continue
        unknown = [w for w in words[1:] if w not in CAPABILITIES]
        if unknown:
            problems.append(f"line {number}: unknown capability {unknown[0]!r} "
                            f"(capabilities: {', '.join(CAPABILITIES)})")
            continue
        granted: frozenset[Capability] = frozenset(words[1:]) if words[1:] else ALL  # type: ignore[arg-type]
        table[key] = table.get(key, frozenset()) | granted
    return table, problems


def is_loopback(host: str) -> bool:
    """Whether an API bound to ``host`` is reachable from this machine only."""
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name other than localhost, or "" / "0.0.0.0"-like wildcards: assume reachable


def exposure_problem(api_host: str, authorized_keys: Path | None, open_api: bool) -> str | None:
    """Why a node must not start with this API configuration (one line), or None.

    An API reachable from other machines takes any key unless a file says whose; so such a
    node starts only with ``--authorized-keys`` or with the explicit choice ``--open-api``.
    """
    if authorized_keys is not None and open_api:
        return "--authorized-keys and --open-api contradict each other: give one of them"
    if authorized_keys is not None or open_api or is_loopback(api_host):
        return None
    return (f"the API would listen on {api_host or 'every interface'}, reachable from other machines, and let "
            "in any client key: give --authorized-keys FILE (one key per line, see 'shoal key show') or, "
            "to let anyone who reaches it run jobs, --open-api")


def read_authorized_keys(path: Path) -> tuple[dict[bytes, frozenset[Capability]], list[str]]:
    """Read and parse ``path`` (``OSError`` if it cannot be read; too large is a problem)."""
    with open(path, "rb") as f:
        data = f.read(MAX_FILE_BYTES + 1)
    if len(data) > MAX_FILE_BYTES:
        return {}, [f"larger than {MAX_FILE_BYTES} bytes: not read"]
    return parse_authorized_keys(data.decode("utf-8", "replace"))


def refusal_now(scope: Mapping[str, Any]) -> str | None:
    """Why the authorized-keys file that let this request in no longer lets its caller make it (None: it still
    does, or none was asked): a stream or a long wait asks again while it lasts, so a removed key gets nothing
    more. The middleware leaves the file in the request's state when it admits one."""
    state = scope.get("state", {})
    access, key = state.get("access"), state.get("public_key")
    if access is None or not key:
        return None
    return authorize(key, capability_for(scope["method"], scope["path"]), access.table())


@dataclass
class AuthorizedKeys:
    """The authorized-keys file of a running node, re-read when it changes on disk.

    Checked with one ``stat`` per request (no thread, no watcher). On a change the new file
    replaces the table whole: its bad lines are logged and grant nothing; a file that has
    disappeared or cannot be read authorizes nobody until it is back (logged). ``load`` at
    start-up raises instead, so a node never starts with a file it cannot use.
    """

    path: Path
    _table: dict[bytes, frozenset[Capability]] = field(default_factory=dict)
    _stamp: tuple[int, int, int] | None = None

    def load(self) -> None:
        """First read: raises ``ValueError`` naming every bad line, or the reason it cannot be read."""
        try:
            stamp = _stamp(self.path)
            table, problems = read_authorized_keys(self.path)
        except OSError as e:
            raise ValueError(f"cannot read authorized keys {self.path}: {e.strerror or e}") from None
        if problems:
            raise ValueError(f"authorized keys {self.path}: " + "; ".join(problems))
        self._table, self._stamp = table, stamp
        log.info("authorized keys: %d client key(s) from %s", len(table), self.path)

    def table(self) -> Table:
        """The current table, re-read first if the file changed since the last look."""
        try:
            stamp = _stamp(self.path)
        except OSError as e:
            if self._stamp is not None:
                log.warning("authorized keys %s cannot be read (%s): no client is authorized until it is back",
                            self.path, e.strerror or e)
                self._table, self._stamp = {}, None
            return self._table
        if stamp != self._stamp:
            try:
                table, problems = read_authorized_keys(self.path)
            except OSError as e:
                log.warning("authorized keys %s cannot be read (%s): no client is authorized until it is back",
                            self.path, e.strerror or e)
                self._table, self._stamp = {}, None
                return self._table
            for problem in problems:
                log.warning("authorized keys %s: %s (that line grants nothing)", self.path, problem)
            self._table, self._stamp = table, stamp
            log.info("authorized keys re-read: %d client key(s) from %s", len(table), self.path)
        return self._table


def _stamp(path: Path) -> tuple[int, int, int]:
    st = os.stat(path)
    return st.st_mtime_ns, st.st_size, st.st_ino

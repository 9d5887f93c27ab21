"""Which node a command talks to (the root ``--api`` and ``--ca-cert`` options) and the SDK client
every command gets for it."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

    from shoal import Client


@dataclass(frozen=True)
class Settings:
    """The root options, kept in the typer context (``ctx.obj``) for the command that runs."""

    api: str | None = None
    ca_cert: Path | None = None


def make_client(api_url: str | None, *, timeout: float = 30.0, ca_cert: Path | None = None) -> Client:
    """Every command gets its SDK client here; tests replace this with a fake.

    With no URL the SDK finds one (``SHOAL_API`` is read by the ``--api`` option already,
    then a running devstack's state file).

    Optional imports of httpx's that a client command never uses are skipped; each is made
    to fail fast, which httpx and httpcore handle: h2 (HTTP/2, which the SDK does not speak;
    installed for hypercorn) and ``httpx._main`` (httpx's own command line: click, rich's
    syntax highlighting, pygments) are about half of ``import httpx`` (measured 120 ms → 65 ms),
    and trio, which httpcore imports whenever it is installed, with the first transport
    (~150 ms; only ``serve`` and ``devstack`` run trio, and they never get here).
    """
    for optional in ("trio", "h2", "httpx._main"):
        if optional not in sys.modules:
            sys.modules[optional] = None  # type: ignore[assignment]  # makes the import fail fast
    from shoal import Client

    return Client(api_url, timeout=timeout, ca_cert=ca_cert)


def client(ctx: typer.Context, timeout: float = 30.0) -> Client:
    """The SDK client for the node the root options name."""
    settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings()
    return make_client(settings.api, timeout=timeout, ca_cert=settings.ca_cert)

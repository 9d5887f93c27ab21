"""Serve the dashboard on a loopback address with hypercorn on trio (the node API's server stack)."""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
from collections.abc import Callable
from pathlib import Path

import trio

from cli.ui.guard import LOOPBACK
from cli.ui.proxy import Dashboard


def session_address() -> str:
    """A loopback address of this session's own, ``127.a.b.c`` at random (Linux answers on all of 127/8; where
    only 127.0.0.1 answers, or under WSL, whose Windows browsers reach only that, 127.0.0.1). Never another
    kind of address: the page and the proxy hold the user's key's power. With a port at random, an origin
    nobody can guess: a page another local user served earlier on a known one (the default was
    127.0.0.1:8790) installed a service worker or cached script there that ran in the next session's
    dashboard and took its key."""
    with contextlib.suppress(OSError):
        if "microsoft" in Path("/proc/sys/kernel/osrelease").read_text().lower():
            return LOOPBACK
    address = f"127.{secrets.randbelow(254) + 1}.{secrets.randbelow(256)}.{secrets.randbelow(254) + 1}"
    with contextlib.suppress(OSError), socket.socket() as probe:
        probe.bind((address, 0))
        return address
    return LOOPBACK


async def serve_dashboard(api_url: str | None, port: int, *, address: str | None = None, ca_cert: Path | None = None,
                          on_ready: Callable[[str, str], None] = lambda url, api: None) -> None:
    """Serve until cancelled; ``on_ready(url, api_url)`` once listening (``port`` 0: any free one), on ``address``
    (a loopback one; by default one of its own, ``session_address``); ``url`` carries the session's key: only
    whoever has it gets in."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from shoal import AsyncClient

    async with AsyncClient(api_url, ca_cert=ca_cert) as client:
        address = address or session_address()
        dashboard = Dashboard(client._http, port=port, address=address)  # the SDK's signed client signs
        config = Config()
        config.bind = [f"{address}:{port}"]
        config.accesslog = None
        config.errorlog = _error_log()
        async with trio.open_nursery() as nursery:
            urls = await nursery.start(serve, dashboard, config)
            dashboard.port = int(urls[0].rsplit(":", 1)[1])
            on_ready(dashboard.url(), client.api_url)


def _error_log() -> logging.Logger:
    """What goes wrong in the dashboard itself, on stderr (hypercorn's start-up chatter left out)."""
    log = logging.getLogger("shoal.ui")
    if not log.handlers:
        log.addHandler(logging.StreamHandler())
        log.setLevel(logging.WARNING)
        log.propagate = False
    return log

"""Serve the dashboard on 127.0.0.1 with hypercorn on trio (the node API's server stack)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import trio

from cli.ui.proxy import Dashboard

HOST = "127.0.0.1"  # never another address: the page and the proxy hold the user's key's power


async def serve_dashboard(api_url: str | None, port: int, *, ca_cert: Path | None = None,
                          on_ready: Callable[[str, str], None] = lambda url, api: None) -> None:
    """Serve until cancelled; ``on_ready(url, api_url)`` once listening (``port`` 0: any free one); ``url``
    carries the session's key: only whoever has it gets in."""
    from hypercorn.config import Config
    from hypercorn.trio import serve

    from shoal import AsyncClient

    async with AsyncClient(api_url, ca_cert=ca_cert) as client:
        dashboard = Dashboard(client._http, port=port)  # the SDK's signed HTTP client: one home for signing
        config = Config()
        config.bind = [f"{HOST}:{port}"]
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

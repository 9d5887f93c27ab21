"""``shoal ui``: the web dashboard (``cli.ui``), served on a loopback address until Ctrl-C."""

from __future__ import annotations

from importlib.util import find_spec
from pathlib import Path
from typing import Annotated

import typer

from cli.connect import Settings

UI_MODULES = ("trio", "hypercorn")  # of the node extra: the dashboard is served as the node's API is


def ui(
    ctx: typer.Context,
    port: Annotated[int, typer.Option("--port", metavar="PORT", min=0, max=65535,
        help="Port (default: any free one, on a loopback address chosen at random: an address nobody can "
             "prepare a page for).")] = 0,
    address: Annotated[str | None, typer.Option("--address", metavar="ADDRESS",
        help="Loopback address (default: one at random in 127.0.0.0/8, or 127.0.0.1 where only it answers); "
             "127.0.0.1 with --port for an SSH tunnel.")] = None,
    open_browser: Annotated[bool, typer.Option("--open", help="Open the dashboard in your web browser.")] = False,
) -> None:  # fmt: skip
    """A web dashboard of your jobs, sweeps and the network's nodes, on http://127.a.b.c:PORT.

    It proxies the node's API (--api, $SHOAL_API, the config file or the running devstack), signing
    every call with your client key; the key never reaches the browser, and only the dashboard's own
    page may use the proxy. Open the address it prints: it carries this session's key, without which
    the dashboard lets nobody in (other users of the machine reach 127.0.0.1 too).
    """
    if address is not None and not _is_loopback(address):
        from cli.errors import EXIT_USAGE, CLIError

        raise CLIError(f"--address {address!r}: a loopback address (127.x.y.z) only: the dashboard holds your "
                       "key's power", code=EXIT_USAGE)
    missing = [name for name in UI_MODULES if find_spec(name) is None]
    if missing:
        from cli.errors import EXIT_USAGE, CLIError

        raise CLIError(f"shoal ui needs the 'node' extra: pip install 'shoal[node]' (missing here: "
                       f"{', '.join(missing)})", code=EXIT_USAGE)
    import trio

    from cli.daemon import stop_on_signals
    from cli.ui.server import serve_dashboard

    settings = ctx.obj if isinstance(ctx.obj, Settings) else Settings()
    api, ca_cert = settings.node()

    opened: list[Path] = []  # the file the browser was sent to: it holds the session's key

    def ready(url: str, api_url: str) -> None:
        typer.echo(f"Shoal dashboard on {url} (node {api_url}); Ctrl-C stops it")
        if open_browser:
            opened.append(open_privately(url))

    try:
        with stop_on_signals():  # Ctrl-C, kill -INT and kill (SIGTERM) stop it alike, in the background too
            trio.run(lambda: serve_dashboard(api, port, address=address, ca_cert=ca_cert, on_ready=ready))
    except (KeyboardInterrupt, OSError, BaseExceptionGroup) as e:
        stopped, failed = _leaves(e)
        if failed is not None:
            from cli.errors import CLIError

            raise CLIError(f"cannot serve the dashboard on port {port}: {failed.strerror or failed}") from None
        if not stopped:
            raise
    finally:
        for path in opened:
            path.unlink(missing_ok=True)


def _is_loopback(address: str) -> bool:
    import ipaddress

    try:
        return ipaddress.IPv4Address(address).is_loopback
    except ValueError:
        return False


def _leaves(error: BaseException) -> tuple[bool, OSError | None]:
    """(Ctrl-C among them, the first OSError) of an exception or a group of them (trio's nurseries)."""
    if isinstance(error, BaseExceptionGroup):
        found = [_leaves(inner) for inner in error.exceptions]
        return any(s for s, _ in found), next((f for _, f in found if f is not None), None)
    return isinstance(error, KeyboardInterrupt), error if isinstance(error, OSError) else None


def open_privately(url: str) -> Path:
    """Open ``url`` (it carries the dashboard's key) in the web browser through a file only this user reads, as
    Jupyter does: a browser's command line, which every user of the machine can list, names only the file. The
    file, which the session deletes when it ends."""
    import os
    import tempfile
    import webbrowser
    from html import escape

    fd, path = tempfile.mkstemp(prefix="shoal-ui-", suffix=".html")  # mode 0600
    with os.fdopen(fd, "w") as f:
        f.write(f'<!doctype html><meta http-equiv="refresh" content="0;url={escape(url, quote=True)}">'
                f'<a href="{escape(url, quote=True)}">Shoal dashboard</a>\n')
    webbrowser.open(f"file://{path}")
    return Path(path)

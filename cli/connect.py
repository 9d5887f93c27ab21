"""Which node a command talks to (the root ``--api`` and ``--ca-cert`` options, else the config
file: ``cli.config``) and the SDK client every command gets for it."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import typer

    from cli.config import Setting
    from shoal import Client


@dataclass(frozen=True)
class Settings:
    """The root options, kept in the typer context (``ctx.obj``) for the command that runs."""

    api: str | None = None
    ca_cert: Path | None = None
    sources: dict[str, str] = field(default_factory=dict)  # option name → "flag --api" or "$SHOAL_API"

    def given(self) -> dict[str, Setting]:
        """The root options given by flag or environment variable, for ``cli.config.resolve``."""
        from cli.config import Setting

        return {key: Setting(key, getattr(self, key), source) for key, source in self.sources.items()}

    def node(self) -> tuple[str | None, Path | None]:
        """The API URL and CA certificate to use: these options, else the config file (else None: the SDK's default)."""
        from cli.config import load_config, resolve

        config, given = load_config(), self.given()
        api = resolve("api", given=given, config=config).value
        ca_cert = resolve("ca_cert", given=given, config=config).value
        return api, None if ca_cert is None else Path(ca_cert)


def given_by(ctx: typer.Context, name: str) -> str | None:
    """How the user gave the option ``name`` of this command: "COMMANDLINE", "ENVIRONMENT", or None (its default)."""
    source = ctx.get_parameter_source(name)
    kind = getattr(source, "name", None)
    return kind if kind in ("COMMANDLINE", "ENVIRONMENT") else None


def root_sources(ctx: typer.Context, options: dict[str, tuple[str, str]]) -> dict[str, str]:
    """For the root ``options`` given (name → (flag, environment variable)): "flag --api" or "$SHOAL_API"."""
    sources = {}
    for name, (flag, variable) in options.items():
        kind = given_by(ctx, name)
        if kind:
            sources[name] = f"flag {flag}" if kind == "COMMANDLINE" else f"${variable}"
    return sources


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
    api, ca_cert = settings.node()
    return make_client(api, timeout=timeout, ca_cert=ca_cert)

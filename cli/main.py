"""The ``shoal`` command: parse arguments, call the SDK (or the node/devstack), render.

No business logic lives here: this module is the command tree, read top to bottom; the commands
are in ``cli.commands`` by group. Commands return an exit code (or None for 0); every exception
becomes one ``Error: …`` line in ``cli.group.ShoalGroup`` (see ``cli.errors`` and ``cli.exits``).
Rich, pydantic and the SDK are imported inside commands so ``shoal --help`` starts fast.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer

from cli.commands import daemons, jobfile, jobs, keys, network, run, settings, sweeps, tools, ui
from cli.commands.settings import COMPLETE_VAR
from cli.connect import Settings, root_sources
from cli.exits import EXIT_CODES_HELP
from cli.group import ShoalGroup

SETTINGS = {"help_option_names": ["-h", "--help"]}


def _group(help: str) -> typer.Typer:
    return typer.Typer(help=help, no_args_is_help=True, rich_markup_mode=None)


app = typer.Typer(
    cls=ShoalGroup,
    name="shoal",
    help="Shoal: run jobs on a peer-to-peer compute network.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # plain click help: rich's help renderer costs ~150 ms of imports
    context_settings=SETTINGS,
)


_ROOT_OPTIONS = {"api": ("--api", "SHOAL_API"), "ca_cert": ("--ca-cert", "SHOAL_CA_CERT")}


def _api_url(value: str | None) -> str | None:
    """--api (or $SHOAL_API) checked as the config file's api is: a bad URL is a usage error naming it."""
    from cli.config import check_url

    try:
        return None if value is None else check_url(value)
    except ValueError as exc:
        raise typer.BadParameter(f"{exc}, got {value!r}") from None


@app.callback()
def _root(
    ctx: typer.Context,
    api: Annotated[str | None, typer.Option("--api", envvar="SHOAL_API", metavar="URL", callback=_api_url,
        help="Node API URL (default: $SHOAL_API, else the config file's api, else the running devstack).")] = None,
    ca_cert: Annotated[Path | None, typer.Option("--ca-cert", envvar="SHOAL_CA_CERT", metavar="FILE",
        help="For an https:// API: trust only this certificate (PEM): the node's own, or its CA's.")] = None,
) -> None:  # fmt: skip
    ctx.obj = Settings(api=api, ca_cert=ca_cert, sources=root_sources(ctx, _ROOT_OPTIONS))


# Top-level commands, in the order ``shoal --help`` lists them (after the run groups).
app.command("list")(jobs.list_jobs)
app.command()(jobs.describe)
app.command()(jobs.wait)
app.command()(jobs.logs)
app.command()(jobs.get)
app.command()(jobs.cancel)
app.command()(jobs.events)
# a key may begin with "-": no short options here, and unknown "options" are arguments
app.command(context_settings={"ignore_unknown_options": True, "help_option_names": ["--help"]})(jobs.share)
app.command("id")(network.node_id)
app.command()(network.peers)
app.command()(network.nodes)
app.command()(network.version)
app.command(context_settings=SETTINGS)(daemons.serve)
app.command(context_settings=SETTINGS)(daemons.devstack)
app.command(context_settings=SETTINGS)(tools.bench)
app.command()(ui.ui)
app.command()(settings.completion)

# Groups, in the same order.
docker_app = _group("Run Docker containers.")
docker_app.command("run", context_settings=SETTINGS)(run.docker_run)
docker_app.command("fence")(tools.docker_fence)
app.add_typer(docker_app, name="docker")

wasm_app = _group("Run WebAssembly modules.")
wasm_app.command("run", context_settings=SETTINGS)(run.wasm_run)
app.add_typer(wasm_app, name="wasm")

run_app = _group("Run Python or noop jobs.")
run_app.command("python", context_settings=SETTINGS)(run.run_python)
run_app.command("noop", context_settings=SETTINGS)(run.run_noop)
app.add_typer(run_app, name="run")

job_app = _group("Jobs and sweeps kept in files (YAML or JSON, the API's schema).")
job_app.command("run", context_settings=SETTINGS)(jobfile.job_run)
job_app.command("validate")(jobfile.job_validate)
job_app.command("schema")(jobfile.job_schema)
app.add_typer(job_app, name="job")

images_app = _group("Container images for the docker engine.")
images_app.command("build", context_settings=SETTINGS)(tools.images_build)
app.add_typer(images_app, name="images")

pyodide_app = _group("The python engine's Pyodide.")
pyodide_app.command("install")(tools.pyodide_install)
app.add_typer(pyodide_app, name="pyodide")

network_key_app = _group("The shared key of a private network (serve --network-key).")
network_key_app.command("new")(keys.network_key_new)
app.add_typer(network_key_app, name="network-key")

key_app = _group("Your client key: the identity your requests are signed with and your jobs belong to.")
key_app.command("show")(keys.key_show)
app.add_typer(key_app, name="key")

sweep_app = _group("Sweeps of many jobs, made by run … --param K=V1,V2.")
sweep_app.command("list")(sweeps.sweep_list)
sweep_app.command("indexes")(sweeps.sweep_indexes)
sweep_app.command("retry", context_settings=SETTINGS)(sweeps.sweep_retry)
sweep_app.command("get")(sweeps.sweep_get)
sweep_app.command("logs")(sweeps.sweep_logs)
app.add_typer(sweep_app, name="sweep")

config_app = _group("The config file (API, output format, run flag defaults): shoal config show.")
config_app.command("show")(settings.config_show)
config_app.command("path")(settings.config_path)
app.add_typer(config_app, name="config")


def main() -> None:
    """Console script entry point."""
    if os.environ.get(COMPLETE_VAR):  # the shell asks for completions (the script `shoal completion` prints)
        from typer.completion import completion_init

        completion_init()  # typer's bash/zsh/fish protocol, registered only with add_completion otherwise
    app(prog_name="shoal")


if __name__ == "__main__":
    main()

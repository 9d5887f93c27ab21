"""``shoal config`` (the config file: where it is, what is in effect) and ``shoal completion``."""

from __future__ import annotations

from typing import Annotated, Literal

import typer

from cli.arguments import Json

COMPLETE_VAR = "_SHOAL_COMPLETE"  # click's protocol: the shell runs `shoal` with this set to ask for completions
Shell = Literal["bash", "zsh", "fish"]


def completion(shell: Annotated[Shell, typer.Argument(help="Your shell.")]) -> None:
    """Print the shell completion script: eval "$(shoal completion bash)" in ~/.bashrc (zsh, fish alike)."""
    from typer.completion import get_completion_script

    print(get_completion_script(prog_name="shoal", complete_var=COMPLETE_VAR, shell=shell))


def config_path() -> None:
    """Print the config file's path ($SHOAL_CONFIG, else config.toml in $SHOAL_HOME or ~/.shoal)."""
    from cli.config import config_path as path

    print(path())


def config_show(ctx: typer.Context, json_: Json = False) -> None:
    """Print every setting in effect and where it comes from: a flag, the environment, the file, the default."""
    from cli.config import effective
    from cli.options import flag_defaults

    settings = effective(flag_defaults(), ctx.obj.given() if ctx.obj is not None else {})
    if json_:
        from cli.render import print_json

        return print_json({s.key: {"value": _json(s.value), "source": s.source} for s in settings})
    rows = [(s.key, _text(s.value), s.source) for s in settings]
    widths = [max(len(row[column]) for row in rows) for column in (0, 1)]
    for key, value, source in rows:
        print(f"{key:<{widths[0]}}  {value:<{widths[1]}}  {source}")


def _json(value: object) -> object:
    return value if value is None or isinstance(value, bool | int | float | str) else str(value)


def _text(value: object) -> str:
    if value is None:
        return "-"
    return str(value).lower() if isinstance(value, bool) else str(value)

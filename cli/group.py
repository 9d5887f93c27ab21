"""``ShoalGroup``, the root command's class: it runs every command and turns whatever escapes
(usage errors, SDK errors, ``CLIError``, Ctrl-C) into one ``Error: …`` line and an exit code.

Kept apart from ``cli.errors`` because the root command is built on every start, ``shoal --help``
included, while ``cli.errors`` imports the job model (``CLIError`` is a ``jobs.errors.ShoalError``):
that is loaded only once something has failed.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer.core import TyperGroup

from cli.exits import EXIT_INTERRUPTED, EXIT_USAGE


class ShoalGroup(TyperGroup):
    """The root command: turns every failure into one stderr line and an exit code."""

    def main(self, args: Any = None, prog_name: str | None = None, complete_var: str | None = None,
             standalone_mode: bool = True, **extra: Any) -> Any:  # fmt: skip
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except typer.TyperException as exc:  # click's usage errors: bad flag, missing argument, …
            code = _usage_error(exc)
        except (KeyboardInterrupt, typer.Abort):
            code = EXIT_INTERRUPTED
        except BaseExceptionGroup as group:  # trio raises Ctrl-C out of a nursery inside a group
            handled = EXIT_INTERRUPTED if group.split(KeyboardInterrupt)[1] is None else None
            if handled is None and isinstance(group, Exception):
                from cli.errors import exit_code_for

                handled = exit_code_for(group)
            if handled is None:
                raise
            code = handled
        except Exception as exc:
            from cli.errors import exit_code_for

            handled = exit_code_for(exc)
            if handled is None:
                raise
            code = handled
        if not standalone_mode:
            return code
        sys.exit(code)

    def list_commands(self, ctx: Any) -> list[str]:
        """Run commands first in ``shoal --help``: they are what most people came for."""
        names = super().list_commands(ctx)
        first = [n for n in ("docker", "wasm", "run", "job") if n in names]
        return first + [n for n in names if n not in first]


def _usage_error(exc: typer.TyperException) -> int:
    code = getattr(exc, "exit_code", EXIT_USAGE)
    if type(exc).__name__ == "NoArgsIsHelpError":  # `shoal run` alone: show that group's help
        exc.show()  # type: ignore[attr-defined]
        return code
    ctx = getattr(exc, "ctx", None)
    message, hint = exc.format_message(), ""
    if ctx is not None:
        hint = f"see '{ctx.command_path} --help'"
        if message.startswith("No such option") and ctx.command_path.endswith(_TAKES_JOB_ARGS):
            hint = f"the job's own arguments go after --; {hint}"
        hint = f" ({hint})"
    print(f"Error: {message}{hint}", file=sys.stderr)
    return code


_TAKES_JOB_ARGS = (" docker run", " wasm run", " run python")

"""Exit codes, and the one place where an exception becomes an ``Error: …`` line on stderr.

``ShoalGroup`` is the root command's class: it runs every command and maps whatever escapes
(usage errors, SDK errors, ``CLIError``, Ctrl-C) to a line and an exit code.

Scripts drive the CLI by exit code, so every failure maps to exactly one of these, and the
user sees one line per problem, never a traceback (``SHOAL_DEBUG=1`` brings tracebacks back).
"""

from __future__ import annotations

import os
import sys
from typing import Any

import typer
from typer.core import TyperGroup

EXIT_OK = 0
EXIT_JOB_FAILED = 1  # the job failed or was cancelled; also any other failure
EXIT_USAGE = 2  # bad flags, invalid spec (locally or as judged by the node)
EXIT_UNREACHABLE = 3  # cannot reach the API, or it refused us (bad signature, key not authorized there)
EXIT_NOT_FOUND = 4
EXIT_TIMEOUT = 124  # like timeout(1): the wait ran out, the job goes on
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT

_HINT_UNREACHABLE = "start a node with 'shoal devstack' or 'shoal serve', or pass --api URL"


class CLIError(Exception):
    """An expected failure: each line is printed as ``Error: <line>``, then exit with ``code``."""

    def __init__(self, *lines: str, code: int = EXIT_JOB_FAILED) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines or ("failed",)
        self.code = code


def print_error(*lines: str) -> None:
    for line in lines:
        print(f"Error: {line}", file=sys.stderr)


def exit_code_for(exc: BaseException) -> int | None:
    """Print ``exc`` as ``Error: …`` lines and return its exit code; None if it is not ours to handle."""
    exc = _sole_leaf(exc)
    if isinstance(exc, CLIError):
        print_error(*exc.lines)
        return exc.code
    sdk = sys.modules.get("shoal")  # whatever raised an SDK error has imported the SDK already
    base = getattr(sdk, "ShoalAPIError", None)
    if base is not None and isinstance(exc, base):
        return _sdk_error(exc, sdk)
    if isinstance(exc, BrokenPipeError):  # `shoal list | head`: the reader left, not an error
        return EXIT_OK
    if os.environ.get("SHOAL_DEBUG"):
        return None
    print_error(f"unexpected {type(exc).__name__}: {exc} (set SHOAL_DEBUG=1 for a traceback)")
    return EXIT_JOB_FAILED


def _sole_leaf(exc: BaseException) -> BaseException:
    """The one real error inside trio's exception groups, which say only "Exceptions from Trio nursery"."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _sdk_error(exc: BaseException, sdk: object) -> int:
    message = _one_line(str(exc)) or type(exc).__name__
    if isinstance(exc, sdk.ConnectionFailed):  # type: ignore[attr-defined]
        print_error(f"{message} ({_HINT_UNREACHABLE})")
        return EXIT_UNREACHABLE
    if isinstance(exc, sdk.AuthenticationError | sdk.Forbidden):  # type: ignore[attr-defined]
        print_error(message)
        return EXIT_UNREACHABLE
    if isinstance(exc, sdk.NotFound):  # type: ignore[attr-defined]
        print_error(message)
        return EXIT_NOT_FOUND
    if isinstance(exc, sdk.InvalidRequest):  # type: ignore[attr-defined]
        fields = [f for f in getattr(exc, "fields", []) if f not in message]
        print_error(message + (f" (fields: {', '.join(fields)})" if fields else ""))
        return EXIT_USAGE
    if isinstance(exc, sdk.WaitTimeout):  # type: ignore[attr-defined]
        print_error(message)
        return EXIT_TIMEOUT
    print_error(message)
    return EXIT_JOB_FAILED


def _one_line(text: str) -> str:
    return " ".join(text.split())


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
                handled = exit_code_for(group)
            if handled is None:
                raise
            code = handled
        except Exception as exc:
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
        first = [n for n in ("docker", "wasm", "run") if n in names]
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

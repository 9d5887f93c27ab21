"""``CLIError``, and the one place where an exception becomes an ``Error: …`` line on stderr.

``cli.group.ShoalGroup`` (the root command) calls ``exit_code_for`` with whatever a command lets
escape. Scripts drive the CLI by exit code (``cli.exits``), so every failure maps to exactly one,
and the user sees one line per problem, never a traceback (``SHOAL_DEBUG=1`` brings tracebacks back).

This module imports the job model (``CLIError`` is a ``ShoalError``), so code that runs on every
start (``shoal --help``) imports it only where it raises or handles an error.
"""

from __future__ import annotations

import os
import sys

from cli.exits import (
    EXIT_INTERRUPTED,
    EXIT_JOB_FAILED,
    EXIT_NOT_FOUND,
    EXIT_OK,
    EXIT_TIMEOUT,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
)
from cli.terminal import printable
from jobs.errors import ShoalError

__all__ = ["EXIT_INTERRUPTED", "EXIT_JOB_FAILED", "EXIT_NOT_FOUND", "EXIT_OK", "EXIT_TIMEOUT", "EXIT_UNREACHABLE",
           "EXIT_USAGE", "CLIError", "exit_code_for", "print_error"]

_HINT_UNREACHABLE = "start a node with 'shoal devstack' or 'shoal serve', or pass --api URL"


class CLIError(ShoalError):
    """An expected failure: each line is printed as ``Error: <line>``, then exit with ``code``."""

    def __init__(self, *lines: str, code: int = EXIT_JOB_FAILED) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines or ("failed",)
        self.code = code


def print_error(*lines: str) -> None:
    """``Error: …`` lines on stderr; what a peer wrote in them (a job's reason) cannot reach the terminal raw."""
    for line in lines:
        print(f"Error: {printable(line)}", file=sys.stderr)


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
    if isinstance(exc, ShoalError):  # raised on purpose, saying why (a store from a newer release, a taken port)
        print_error(str(exc))
        return EXIT_JOB_FAILED
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
    if getattr(exc, "code", "").startswith("dest_"):  # where the results were to go: the command's argument
        print_error(message)
        return EXIT_USAGE
    if isinstance(exc, sdk.WaitTimeout):  # type: ignore[attr-defined]
        print_error(message)
        return EXIT_TIMEOUT
    print_error(message)
    return EXIT_JOB_FAILED


def _one_line(text: str) -> str:
    return " ".join(text.split())

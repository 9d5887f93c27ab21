"""``Client.map``: a Python function over a list (or a grid) as one sweep, values back in order.

How a map travels:

1. ``plan_map`` ships the function as source (``shoal._ship``) and builds one ``SweepSpec``: its
   template is a python job whose program is ``shoal/_codec.py`` + ``shoal/_map_runner.py`` + the
   shipped bundle (``program``); the items are a ``zip`` axis ``SHOAL_ARG_0`` (more iterables,
   more axes: ``fn(x, y)``), a grid is the sweep's own ``grid`` with axes ``SHOAL_KW_<name>``
   (``fn(**point)``), every value encoded with ``shoal._codec``. Index ``i`` is the ``i``-th item,
   or the ``i``-th point of ``itertools.product`` over the grid's values. The same function over
   the same items gives the same spec, byte for byte.
2. Each index runs the program, which writes one JSON reply line last on its stdout.
3. ``_BaseClient._map_flow`` submits the sweep and polls it (a long poll on the sweep, then the index records
   of what finished); ``MapRun`` turns each finished index record into its value, or into a
   ``RemoteError``/``IndexFailed`` (``outcome``), and keeps the progress bar.

Everything here is pure but the progress bar's output; the clients send the requests.
"""

from __future__ import annotations

import builtins
import functools
import json
import keyword
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from jobs.errors import ShoalError
from jobs.model import RunResult
from jobs.spec import PythonEngine
from jobs.sweep import IndexRecord, SweepSpec
from jobs.text import printable
from shoal import _codec
from shoal._error_mapping import validation_summary
from shoal._errors import CannotShip, IndexFailed, InvalidRequest, MapError, RemoteError
from shoal._ship import ship

ARG_ENV = "SHOAL_ARG_{}"
KW_ENV = "SHOAL_KW_{}"
# A map's program starts with a line naming the function and its arguments: what the CLI shows as its engine.
HEADER = "# shoal map: "
# A sweep's spec travels in one API body and one network message (1 MiB each); leave room for the rest.
MAX_SPEC_BYTES = 900 * 1024
PAGE = 1000  # index records fetched per request
MAP_RESULTS_MAX = 8 << 20  # bytes of an index's results read for a value longer than its record keeps
FIRST_POLL, MAX_POLL = 0.25, 2.0  # seconds a poll waits for news, doubling while there is none


class RemoteTraceback(ShoalError):
    """The remote traceback, as text: chained as the cause of a ``RemoteError`` so that it prints with it."""

    def __str__(self) -> str:
        return f'\n"""\n{self.args[0].rstrip()}\n"""' if self.args else ""


# -- planning (before any request) ------------------------------------------------------------------


class MapPlan:
    """The sweep one map submits, and how to read its indexes' arguments back."""

    def __init__(self, spec: SweepSpec | None, count: int, labels: list[str], keys: list[str]) -> None:
        self.spec = spec  # None: nothing to map
        self.count = count
        self.labels = labels  # a name per argument: "item", "arg0", … or the grid's axes
        self.keys = keys  # the environment variable of each argument

    def arguments(self, index: int) -> list[Any]:
        assert self.spec is not None
        values = self.spec.values(index)
        return [_codec.loads(values[key]) for key in self.keys]

    def describe(self, index: int) -> str:
        """``item 3.5`` or ``s0=100, vol=0.2``: an index's arguments, briefly, for messages."""
        try:
            args = self.arguments(index)
        except (ValueError, IndexError):
            return f"index {index}"
        if self.labels == ["item"]:
            text = f"item {args[0]!r}"
        else:
            text = ", ".join(f"{label}={value!r}" for label, value in zip(self.labels, args, strict=True))
        return text if len(text) <= 80 else text[:77] + "..."

    def frame(self, values: list[Any]) -> Any:
        """A pandas DataFrame: a column per argument, then the value (a column per key when values are dicts)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("as_frame=True needs pandas (pip install pandas)") from None
        rows = []
        dicts = bool(values) and all(isinstance(v, dict) and all(isinstance(k, str) for k in v) for v in values)
        for index, value in enumerate(values):
            row = dict(zip(self.labels, self.arguments(index), strict=True))
            row.update(value if dicts else {"value": value})
            rows.append(row)
        return pd.DataFrame(rows)


def plan_map(fn: Any, iterables: tuple[Iterable[Any], ...], grid: dict[str, Iterable[Any]] | None,
             image: str | None, job: dict[str, Any] | None, confidence: int = 0) -> MapPlan:
    """The sweep for ``fn`` over ``iterables`` (zipped) or ``grid`` (every combination); ``confidence``:
    how many nodes must agree on each value.

    Raises ``CannotShip`` (the function, an item or the whole is not sendable), ``TypeError`` or
    ``ValueError`` (how it was called) before anything is submitted."""
    if bool(iterables) == (grid is not None):
        raise TypeError("map needs items (map(fn, items)) or a grid (map(fn, grid={...})), not both")
    if grid is not None:
        unlisted = [name for name, values in grid.items() if isinstance(values, str | bytes)
                    or not isinstance(values, Iterable)]
        if unlisted:
            raise TypeError(f"grid values must be lists of values, e.g. grid={{{unlisted[0]!r}: [1, 2, 3]}}; "
                            f"{unlisted[0]!r} has {grid[unlisted[0]]!r}")
        axes = {name: list(values) for name, values in grid.items()}
        bad = [n for n in axes if not isinstance(n, str) or not n.isidentifier() or keyword.iskeyword(n)
               or len(n) > 100]
        if bad:
            raise ValueError(f"grid axes must be Python identifiers (they become keyword arguments): {bad}")
        labels, keys = list(axes), [KW_ENV.format(n) for n in axes]
        parts = {"grid": {key: _encoded(values, name) for key, (name, values) in zip(keys, axes.items(), strict=True)}}
        call = {"args": [], "kwargs": [[n, k] for n, k in zip(labels, keys, strict=True)]}
    else:
        lists = [list(items) for items in iterables]
        if len({len(items) for items in lists}) > 1:
            raise ValueError(f"the iterables have different lengths: {[len(items) for items in lists]}")
        labels = ["item"] if len(lists) == 1 else [f"arg{i}" for i in range(len(lists))]
        keys = [ARG_ENV.format(i) for i in range(len(lists))]
        parts = {"zip": {key: _encoded(items, label) for key, items, label in zip(keys, lists, labels, strict=True)}}
        call = {"args": keys, "kwargs": []}
    sizes = [len(v) for axis in parts.values() for v in axis.values()]
    if not sizes or 0 in sizes:
        return MapPlan(None, 0, labels, keys)
    shipment = ship(fn)
    title = f"{getattr(fn, '__name__', None) or type(fn).__name__}({', '.join(labels)})"
    engine: dict[str, Any] = {"name": "python", "code": program({**shipment.bundle(), **call}, title)}
    if image is not None:
        if "image" not in PythonEngine.model_fields:
            raise ValueError("image= needs a Shoal whose python engine runs in an image (shoal run python --image); "
                             "this version's does not")
        engine["image"] = image
    job = dict(job or {})
    if "engine" in job:
        raise ValueError("job= sets the rest of each index's job (resources, timeout, env, …); the engine is map's")
    try:
        spec = SweepSpec.model_validate({"job": {**job, "engine": engine}, **parts, "confidence": confidence})
    except ValidationError as e:
        raise InvalidRequest(f"invalid map: {validation_summary(e, 'spec')}", None, "invalid_spec") from None
    size = len(spec.model_dump_json())
    if size > MAX_SPEC_BYTES:
        raise CannotShip(f"the function, its data and the items take {size} bytes encoded: a map sends at most "
                         f"{MAX_SPEC_BYTES}; pass large data as a job input instead")
    return MapPlan(spec, spec.count, labels, keys)


def _encoded(values: list[Any], label: str) -> list[str]:
    out = []
    for i, value in enumerate(values):
        try:
            out.append(_codec.dumps(value))
        except TypeError as e:
            raise CannotShip(f"{label} {i} cannot be sent: {e}") from None
    return out


@functools.cache
def _runner_text() -> str:
    here = Path(__file__).parent
    return (here / "_codec.py").read_text() + "\n\n" + (here / "_map_runner.py").read_text()


def program(bundle: dict[str, Any], title: str) -> str:
    """The Python program every index runs: the ``title`` line, the codec, the runner, and the bundle to run."""
    text = json.dumps(bundle, separators=(",", ":"), ensure_ascii=False)
    return f"{HEADER}{' '.join(title.split())[:200]}\n{_runner_text()}\n\nraise SystemExit(main({text!r}))\n"


def map_title(code: str) -> str | None:
    """``simulate(seed, steps)``: what a map's program runs, from its first line; None for other programs."""
    first = code.partition("\n")[0]
    return first.removeprefix(HEADER) if first.startswith(HEADER) else None


def axis_labels(keys: Iterable[str]) -> dict[str, str]:
    """How a sweep's axes read to whoever called ``map``: ``SHOAL_KW_vol`` is ``vol``, ``SHOAL_ARG_0`` is
    ``item`` (``arg0``, ``arg1``, … when there are more); other axes keep their names."""
    keys = list(keys)
    kw, arg = KW_ENV.format(""), ARG_ENV.format("")
    args = [k for k in keys if k.startswith(arg)]
    labels = {}
    for key in keys:
        if key.startswith(kw):
            labels[key] = key.removeprefix(kw)
        elif key in args:
            labels[key] = "item" if len(args) == 1 else "arg" + key.removeprefix(arg)
        else:
            labels[key] = key
    return labels


# -- reading the indexes back ------------------------------------------------------------------------


def reply_of(result: RunResult) -> dict[str, Any] | None:
    """The runner's reply: the last line of stdout, if it is one."""
    try:
        reply = json.loads(result.last_line() or "null")
    except (ValueError, RecursionError):
        return None
    return reply if isinstance(reply, dict) and isinstance(reply.get("ok"), bool) else None


def outcome(plan: MapPlan, sweep_id: str, record: IndexRecord) -> Any:
    """The value a finished index gave, or the ``MapError`` saying why there is none."""
    i, result = record.index, record.result
    reply = reply_of(result) if result is not None else None
    where = f"index {i} ({plan.describe(i)}) of sweep {sweep_id}"
    if reply is not None and reply["ok"]:
        try:
            return _codec.from_json(reply.get("value"))
        except (ValueError, TypeError, RecursionError) as e:
            return IndexFailed(f"{where}: its value cannot be read: {e}", i, sweep_id, "malformed value")
    if reply is not None:
        return remote_error(where, i, sweep_id, reply)
    reason = printable(record.reason or record.state.value)  # a node's error may be in it
    stderr = result.stderr[-2000:] if result is not None else ""
    detail = f"; stderr ends: {printable(stderr.strip().splitlines()[-1][:200])}" if stderr.strip() else ""
    return IndexFailed(f"{where} gave no value: {reason}{detail}", i, sweep_id, reason, stderr)


def remote_error(where: str, index: int, sweep_id: str, reply: dict[str, Any]) -> RemoteError:
    """The exception a node says the function raised; its words are the node's, shown as text (printed with
    a traceback, escape sequences in them once reached the user's terminal)."""
    type_name = printable(str(reply.get("type") or "Exception")[:200])
    message = printable(str(reply.get("message") or ""))
    tb = printable(str(reply.get("traceback") or ""))
    cls = _remote_class(type_name) if reply.get("builtin") is True else RemoteError
    text = f"{where} raised {type_name}" + (f": {message}" if message else "")
    try:
        error = cls(text, index, sweep_id, type_name, message, tb)
    except Exception:  # a built-in exception type with a constructor of its own
        error = RemoteError(text, index, sweep_id, type_name, message, tb)
    error.__cause__ = RemoteTraceback(tb) if tb else None
    return error


def _remote_class(type_name: str) -> type[RemoteError]:
    """``RemoteError`` that is also the built-in exception type it stands for (``except ValueError`` works)."""
    base = getattr(builtins, type_name, None)
    if not (isinstance(base, type) and issubclass(base, Exception)) or issubclass(base, RemoteError) \
            or issubclass(base, StopIteration | StopAsyncIteration):  # raised in map_iter, they would end the loop
        return RemoteError
    return _combined(base)


@functools.cache  # keyed by built-in types only: a bounded set, whatever a node replies
def _combined(base: type[Exception]) -> type[RemoteError]:
    try:
        return type(f"Remote{base.__name__}", (RemoteError, base), {"__module__": "shoal", "__str__": _first_arg})
    except TypeError:  # layouts that cannot be combined
        return RemoteError


def _first_arg(self: BaseException) -> str:
    return str(self.args[0]) if self.args else ""


class MapRun:
    """One map in progress: which indexes are done, what to hand out next, and its progress bar."""

    def __init__(self, plan: MapPlan, *, ordered: bool = False, progress: Progress | None = None) -> None:
        self.plan = plan
        self.ordered = ordered
        self.progress = progress
        self.sweep_id: str | None = None
        self.finished = plan.count == 0
        self.done: set[int] = set()
        self.failed = 0
        self.low = 0  # every index below this is done
        self._held: dict[int, Any] = {}  # ordered: outcomes waiting for those before them
        self._shown = 0  # indexes the progress bar shows ended
        self._next = 0

    def take(self, records: Iterable[IndexRecord]) -> list[tuple[int, Any]]:
        """Outcomes of the newly finished ``records``, to hand out now."""
        assert self.sweep_id is not None
        fresh = []
        for record in records:
            if record.state.is_terminal and record.index not in self.done and 0 <= record.index < self.plan.count:
                value = outcome(self.plan, self.sweep_id, record)
                self.done.add(record.index)
                self.failed += isinstance(value, MapError)
                fresh.append((record.index, value))
        while self.low in self.done:
            self.low += 1
        if fresh:
            self.ended(len(self.done))
        if not self.ordered:
            return fresh
        self._held.update(fresh)
        out = []
        while self._next in self._held:
            out.append((self._next, self._held.pop(self._next)))
            self._next += 1
        return out

    def cut_short(self, record: IndexRecord) -> bool:
        """Whether ``record`` is a finished index not handed out yet whose value may lie beyond the tail of
        stdout that a record keeps (``MAX_VALUE`` is larger): it is read from the index's results."""
        result = record.result
        return record.state.is_terminal and record.index not in self.done and result is not None \
            and result.stdout_truncated and result.cid is not None

    def ended(self, count: int) -> None:
        """``count`` indexes have ended, as far as the sweep says: the progress bar moves on (never back) even
        while an index below those runs on and their values wait to be read."""
        self._shown = max(self._shown, count)
        if self.progress is not None:
            self.progress.update(self._shown, self.failed)

    @property
    def complete(self) -> bool:
        return len(self.done) == self.plan.count


# -- progress ------------------------------------------------------------------------------------------


class Progress:
    """A one-line progress bar: redrawn in place in a terminal, a live output in a notebook.

    ``enabled=None``: on when ``stream`` (stderr) is a terminal or we run in a Jupyter kernel."""

    WIDTH = 30

    def __init__(self, total: int, *, stream: IO[str] | None = None, enabled: bool | None = None) -> None:
        self.total = total
        self.stream = stream if stream is not None else sys.stderr
        notebook = _in_notebook() and stream is None
        if enabled is None:
            enabled = notebook or _isatty(self.stream)
        self.enabled = enabled and total > 0
        self.started = time.monotonic()
        self._handle: Any = None
        self._last = ""
        if self.enabled and notebook:
            from IPython.display import display  # present: we are in a kernel

            self._handle = display(self.line(0, 0), display_id=True)
        elif self.enabled:
            self._draw(self.line(0, 0))

    def line(self, done: int, failed: int) -> str:
        filled = self.WIDTH * done // self.total if self.total else self.WIDTH
        bar = "#" * filled + "-" * (self.WIDTH - filled)
        failures = f", {failed} failed" if failed else ""
        return f"map [{bar}] {done}/{self.total}{failures} {time.monotonic() - self.started:.1f}s"

    def update(self, done: int, failed: int) -> None:
        if not self.enabled:
            return
        text = self.line(done, failed)
        if self._handle is not None:
            self._handle.update(text)
        else:
            self._draw(text)

    def close(self) -> None:
        if self.enabled and self._handle is None and self._last:
            self.stream.write("\n")
            self.stream.flush()
        self.enabled = False

    def _draw(self, text: str) -> None:
        self.stream.write("\r" + text.ljust(len(self._last)))
        self.stream.flush()
        self._last = text


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


def _in_notebook() -> bool:
    shell = sys.modules.get("IPython")
    if shell is None:
        return False
    try:
        ip = shell.get_ipython()  # type: ignore[attr-defined]
    except AttributeError:
        return False
    return ip is not None and type(ip).__name__ == "ZMQInteractiveShell"

"""Runs the job's program inside Pyodide, as ``python main.py ARGS`` or ``python -c CODE ARGS`` would.

Loaded by runner.mjs as module ``_shoal_driver`` before the memory snapshot is taken (so every interpreter
loaded from the snapshot has it, with its imports); ``run_job`` runs the job once it arrives and returns the
exit code.
The job (JSON): ``main`` or ``code``, ``argv`` (the program's arguments), ``env``, ``cwd``, and, used by
runner.mjs: ``seed`` (hex), ``mounts``, ``wheels``, ``memory_limit``.

Exit codes as CPython: 0; the ``SystemExit`` code; 1 with the traceback on stderr for an exception or a
syntax error; 2 when the script cannot be opened.
"""

import asyncio
import atexit
import builtins
import contextlib
import functools
import importlib
import io
import json
import os
import random
import sys
import tempfile
import time
import traceback
import types

_DRIVER = globals()

# Imported before the memory snapshot is taken, so jobs do not pay for them: what the driver needs and what
# programs commonly use. Importing is deterministic, so this changes nothing a program can observe.
PRELOAD = [
    *("argparse", "asyncio", "base64", "collections", "csv", "dataclasses", "datetime", "decimal", "enum"),
    *("fractions", "functools", "hashlib", "heapq", "io", "itertools", "math", "operator", "pathlib", "pprint"),
    *("re", "secrets", "shutil", "statistics", "string", "struct", "textwrap", "time", "typing", "uuid", "zlib"),
]
for _name in PRELOAD:
    importlib.import_module(_name)

_WARM_UP = """
import json, random, re, uuid
data = {f"k{i}": [i, str(i), i / 3, {"n": i}] for i in range(200)}
text = json.dumps(data, sort_keys=True)
assert json.loads(text) == data
words = re.findall(r"[a-z]+[0-9]", text)
total = sum(len(w) for w in words) + sum(random.random() for _ in range(100))
ids = sorted(str(uuid.UUID(int=i)) for i in range(50))
class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y
    def __repr__(self):
        return f"Point({self.x}, {self.y})"
points = [repr(Point(i, -i)) for i in range(300)]
try:
    {}["missing"]
except KeyError:
    pass
print(len(words), len(ids), len(points), file=sink)
"""


def warm_up(rounds: int) -> None:
    """Run typical code so V8 compiles the interpreter's hot paths before a job arrives."""
    sink = io.StringIO()
    code = compile(_WARM_UP, "<warm-up>", "exec")
    for _ in range(rounds):
        exec(code, {"sink": sink})


def prime(call_js) -> None:
    """Call a JavaScript function the ways ``run_job`` does, before the runner's checkpoint (runner.mjs).

    Pyodide interns a JavaScript string the first time Python calls a JavaScript function; done here, it is
    part of the state an interpreter is reset to, and a job's interpreter has nothing new to intern.
    """
    call_js()
    call_js(0.0)


def _exit_code(exc: SystemExit) -> int:
    code = exc.code
    if code is None:
        return 0
    if not isinstance(code, int):  # a bool is an int: sys.exit(False) exits 0, as in CPython
        print(code, file=sys.stderr)
        return 1
    return code & 0xFF


def _print_exception(exc: BaseException) -> None:
    """The traceback as CPython prints it: the driver's own frames left out."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_globals is _DRIVER:
        tb = tb.tb_next
    traceback.print_exception(type(exc), exc, tb)


class _NothingToWaitFor:
    """asyncio's selector in a sandbox without I/O: waiting for a timer moves the virtual clock instead."""

    def __init__(self, advance_ms) -> None:
        self._advance_ms = advance_ms

    def select(self, timeout=None):
        if timeout is None:
            raise RuntimeError("the program waits for an event that can never come (no I/O in this sandbox)")
        if timeout > 0:
            self._advance_ms(timeout * 1000)
        return []

    def close(self) -> None:
        pass


class _VirtualTimeLoop(asyncio.BaseEventLoop):
    """An asyncio loop for Node.js without stack switching, where Pyodide's own loop cannot block."""

    def __init__(self, advance_ms) -> None:
        super().__init__()
        self._selector = _NothingToWaitFor(advance_ms)

    def _process_events(self, event_list) -> None:
        pass

    def _write_to_self(self) -> None:
        pass


def _virtual_time(advance_ms) -> None:
    """Sleeping, in time.sleep and asyncio, moves the virtual clock at once: same output, no waiting."""

    @functools.wraps(time.sleep)
    def sleep(secs):
        if secs < 0:
            raise ValueError("sleep length must be non-negative")
        advance_ms(secs * 1000)

    time.sleep = sleep
    policy_base = getattr(asyncio.events, "_BaseDefaultEventLoopPolicy", None)
    set_policy = getattr(asyncio.events, "_set_event_loop_policy", None)
    if policy_base is None or set_policy is None:  # older Python: the public, not yet deprecated, names
        policy_base, set_policy = asyncio.events.BaseDefaultEventLoopPolicy, asyncio.set_event_loop_policy

    class Policy(policy_base):
        def _loop_factory(self):
            return _VirtualTimeLoop(advance_ms)

    set_policy(Policy())
    asyncio.events._set_running_loop(None)
    asyncio.run = asyncio.runners.run  # Pyodide's version needs stack switching


def _environment(job: dict) -> None:
    os.environ.pop("_", None)
    os.environ.update(job["env"])
    cwd = job.get("cwd")
    if cwd:
        os.chdir(cwd)
    os.environ["PWD"] = os.getcwd()


# Modules that reach JavaScript (and through it Node.js). The OS sandbox and Node's permission model are the
# boundary; this is a third layer, so that a job that asks for them is told plainly that it may not.
_BLOCKED_MODULES = frozenset({"js", "pyodide_js", "pyodide", "_pyodide", "_pyodide_core", "pyodide_http"})


def _blocked(name: str) -> bool:
    return name.split(".", 1)[0] in _BLOCKED_MODULES


def _guard_imports() -> None:
    """Refuse job code the modules that reach JavaScript, with an ImportError that says why."""
    real_import = builtins.__import__
    real_import_module = importlib.import_module

    def refuse(name: str) -> ImportError:
        return ImportError(f"module {name!r} is not available to Shoal jobs (no access to the JavaScript host)",
                           name=name)

    def guarded_import(name, globals=None, locals=None, fromlist=(), level=0):
        caller = (globals or {}).get("__name__", "") or ""
        if level == 0 and _blocked(name) and not _blocked(caller):
            raise refuse(name)
        return real_import(name, globals, locals, fromlist, level)

    def guarded_import_module(name, package=None):
        if _blocked(name):
            raise refuse(name)
        return real_import_module(name, package)

    builtins.__import__ = guarded_import
    importlib.import_module = guarded_import_module


def run_job(job_json: str, reset_determinism, advance_ms) -> int:
    sys.modules.pop(__name__, None)  # the driver is kept in the snapshot as a module; the program does not see it
    job = json.loads(job_json)
    _environment(job)
    _virtual_time(advance_ms)
    main = job.get("main")
    if main is not None:
        try:
            with open(main, "rb") as f:
                source = f.read()
        except OSError as e:
            sys.stderr.write(f"python: can't open file {main!r}: [Errno {e.errno}] {e.strerror}\n")
            return 2
        filename = main
        sys.argv = [main, *job["argv"]]
        script_dir = os.path.dirname(os.path.abspath(main))
        if sys.path and sys.path[0] == "":  # Pyodide starts with "" (the -c convention) first
            sys.path[0] = script_dir
        else:
            sys.path.insert(0, script_dir)
    else:
        source = job["code"]
        filename = "<string>"
        sys.argv = ["-c", *job["argv"]]
        if not sys.path or sys.path[0] != "":
            sys.path.insert(0, "")
    if job["wheels"]:
        importlib.invalidate_caches()  # so the wheels just installed are found

    module = types.ModuleType("__main__")
    module.__builtins__ = builtins
    if main is not None:
        module.__file__ = main
    sys.modules["__main__"] = module

    # From here on everything the program can observe derives from the job's seed: the entropy stream and
    # the virtual clock restart, and state seeded while Pyodide loaded is seeded again from that stream.
    reset_determinism()
    random.seed()
    tempfile._name_sequence = None
    if job.get("guard_imports", True):
        _guard_imports()

    try:
        try:
            code = compile(source, filename, "exec")
            exec(code, module.__dict__)
            status = 0
        finally:
            atexit._run_exitfuncs()
    except SystemExit as e:
        status = _exit_code(e)
    except BaseException as e:
        _print_exception(e)
        status = 1
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    return status

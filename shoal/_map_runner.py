"""The program each index of a ``Client.map`` sweep runs, on the remote interpreter.

Shipped as text after ``shoal/_codec.py`` (so ``to_json``, ``from_json``, ``dumps`` and ``loads`` are
defined) and before a last line ``raise SystemExit(main(BUNDLE))``; see ``shoal._map.program``.
It uses the standard library only and syntax every Python from 3.8 reads.

It rebuilds the function's namespace from the bundle (``shoal._ship``), reads its arguments from
the environment (``SHOAL_ARG_<i>`` positional, ``SHOAL_KW_<name>`` keyword, each encoded with the
codec), calls the function with its prints sent to stderr, and writes one line to stdout:
``{"ok": true, "value": ...}`` or ``{"ok": false, "type": ..., "message": ..., "traceback": ...}``.
It exits 0 with a value, 1 with an exception, so ``shoal`` shows the index as failed.
"""

import contextlib
import importlib
import json
import linecache
import os
import sys
import traceback

MAX_VALUE = 900 * 1024  # bytes of encoded return value: stdout keeps 1 MiB, and the line must fit
MAX_MESSAGE = 4000  # characters of an exception's message kept
MAX_TRACEBACK = 64 * 1024  # characters of a traceback kept (its end, where the error is)


def build_namespace(bundle):
    """The function's module namespace: imports, data, then each source executed in order."""
    ns = {"__name__": "__shoal_map__", "__builtins__": __builtins__}
    for name, module, attribute in bundle["imports"]:
        value = importlib.import_module(module)
        for part in (attribute.split(".") if attribute else ()):
            value = getattr(value, part)
        ns[name] = value
    for name, encoded in bundle["data"].items():
        ns[name] = from_json(encoded)  # noqa: F821 (defined by _codec, shipped before this text)
    files = {}
    for name, defines, filename, line, text in bundle["sources"]:
        if not text:  # an alias
            ns[name] = ns[defines]
            continue
        lines = files.setdefault(filename, [])
        body = text.splitlines(True)
        if len(lines) < line - 1 + len(body):
            lines.extend(["\n"] * (line - 1 + len(body) - len(lines)))
        lines[line - 1:line - 1 + len(body)] = body
        # remote tracebacks show your file name, line numbers and lines
        linecache.cache[filename] = (len("".join(lines)), None, lines, filename)
        exec(compile("\n" * (line - 1) + text, filename, "exec"), ns)
        if defines != name:
            ns[name] = ns[defines]
    return ns


def arguments(bundle, environ):
    args = [from_json(json.loads(environ[key])) for key in bundle["args"]]  # noqa: F821
    kwargs = {name: from_json(json.loads(environ[key])) for name, key in bundle["kwargs"]}  # noqa: F821
    return args, kwargs


def failure(error):
    """The reply for an exception: its type, message and traceback, without this program's frames."""
    tb = error.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename == "<string>":
        tb = tb.tb_next
    text = "".join(traceback.format_exception(type(error), error, tb or error.__traceback__))
    kind = type(error)
    name = kind.__qualname__ if kind.__module__ == "builtins" else kind.__module__ + "." + kind.__qualname__
    return {"ok": False, "type": name, "builtin": kind.__module__ == "builtins",
            "message": str(error)[:MAX_MESSAGE], "traceback": text[-MAX_TRACEBACK:]}


def main(bundle_text):
    try:
        bundle = json.loads(bundle_text)
        ns = build_namespace(bundle)
        args, kwargs = arguments(bundle, os.environ)
        with contextlib.redirect_stdout(sys.stderr):  # stdout carries the reply alone
            value = ns[bundle["entry"]](*args, **kwargs)
        line = json.dumps({"ok": True, "value": to_json(value)}, separators=(",", ":"))  # noqa: F821
        if len(line.encode("utf-8", "replace")) > MAX_VALUE:
            raise ValueError(f"the return value takes {len(line)} bytes encoded: at most {MAX_VALUE} come back; "
                             "write large results to a file output instead")
        reply, code = line, 0
    except BaseException as error:  # the function's SystemExit is an answer too
        reply, code = json.dumps(failure(error), separators=(",", ":")), 1
    sys.stdout.flush()
    sys.stdout.write("\n" + reply + "\n")
    sys.stdout.flush()
    return code

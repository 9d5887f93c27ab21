"""Shipping a function as source: what ``Client.map`` sends so another interpreter can call it.

The remote interpreter's Python version may differ from the caller's, so the function travels
as source text, never bytecode. ``ship(fn)`` collects, following every name the source uses:

- the source of the function, and of the functions and classes it uses that are defined in the
  caller's own code (a script, a notebook cell, a module outside the installed packages);
- imports, by name, for modules and for objects from the standard library or installed
  packages (``import numpy as np``, ``from math import sqrt``);
- data, encoded with ``shoal._codec``, for closure cells and module globals that are plain values.

Anything else (an open file, a client, an instance of your own class) is refused with
``CannotShip`` naming it, before anything is submitted. Names come from ``symtable`` on the
source, so locals, attribute names and builtins are never mistaken for globals. Decorators are
part of the source and apply again remotely. Source is found where ``inspect`` finds
it: the file, or ``linecache`` (where IPython and Jupyter keep cells). A lambda is found in its
line's source; several lambdas there that compile alike are refused as ambiguous.

The result, ``Shipment.bundle()``, is JSON-able data that ``shoal._map_runner`` turns back into a
namespace, executing each source under its original file name and line number so that remote
tracebacks point at your code.
"""

from __future__ import annotations

import ast
import builtins
import inspect
import linecache
import symtable
import sys
import sysconfig
import textwrap
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from shoal import _codec
from shoal._errors import CannotShip

LAMBDA_NAME = "__shoal_fn__"


@dataclass(frozen=True)
class Source:
    """Code that defines ``defines`` when executed; then ``name`` is bound to it (an alias may differ)."""

    name: str
    defines: str
    filename: str
    line: int  # where ``text`` starts in ``filename``
    text: str


@dataclass
class Shipment:
    entry: str
    sources: list[Source] = field(default_factory=list)
    imports: list[tuple[str, str, str | None]] = field(default_factory=list)  # name, module, attribute path
    data: dict[str, Any] = field(default_factory=dict)  # name -> encoded value

    def bundle(self) -> dict[str, Any]:
        return {
            "entry": self.entry,
            "imports": [list(i) for i in self.imports],
            "data": self.data,
            "sources": [[s.name, s.defines, s.filename, s.line, s.text] for s in self.sources],
        }


def ship(fn: Any) -> Shipment:
    """What it takes to call ``fn`` elsewhere. Raises ``CannotShip`` saying what cannot travel."""
    if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
        raise CannotShip(f"{_describe(fn)} is async: map a plain function")
    fn = _unwrapped(fn)
    if isinstance(fn, types.FunctionType):
        collector = _Collector()
        name = LAMBDA_NAME if fn.__name__ == "<lambda>" else fn.__name__
        collector.bind(name, fn, "the mapped function")
        return collector.shipment(name)
    if callable(fn) and _importable(fn) is not None:  # e.g. math.sqrt
        collector = _Collector()
        collector.bind("__shoal_fn__", fn, "the mapped function")
        return collector.shipment("__shoal_fn__")
    raise CannotShip(f"{_describe(fn)} cannot be shipped: map a function defined with def (or a lambda), "
                     "or a function of the standard library or an installed package")


class _Collector:
    def __init__(self) -> None:
        self.bound: dict[str, Any] = {}  # remote name -> the local object it stands for
        self.sources: list[Source] = []
        self.imports: list[tuple[str, str, str | None]] = []
        self.data: dict[str, Any] = {}

    def shipment(self, entry: str) -> Shipment:
        return Shipment(entry, self.sources, self.imports, self.data)

    def bind(self, name: str, value: Any, used_by: str) -> None:
        value = _unwrapped(value)
        if name in self.bound:
            if self.bound[name] is value or (name in self.data and _same_data(self.bound[name], value)):
                return
            raise CannotShip(f"the name {name!r} stands for two different things ({used_by} and another "
                             "function it ships with): rename one of them")
        self.bound[name] = value
        if isinstance(value, types.ModuleType):
            self._import_module(name, value, used_by)
        elif isinstance(value, (types.FunctionType, type)) and not _is_library(getattr(value, "__module__", None)):
            self._source(name, value, used_by)
        elif (where := _importable(value)) is not None:
            self.imports.append((name, *where))
        else:
            try:
                self.data[name] = _codec.to_json(value)
            except TypeError as e:
                raise CannotShip(f"{used_by} uses {name!r}, which cannot be shipped: {e}; or make it a module-level "
                                 "function, class or import") from None

    def _import_module(self, name: str, module: types.ModuleType, used_by: str) -> None:
        if not _is_library(module.__name__):
            where = getattr(module, "__file__", None) or "?"
            raise CannotShip(f"{used_by} uses module {module.__name__!r} ({where}), which is neither the standard "
                             "library nor an installed package: the remote interpreter cannot import it; define "
                             "what you need in the same file or cell instead")
        self.imports.append((name, module.__name__, None))

    def _source(self, name: str, obj: types.FunctionType | type, used_by: str) -> None:
        what = _describe(obj)
        if isinstance(obj, types.FunctionType) and obj.__name__ == "<lambda>":
            text, filename, line = _lambda_source(obj, name)
            defines = name
        else:
            if "<locals>" in obj.__qualname__ and isinstance(obj, type):
                raise CannotShip(f"{used_by} uses {what}, a class defined inside a function: define it at "
                                 "module level")
            defines = obj.__name__
            if defines != name:  # an alias (g = f): ship f, then bind g to it
                self.bind(defines, obj, what)
                self.sources.append(Source(name, defines, "", 0, ""))
                return
            text, filename, line = _definition_source(obj, what)
        if isinstance(obj, types.FunctionType):
            scope = _scope_of(obj)
        else:
            scope = dict(vars(sys.modules[obj.__module__])) if obj.__module__ in sys.modules else {}
        for free in _free_names(text, filename, defines):
            if free in scope:
                self.bind(free, scope[free], what)
            # else: a builtin, or a name that is undefined here too (NameError there as here)
        self.sources.append(Source(name, defines, filename, line, text))


def _scope_of(fn: types.FunctionType) -> dict[str, Any]:
    """The names ``fn`` sees: its module's globals, then its closure cells over them."""
    scope = {k: v for k, v in fn.__globals__.items() if not hasattr(builtins, k) or v is not getattr(builtins, k)}
    for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
        try:
            scope[var] = cell.cell_contents
        except ValueError:  # an empty cell: assigned later in the enclosing function
            raise CannotShip(f"{_describe(fn)} uses {var!r} from its enclosing function before it is "
                             "assigned") from None
    return scope


def _definition_source(obj: types.FunctionType | type, what: str) -> tuple[str, str, int]:
    """The ``def``/``class`` statement with its decorators, dedented, with its file and first line."""
    try:
        lines, first = inspect.getsourcelines(obj)
        filename = inspect.getsourcefile(obj) or inspect.getfile(obj)
    except (OSError, TypeError) as e:
        module = sys.modules.get(getattr(obj, "__module__", ""))
        if isinstance(obj, type) and getattr(module, "__file__", None):  # its module is a file: no class statement
            raise CannotShip(f"cannot find the source of {what}: it was made by a call (namedtuple, make_dataclass, "
                             "type()), not a class statement; return a tuple or a dict, or write it as a class"
                             ) from None
        raise CannotShip(f"cannot find the source of {what} ({e}): define it in a file or a notebook cell") from None
    text = textwrap.dedent("".join(lines))
    try:
        ast.parse(text)
    except SyntaxError:  # e.g. a multi-line string at column 0 inside an indented function
        text, first = "if 1:\n" + "".join(lines), first - 1
        try:
            ast.parse(text)
        except SyntaxError as e:
            raise CannotShip(f"cannot parse the source of {what}: {e}") from None
    return text, filename, max(first, 1)


def _lambda_source(fn: types.FunctionType, name: str) -> tuple[str, str, int]:
    """``name = (lambda ...)``, from the one lambda on its line that compiles to ``fn``'s code."""
    code = fn.__code__
    filename = code.co_filename
    lines = linecache.getlines(filename, fn.__globals__)
    if not lines:
        raise CannotShip(f"cannot find the source of {_describe(fn)}: define it with def in a file or a cell")
    whole = "".join(lines)
    try:
        tree = ast.parse(whole)
    except SyntaxError:
        raise CannotShip(f"cannot parse {filename} to find {_describe(fn)}: define the function with def") from None
    found = [node for node in ast.walk(tree) if isinstance(node, ast.Lambda) and node.lineno == code.co_firstlineno]
    texts = [t for t in (ast.get_source_segment(whole, node) for node in found) if t]
    matching = [t for t in texts if _compiles_to(t, filename, code)]
    if len(matching) != 1:
        why = "no lambda there compiles to it" if not matching else "several lambdas there look alike"
        raise CannotShip(f"cannot tell which lambda on line {code.co_firstlineno} of {filename} to ship ({why}): "
                         "define the function with def")
    return f"{name} = ({matching[0]})", filename, code.co_firstlineno


def _compiles_to(text: str, filename: str, code: types.CodeType) -> bool:
    try:
        compiled = compile(text, filename, "eval")
    except SyntaxError:
        return False
    lam = next((c for c in compiled.co_consts if isinstance(c, types.CodeType)), None)
    return lam is not None and _shape(lam) == _shape(code)


def _shape(code: types.CodeType) -> tuple[Any, ...]:
    consts = tuple(_shape(c) if isinstance(c, types.CodeType) else repr(c) for c in code.co_consts)
    return code.co_code, code.co_varnames, code.co_names, code.co_freevars, consts


def _free_names(text: str, filename: str, defines: str) -> list[str]:
    """Names the code reads from outside itself (globals, or the enclosing function's cells), in order."""
    try:
        top = symtable.symtable(text, filename, "exec")
    except SyntaxError as e:
        raise CannotShip(f"cannot analyse the source of {defines}: {e}") from None
    defined = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    names: list[str] = []

    def visit(table: symtable.SymbolTable) -> None:
        for sym in table.get_symbols():
            n = sym.get_name()
            if sym.is_global() and sym.is_referenced() and n not in defined and n not in names:
                names.append(n)
        for child in table.get_children():
            visit(child)

    visit(top)
    return names


def _importable(obj: Any) -> tuple[str, str] | None:
    """(module, attribute path) to import ``obj`` by, if it comes from a library and is found there."""
    module = getattr(obj, "__module__", None)
    qualname = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    if not isinstance(module, str) or not isinstance(qualname, str) or "<" in qualname:
        return None
    if not _is_library(module) or module not in sys.modules:
        return None
    target: Any = sys.modules[module]
    for part in qualname.split("."):
        target = getattr(target, part, None)
    return (module, qualname) if target is obj else None


def _is_library(module: str | None) -> bool:
    """Whether ``module`` belongs to the standard library or an installed package (not your own code)."""
    if not module or module == "__main__":
        return False
    top = module.partition(".")[0]
    if top in sys.builtin_module_names or top in getattr(sys, "stdlib_module_names", ()):
        return True
    found = sys.modules.get(top)
    path = getattr(found, "__file__", None)
    if path is None:
        return False
    return any(_under(Path(path), root) for root in _library_roots())


def _library_roots() -> list[Path]:
    paths = sysconfig.get_paths()
    return [Path(paths[k]).resolve() for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths]


def _under(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root)
    except ValueError:
        return False
    return True


def _unwrapped(obj: Any) -> Any:
    """A decorated function of your own code stands for its source, decorators included (they apply
    again remotely); ``functools.wraps`` records it as ``__wrapped__``."""
    if isinstance(obj, type) or not hasattr(obj, "__wrapped__"):
        return obj
    inner = inspect.unwrap(obj)
    return inner if isinstance(inner, types.FunctionType) and not _is_library(inner.__module__) else obj


def _same_data(a: Any, b: Any) -> bool:
    try:
        return _codec.to_json(a) == _codec.to_json(b)
    except TypeError:
        return False


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    if isinstance(obj, type):
        return f"class {name}"
    if isinstance(obj, types.FunctionType):
        return f"function {name}"
    return f"{type(obj).__qualname__} {name}"

"""``shoal._ship``: functions shipped as source, with what they use, rebuilt by the runner.

Each shipped function is rebuilt here with ``shoal._map_runner.build_namespace`` (the code every
index runs) in a fresh namespace, and called: what a remote interpreter would do.
"""

from __future__ import annotations

import functools
import json
import linecache
import math
import os.path
import threading
from collections import OrderedDict, namedtuple
from typing import Any

import pytest

from shoal import CannotShip
from shoal._codec import from_json
from shoal._map_runner import build_namespace
from shoal._ship import ship

RATE = 0.25
LIMITS = {"low": (1, 2), 3: "three"}  # a non-string key: shipped as a tagged dict
LOCK = threading.Lock()


def rebuilt(fn: Any) -> Any:
    """``fn`` as the remote interpreter gets it: through JSON, without this module's globals."""
    bundle = json.loads(json.dumps(ship(fn).bundle()))
    import shoal._map_runner as runner

    runner.from_json = from_json  # the runner is shipped after the codec, which defines it
    lines = dict(linecache.cache)  # the runner fills linecache with the shipped lines: keep ours
    try:
        return build_namespace(bundle)[bundle["entry"]]
    finally:
        del runner.from_json
        linecache.cache.clear()
        linecache.cache.update(lines)


def _helper(x: float) -> float:
    return x * RATE + math.sqrt(4)


def uses_helper_and_globals(x: float) -> tuple:
    return _helper(x), LIMITS[3], LIMITS["low"], os.path.join("a", "b")


def recursive(n: int) -> int:
    return 1 if n <= 1 else n * recursive(n - 1)


Pair = namedtuple("Pair", "x y")  # a class made by a factory, as a notebook user writes one


def makes_pair(x: float) -> Pair:
    return Pair(x, x)


class Point:
    def __init__(self, x: float) -> None:
        self.x = x

    def scaled(self) -> float:
        return self.x * RATE


def uses_class(x: float) -> float:
    return Point(x).scaled()


def uses_lock(x: int) -> int:
    with LOCK:
        return x


def logged(fn):
    @functools.wraps(fn)
    def wrapper(*args):
        return ("logged", fn(*args))

    return wrapper


@logged
def decorated(x: int) -> int:
    return x + 1


def test_a_file_function_travels_with_its_helpers_globals_and_imports() -> None:
    assert rebuilt(uses_helper_and_globals)(2.0) == uses_helper_and_globals(2.0)
    shipment = ship(uses_helper_and_globals)
    assert [s.name for s in shipment.sources] == ["_helper", "uses_helper_and_globals"]  # helpers first
    assert ("math", "math", None) in shipment.imports and ("os", "os", None) in shipment.imports
    assert set(shipment.data) == {"RATE", "LIMITS"}  # data only: no builtins, no locals, no attribute names


def test_recursion_classes_and_library_objects() -> None:
    assert rebuilt(recursive)(5) == 120
    assert rebuilt(uses_class)(4.0) == 1.0

    def counts(words: list) -> list:
        return list(OrderedDict.fromkeys(words))

    assert rebuilt(counts)(["b", "a", "b"]) == ["b", "a"]
    assert ("OrderedDict", "collections", "OrderedDict") in ship(counts).imports


def test_closures_carry_their_cell_values_and_nested_helpers() -> None:
    def make(k: int):
        table = {"x": [1, 2]}

        def square(v: int) -> int:
            return v * v

        def f(x: int) -> tuple:
            return square(x) + k, table["x"], (lambda y: y + k)(x)

        return f

    f = make(10)
    assert rebuilt(f)(3) == (19, [1, 2], 13)
    assert ship(f).data == {"k": 10, "table": {"x": [1, 2]}}


def test_lambdas_are_found_on_their_line() -> None:
    double = lambda x: x * 2  # noqa: E731
    assert rebuilt(double)(21) == 42
    pair = [lambda x: x + 1, lambda x: x - 1]  # two on a line, told apart by their code
    assert rebuilt(pair[1])(1) == 0
    same = [lambda x: x, lambda x: x]  # alike: which one is ambiguous
    with pytest.raises(CannotShip, match="several lambdas"):
        ship(same[0])


def test_decorators_apply_again_remotely() -> None:
    assert rebuilt(decorated)(1) == ("logged", 2)
    assert decorated(1) == ("logged", 2)


def test_a_notebook_cell_function_is_found_through_linecache() -> None:
    # IPython compiles each cell under a made-up file name and keeps its text in linecache
    filename = "<ipython-input-7-0123456789ab>"
    cell = ("SCALE = 3\n\ndef cell_fn(x):\n    return helper_in_cell(x) * SCALE\n\n"
            "def helper_in_cell(x):\n    return x + 1\n")
    linecache.cache[filename] = (len(cell), None, cell.splitlines(True), filename)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    try:
        exec(compile(cell, filename, "exec"), namespace)
        f = namespace["cell_fn"]
        assert rebuilt(f)(1) == 6
        assert {s.filename for s in ship(f).sources} == {filename}
    finally:
        del linecache.cache[filename]


def test_what_cannot_travel_is_refused_before_submitting_and_named() -> None:
    with pytest.raises(CannotShip, match=r"'LOCK'.*lock"):
        ship(uses_lock)
    namespace: dict[str, Any] = {}
    exec("def no_source(x):\n    return x\n", namespace)  # no file, nothing in linecache
    with pytest.raises(CannotShip, match="cannot find the source"):
        ship(namespace["no_source"])

    with pytest.raises(CannotShip, match=r"class Pair: it was made by a call \(namedtuple, .*return a tuple or a dict"):
        ship(makes_pair)  # its module is a file: "define it in a file" would send its author in circles

    async def coro(x: int) -> int:
        return x

    with pytest.raises(CannotShip, match="async"):
        ship(coro)
    with pytest.raises(CannotShip, match="cannot be shipped"):
        ship(functools.partial(recursive, 3))


def test_modules_of_your_own_are_refused(tmp_path, monkeypatch) -> None:
    (tmp_path / "mine_for_ship_test.py").write_text("VALUE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import mine_for_ship_test

    def uses_mine(x: int) -> int:
        return x + mine_for_ship_test.VALUE

    with pytest.raises(CannotShip, match=r"mine_for_ship_test.*cannot import it"):
        ship(uses_mine)


def test_library_functions_ship_as_imports() -> None:
    assert rebuilt(math.sqrt)(9.0) == 3.0
    assert rebuilt(os.path.basename)("/a/b") == "b"


def test_a_remote_traceback_points_at_the_original_file_and_line() -> None:
    def fails(x: int) -> int:
        raise ValueError(f"bad {x}")

    f = rebuilt(fails)
    with pytest.raises(ValueError) as caught:
        f(3)
    frame = caught.traceback[-1]
    assert frame.path.name == os.path.basename(__file__)
    assert frame.lineno == fails.__code__.co_firstlineno  # 0-based: the line after the def
    assert "raise ValueError" in str(frame.statement)

"""``shoal._codec``: what ``Client.map`` sends and gets back, version-independent and safe to decode."""

from __future__ import annotations

import enum
import json
import math

import pytest

from shoal._codec import dumps, loads


class Colour(enum.IntEnum):
    RED = 1


@pytest.mark.parametrize("value", [
    None, True, 0, -7, 2**80, 1.5, "naïve", [1, [2, "x"]], {"a": {"b": None}},
    (1, (2, 3)), {1: "int key", (1, 2): "tuple key"}, {"__shoal__": "a user's own key"},
    b"\x00\xff", bytearray(b"ab"), {3, 1, 2}, frozenset({"x"}), 1 + 2j, [],
])
def test_values_come_back_equal_and_of_the_same_type(value) -> None:
    back = loads(dumps(value))
    assert back == value
    assert type(back) is (bytes if isinstance(value, bytearray) else type(value))


def test_floats_keep_nan_and_infinity_and_subclasses_travel_as_their_base() -> None:
    back = loads(dumps([math.inf, -math.inf, math.nan]))
    assert back[:2] == [math.inf, -math.inf] and math.isnan(back[2])
    assert loads(dumps(Colour.RED)) == 1 and type(loads(dumps(Colour.RED))) is int


def test_objects_with_tolist_travel_as_lists() -> None:
    class ArrayLike:
        def tolist(self) -> list:
            return [[1.0, 2.0]]

    assert loads(dumps(ArrayLike())) == [[1.0, 2.0]]


def test_a_set_is_the_same_text_whatever_its_order() -> None:
    assert dumps({"b", "a", "c"}) == dumps({"c", "a", "b"})


def test_anything_else_is_refused_naming_its_type() -> None:
    with pytest.raises(TypeError, match="object"):
        dumps(object())
    with pytest.raises(TypeError, match="nested deeper"):
        deep: list = []
        for _ in range(300):
            deep = [deep]
        dumps(deep)


@pytest.mark.parametrize("text", [
    '{"__shoal__": "pickle", "items": []}',  # an unknown tag
    '{"__shoal__": "tuple"}',  # no items
    '{"__shoal__": "dict", "items": [[[1], 2]]}',  # an unhashable key
    '{"__shoal__": "bytes", "base64": "***"}',
    "[" * 5000 + "]" * 5000,  # deeper than anything dumps writes
    "not json",
])
def test_text_dumps_would_never_write_is_a_value_error(text: str) -> None:
    with pytest.raises(ValueError):
        loads(text)


def test_decoding_builds_data_only() -> None:
    text = json.dumps({"__shoal__": "dict", "items": [["__class__", "os.system"]]})
    assert loads(text) == {"__class__": "os.system"}  # a string, never a lookup


def test_a_set_or_dict_whose_members_hashes_collide_is_refused_at_once() -> None:
    """Ints hash to themselves modulo 2**61 - 1: a node's 40,000 multiples of it (under 1 MB) took 8 s to decode
    into a set, quadratic in its size. Honest sets and dicts of any size decode as before."""
    for tag in ("set", "frozenset"):
        with pytest.raises(ValueError, match="hashes collide"):
            loads(json.dumps({"__shoal__": tag, "items": [k * (2**61 - 1) for k in range(40_000)]}))
    pairs = [[k * (2**61 - 1), k] for k in range(40_000)]
    with pytest.raises(ValueError, match="hashes collide"):
        loads(json.dumps({"__shoal__": "dict", "items": pairs}))
    assert loads(dumps(set(range(100_000)))) == set(range(100_000))
    assert loads(dumps({(i, -i): i for i in range(1000)})) == {(i, -i): i for i in range(1000)}

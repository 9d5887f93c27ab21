"""Values that travel between ``Client.map`` and the remote interpreter: JSON, with a few tags.

The caller's and the remote interpreter's Python versions may differ, so nothing version-bound
(pickle, marshal, bytecode) crosses: items, closure data and return values are JSON, with
these additions, each written as an object ``{"__shoal__": TAG, ...}``:

    tuple, set, frozenset   {"__shoal__": "tuple", "items": [...]}
    bytes, bytearray        {"__shoal__": "bytes", "base64": "..."}
    complex                 {"__shoal__": "complex", "real": x, "imag": y}
    dict with other keys    {"__shoal__": "dict", "items": [[key, value], ...]} (also a dict that has
                            a "__shoal__" key of its own)

Floats keep ``nan`` and ``inf`` (as Python's ``json`` writes them). Subclasses of the basic types
(``IntEnum``, ``numpy.float64``) travel as their base type, and objects with a ``tolist()`` method
(numpy arrays and scalars) as what it returns. Anything else is refused with a ``TypeError`` that
names its type. Decoding builds only these types: no code runs, whoever wrote the text.

This module is shipped verbatim, as text, to the remote interpreter (see ``shoal._map``), so it
uses the standard library only and syntax every Python from 3.8 reads.
"""

import base64
import json

TAG = "__shoal__"
MAX_DEPTH = 200  # nesting beyond this is refused on both sides (and json's recursion never hit)
SPREAD_CHECKED_FROM = 64  # members of a set or keys of a dict past which their hashes are checked for collisions


def to_json(value, _depth=0):
    """``value`` as plain JSON data (tagged where JSON has no such type)."""
    if _depth > MAX_DEPTH:
        raise TypeError(f"value nested deeper than {MAX_DEPTH} levels")
    if value is None or type(value) in (bool, str, int, float):
        return value
    depth = _depth + 1
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, list):
        return [to_json(v, depth) for v in value]
    if isinstance(value, tuple):
        return {TAG: "tuple", "items": [to_json(v, depth) for v in value]}
    if isinstance(value, (set, frozenset)):
        items = [to_json(v, depth) for v in value]
        # a set's order follows hashes; sorted, the same set is the same text everywhere
        items.sort(key=lambda v: json.dumps(v, sort_keys=True))
        return {TAG: "frozenset" if isinstance(value, frozenset) else "set", "items": items}
    if isinstance(value, dict):
        if all(type(k) is str for k in value) and TAG not in value:
            return {k: to_json(v, depth) for k, v in value.items()}
        return {TAG: "dict", "items": [[to_json(k, depth), to_json(v, depth)] for k, v in value.items()]}
    if isinstance(value, (bytes, bytearray)):
        return {TAG: "bytes", "base64": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, complex):
        return {TAG: "complex", "real": value.real, "imag": value.imag}
    tolist = getattr(type(value), "tolist", None)
    if callable(tolist):  # numpy arrays and scalars
        return to_json(value.tolist(), depth)
    raise TypeError(f"a value of type {type(value).__module__}.{type(value).__qualname__} cannot be sent: "
                    "use JSON-like data (None, bool, int, float, str, list, dict), tuples, sets, bytes or complex")


def from_json(data, _depth=0):
    """The value ``to_json`` made ``data`` from. Raises ``ValueError`` on anything it never makes."""
    if _depth > MAX_DEPTH:
        raise ValueError(f"value nested deeper than {MAX_DEPTH} levels")
    depth = _depth + 1
    if data is None or type(data) in (bool, str, int, float):
        return data
    if type(data) is list:
        return [from_json(v, depth) for v in data]
    if type(data) is not dict:
        raise ValueError(f"unexpected {type(data).__name__} in encoded value")
    tag = data.get(TAG)
    if tag is None:
        return {k: from_json(v, depth) for k, v in data.items()}
    if tag in ("tuple", "set", "frozenset"):
        items = [from_json(v, depth) for v in _items(data)]
        return tuple(items) if tag == "tuple" else {"set": set, "frozenset": frozenset}[tag](_spread(items))
    if tag == "dict":
        pairs = _items(data)
        if not all(type(p) is list and len(p) == 2 for p in pairs):
            raise ValueError("a tagged dict holds [key, value] pairs")
        keys = _spread([from_json(k, depth) for k, _ in pairs])
        return dict(zip(keys, (from_json(v, depth) for _, v in pairs), strict=True))
    if tag == "bytes" and type(data.get("base64")) is str:
        return base64.b64decode(data["base64"], validate=True)
    if tag == "complex" and all(type(data.get(k)) in (int, float) for k in ("real", "imag")):
        return complex(data["real"], data["imag"])
    raise ValueError(f"unknown or malformed tag {tag!r} in encoded value")


def _spread(members):
    """``members`` of a set, or keys of a dict, refused when their hashes mostly coincide: an int hashes to
    itself modulo 2**61 - 1, so a crafted value (40,000 multiples of it, under 1 MB) made building one take
    8 seconds, quadratic in its size. Honest members rarely share a hash."""
    if len(members) > SPREAD_CHECKED_FROM and len({hash(m) for m in members}) * 2 < len(members):
        raise ValueError("a set or dict whose members' hashes collide (a crafted value)")
    return members


def _items(data):
    items = data.get("items")
    if type(items) is not list:
        raise ValueError(f"tagged {data.get(TAG)!r} without a list of items")
    return items


def dumps(value):
    """One line of JSON text for ``value``."""
    return json.dumps(to_json(value), separators=(",", ":"), ensure_ascii=False)


def loads(text):
    """The value ``dumps`` wrote as ``text``; ``ValueError`` for text it would never write."""
    try:
        return from_json(json.loads(text))
    except RecursionError:
        raise ValueError("value nested too deeply") from None
    except TypeError as e:  # e.g. a list as a dict key or set member: never written by dumps
        raise ValueError(f"malformed encoded value: {e}") from None

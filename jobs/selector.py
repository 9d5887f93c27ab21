"""Node labels and job selectors, with the rules of Kubernetes labels and label selectors (pure).

A compute node carries labels (``zone=eu``, ``gpu=a100``); a job's ``selector`` says which
nodes may run it::

    zone=eu            the label is there with this value (also ``zone==eu``)
    zone!=eu           the label is missing or has another value
    gpu in (a100,h100) the label is there with one of these values
    gpu notin (k80)    the label is missing or has none of these values
    spot               the label is there (any value)
    !spot              the label is missing

Requirements are joined by commas, meaning AND; the empty selector matches every node. Labels
come from peers in their node info, so both are bounded and checked wherever they are read.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from jobs.errors import ShoalError

MAX_LABELS = 32  # labels one node may carry
MAX_LABELS_CHARS = 2048  # their keys and values together: node info stays well within its wire limit
MAX_SELECTOR_CHARS = 1024
MAX_REQUIREMENTS = 32

_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,61}[A-Za-z0-9])?")  # a key's name and a value: 1..63 chars
_PREFIX = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*")  # a DNS subdomain
_WORD = re.compile(r"[A-Za-z0-9_./-]+")  # a key or a value, as the tokenizer sees it (checked after)
_OPS = ("==", "!=", "=", "!", "(", ")", ",")


class LabelError(ShoalError, ValueError):
    """A label or a selector breaks the rules; the message says which and where.

    A ``ValueError`` too, so that pydantic reports it as a field's problem (a 422 from the API)."""


def key_problem(key: str) -> str | None:
    """Why ``key`` is not a valid label key (``[prefix/]name``), or None."""
    prefix, slash, name = key.rpartition("/")
    if slash and not (0 < len(prefix) <= 253 and _PREFIX.fullmatch(prefix)):
        return f"label key {key!r}: the prefix before '/' must be a DNS subdomain of at most 253 characters"
    if not _NAME.fullmatch(name):
        return (f"label key {key!r}: the name must be 1 to 63 characters: letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit")
    return None


def value_problem(value: str) -> str | None:
    """Why ``value`` is not a valid label value (empty, or like a key's name), or None."""
    if value and not _NAME.fullmatch(value):
        return (f"label value {value!r}: at most 63 characters: letters, digits, '-', '_' or '.', "
                "starting and ending with a letter or digit (or empty)")
    return None


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """``labels`` if every key and value is valid and they are within bounds; else ``LabelError``."""
    if len(labels) > MAX_LABELS:
        raise LabelError(f"{len(labels)} labels: at most {MAX_LABELS}")
    size = sum(len(k) + len(v) for k, v in labels.items())
    if size > MAX_LABELS_CHARS:
        raise LabelError(f"labels take {size} characters: at most {MAX_LABELS_CHARS}")
    for key, value in labels.items():
        if problem := key_problem(key) or value_problem(value):
            raise LabelError(problem)
    return dict(labels)


def parse_labels(items: Iterable[str]) -> dict[str, str]:
    """``["zone=eu", "gpu=a100"]`` (as ``--label`` takes them) → a checked dict; a key given twice is an error."""
    labels: dict[str, str] = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq:
            raise LabelError(f"label {item!r}: expected KEY=VALUE, e.g. zone=eu")
        if key in labels:
            raise LabelError(f"label {key!r} given twice")
        labels[key] = value
    return check_labels(labels)


def format_labels(labels: Mapping[str, str]) -> str:
    """``zone=eu,spot=true`` (sorted), the way selectors and ``--label`` write them."""
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


Operator = Literal["=", "!=", "in", "notin", "exists", "!exists"]


@dataclass(frozen=True)
class Requirement:
    key: str
    op: Operator
    values: frozenset[str] = frozenset()

    def matches(self, labels: Mapping[str, str]) -> bool:
        value = labels.get(self.key)
        if self.op in ("=", "in"):
            return value is not None and value in self.values
        if self.op in ("!=", "notin"):
            return value is None or value not in self.values
        return (value is not None) == (self.op == "exists")


@dataclass(frozen=True)
class Selector:
    """Parsed requirements, all of which a node's labels must meet."""

    requirements: tuple[Requirement, ...] = ()

    def matches(self, labels: Mapping[str, str]) -> bool:
        return all(r.matches(labels) for r in self.requirements)


class _Tokens:
    """The selector text as (token, position) pairs: words, operators, and the end."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.items: list[tuple[str, int]] = []
        pos = 0
        while pos < len(text):
            if text[pos].isspace():
                pos += 1
                continue
            if m := _WORD.match(text, pos):
                self.items.append((m.group(), pos))
                pos = m.end()
                continue
            op = next((o for o in _OPS if text.startswith(o, pos)), None)
            if op is None:
                raise self.error(f"unexpected character {text[pos]!r}", pos)
            self.items.append((op, pos))
            pos += len(op)
        self.items.append(("", len(text)))  # the end
        self.i = 0

    def peek(self) -> tuple[str, int]:
        return self.items[self.i]

    def take(self) -> tuple[str, int]:
        item = self.items[self.i]
        self.i = min(self.i + 1, len(self.items) - 1)
        return item

    def error(self, what: str, pos: int) -> LabelError:
        return LabelError(f"invalid selector {self.text!r}: {what} at position {pos}")

    def expect_word(self, what: str) -> tuple[str, int]:
        token, pos = self.take()
        if not _WORD.fullmatch(token):
            raise self.error(f"expected {what}, found {_shown(token)}", pos)
        return token, pos


def _shown(token: str) -> str:
    return repr(token) if token else "the end"


def parse_selector(text: str) -> Selector:
    """The selector ``text`` means, or ``LabelError`` naming what is wrong and at which position (0-based)."""
    if len(text) > MAX_SELECTOR_CHARS:
        raise LabelError(f"a selector of {len(text)} characters: at most {MAX_SELECTOR_CHARS}")
    tokens = _Tokens(text)
    if tokens.peek()[0] == "":
        return Selector()
    requirements = [_requirement(tokens)]
    while (token := tokens.take())[0] != "":
        if token[0] != ",":
            raise tokens.error(f"expected ',' or the end, found {_shown(token[0])}", token[1])
        requirements.append(_requirement(tokens))
    if len(requirements) > MAX_REQUIREMENTS:
        raise LabelError(f"a selector of {len(requirements)} requirements: at most {MAX_REQUIREMENTS}")
    return Selector(tuple(requirements))


def _requirement(tokens: _Tokens) -> Requirement:
    if tokens.peek()[0] == "!":
        tokens.take()
        return Requirement(_key(tokens), "!exists")
    key = _key(tokens)
    op, pos = tokens.peek()
    if op in ("", ","):
        return Requirement(key, "exists")
    tokens.take()
    if op in ("=", "==", "!="):
        return Requirement(key, "!=" if op == "!=" else "=", frozenset([_value(tokens, allow_empty=True)]))
    if op in ("in", "notin"):
        return Requirement(key, op, _values(tokens))
    raise tokens.error(f"expected '=', '==', '!=', 'in' or 'notin' after {key!r}, found {_shown(op)}", pos)


def _key(tokens: _Tokens) -> str:
    key, pos = tokens.expect_word("a label key")
    if problem := key_problem(key):
        raise tokens.error(problem, pos)
    return key


def _value(tokens: _Tokens, *, allow_empty: bool = False) -> str:
    token, pos = tokens.peek()
    if allow_empty and token in ("", ",", ")"):
        return ""  # 'zone=' asks for an empty value, as in Kubernetes
    value, pos = tokens.expect_word("a label value")
    if problem := value_problem(value):
        raise tokens.error(problem, pos)
    return value


def _values(tokens: _Tokens) -> frozenset[str]:
    token, pos = tokens.take()
    if token != "(":
        raise tokens.error(f"expected '(' and a list of values, found {_shown(token)}", pos)
    if tokens.peek()[0] == ")":
        raise tokens.error("expected at least one value", tokens.peek()[1])
    values = {_value(tokens, allow_empty=True)}
    while (token := tokens.take())[0] == ",":
        values.add(_value(tokens, allow_empty=True))
    if token[0] != ")":
        raise tokens.error(f"expected ',' or ')', found {_shown(token[0])}", token[1])
    return frozenset(values)


@functools.lru_cache(maxsize=1024)
def _parsed(text: str) -> Selector:
    return parse_selector(text)  # a compute node reads the same selector in every announcement of a job


def matches(selector: str, labels: Mapping[str, str]) -> bool:
    """Whether a node with ``labels`` meets the (valid) ``selector`` text; the empty one matches all."""
    return not selector or _parsed(selector).matches(labels)

"""Node labels and job selectors: the Kubernetes grammar, parsed and matched with no I/O."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from jobs import JobSpec, ShoalError
from jobs.selector import (
    MAX_LABELS,
    MAX_LABELS_CHARS,
    MAX_REQUIREMENTS,
    MAX_SELECTOR_CHARS,
    LabelError,
    Requirement,
    check_labels,
    format_labels,
    matches,
    parse_labels,
    parse_selector,
)

EU_GPU = {"zone": "eu", "gpu": "a100"}
US_SPOT = {"zone": "us", "spot": "true"}
BARE: dict[str, str] = {}


@pytest.mark.parametrize(("selector", "eu_gpu", "us_spot", "bare"), [
    ("", True, True, True),
    ("zone=eu", True, False, False),
    ("zone==eu", True, False, False),
    ("zone!=eu", False, True, True),  # a missing label is "not eu"
    ("gpu in (a100,h100)", True, False, False),
    ("gpu notin (k80)", True, True, True),
    ("gpu notin (a100)", False, True, True),
    ("spot", False, True, False),
    ("!spot", True, False, True),
    ("zone=eu,!spot", True, False, False),  # comma: AND
    ("zone in (eu,us),!gpu", False, True, False),
    ("  zone = eu ,  gpu  in ( a100 , h100 ) ", True, False, False),  # spaces around tokens
    ("zone in (eu),zone notin (eu)", False, False, False),
])  # fmt: skip
def test_each_operator_matches_as_in_kubernetes(selector, eu_gpu, us_spot, bare):
    assert [matches(selector, labels) for labels in (EU_GPU, US_SPOT, BARE)] == [eu_gpu, us_spot, bare]


def test_parsing_gives_requirements_in_order():
    sel = parse_selector("zone=eu,gpu in (a100,h100),!spot,team,tier!=low")
    assert sel.requirements == (
        Requirement("zone", "=", frozenset({"eu"})),
        Requirement("gpu", "in", frozenset({"a100", "h100"})),
        Requirement("spot", "!exists"),
        Requirement("team", "exists"),
        Requirement("tier", "!=", frozenset({"low"})),
    )


def test_an_empty_value_and_prefixed_keys_are_allowed():
    assert matches("example.com/zone=eu", {"example.com/zone": "eu"})
    assert matches("tier=", {"tier": ""}) and not matches("tier=", {"tier": "x"})
    assert not matches("tier=", {})


@pytest.mark.parametrize(("selector", "message"), [
    ("gpu in (a100", "expected ',' or ')', found the end at position 12"),
    ("gpu in a100", "expected '(' and a list of values, found 'a100' at position 7"),
    ("gpu in ()", "expected at least one value at position 8"),
    ("zone eu", "expected '=', '==', '!=', 'in' or 'notin' after 'zone', found 'eu' at position 5"),
    ("zone=eu,", "expected a label key, found the end at position 8"),
    (",zone=eu", "expected a label key, found ',' at position 0"),
    ("zone=eu gpu=a100", "expected ',' or the end, found 'gpu' at position 8"),
    ("zone=eu;gpu=a100", "unexpected character ';' at position 7"),
    ("zone=e u", "expected ',' or the end, found 'u' at position 7"),
    ("!", "expected a label key, found the end at position 1"),
    ("zone=(eu)", "expected a label value, found '(' at position 5"),
    ("-zone=eu", "label key '-zone': the name must be 1 to 63 characters"),
    ("zone=eu/west", "label value 'eu/west'"),
    ("Bad_Prefix/zone=eu", "the prefix before '/' must be a DNS subdomain"),
    ("zone=" + "x" * 64, "label value 'xxx"),
])  # fmt: skip
def test_a_malformed_selector_is_an_error_naming_what_and_where(selector, message):
    with pytest.raises(LabelError) as exc:
        parse_selector(selector)
    assert message in str(exc.value)
    assert f"invalid selector {selector!r}" in str(exc.value)
    assert isinstance(exc.value, ShoalError) and isinstance(exc.value, ValueError)


def test_a_selector_is_bounded():
    with pytest.raises(LabelError, match=f"at most {MAX_SELECTOR_CHARS}"):
        parse_selector("a," * (MAX_SELECTOR_CHARS // 2) + "a")
    with pytest.raises(LabelError, match=f"at most {MAX_REQUIREMENTS} requirements|requirements: at most"):
        parse_selector(",".join(f"k{i}" for i in range(MAX_REQUIREMENTS + 1)))
    assert len(parse_selector(",".join(f"k{i}" for i in range(MAX_REQUIREMENTS))).requirements) == MAX_REQUIREMENTS


def test_labels_follow_the_kubernetes_rules_and_are_bounded():
    assert check_labels({"zone": "eu", "example.com/gpu": "a100", "spot": ""}) == {
        "zone": "eu", "example.com/gpu": "a100", "spot": ""}
    for bad in ({"": "x"}, {"zone": "eu west"}, {"a" * 64: "x"}, {"zone": "x" * 64}, {"UPPER.com/zone": "eu"},
                {"zone": "-eu"}, {"zone/": "eu"}, {"zone\n": "eu"}, {"zone": "eu\n"}):
        with pytest.raises(LabelError):
            check_labels(bad)
    with pytest.raises(LabelError, match=f"at most {MAX_LABELS}"):
        check_labels({f"k{i}": "v" for i in range(MAX_LABELS + 1)})
    with pytest.raises(LabelError, match=f"at most {MAX_LABELS_CHARS}"):
        check_labels({f"k{i}": "v" * 63 for i in range(MAX_LABELS_CHARS // 63)})


def test_label_flags_parse_to_a_checked_dict():
    assert parse_labels(["zone=eu", "gpu=a100", "spot="]) == {"zone": "eu", "gpu": "a100", "spot": ""}
    with pytest.raises(LabelError, match="expected KEY=VALUE"):
        parse_labels(["zone"])
    with pytest.raises(LabelError, match="given twice"):
        parse_labels(["zone=eu", "zone=us"])
    with pytest.raises(LabelError, match="label value 'e u'"):
        parse_labels(["zone=e u"])
    assert format_labels({"zone": "eu", "gpu": "a100"}) == "gpu=a100,zone=eu"


def test_the_spec_keeps_the_selector_text_and_refuses_a_bad_one_with_the_parsers_message():
    spec = JobSpec.model_validate({"engine": {"name": "noop"}, "selector": "zone=eu, !spot"})
    assert spec.selector == "zone=eu, !spot"
    with pytest.raises(ValidationError) as exc:
        JobSpec.model_validate({"engine": {"name": "noop"}, "selector": "gpu in (a100"})
    (err,) = exc.value.errors()
    assert err["loc"] == ("selector",) and "found the end at position 12" in err["msg"]


def test_a_selector_changes_the_jobs_identity_but_not_its_cache_key():
    plain = JobSpec.model_validate({"engine": {"name": "noop"}})
    selective = JobSpec.model_validate({"engine": {"name": "noop"}, "selector": "zone=eu"})
    assert b"selector" not in plain.canonical_json()  # specs without one hash as before selectors existed
    assert plain.digest() != selective.digest()  # an idempotency key names one selector
    assert plain.cache_key() == selective.cache_key()  # where a job runs does not change a deterministic result


def test_a_spec_without_a_selector_is_written_as_before_selectors_existed():
    """Nodes of an earlier release refuse unknown spec fields: only a job that has a selector carries one."""
    plain = JobSpec.model_validate({"engine": {"name": "noop"}})
    assert "selector" not in plain.model_dump(mode="json") and "selector" not in plain.model_dump_json()
    selective = JobSpec.model_validate({"engine": {"name": "noop"}, "selector": "zone=eu"})
    assert JobSpec.model_validate_json(selective.model_dump_json()).selector == "zone=eu"

"""A deterministic job's seed and its cache key cover the same fields: a cached result is what a fresh run
gives."""

from __future__ import annotations

import hashlib

from jobs import JobSpec


def test_a_job_seeds_as_its_cache_key_says_it_may_be_reused():
    """What only changes scheduling changes neither the seed nor the cache key; what a run sees changes both.
    A spec whose scheduling fields are the defaults seeds as it did before ``seed`` existed."""
    plain = JobSpec.model_validate({"engine": {"name": "python", "code": "import random; print(random.random())"}})
    assert plain.seed() == hashlib.sha256(plain.canonical_json()).digest()
    scheduled = plain.model_copy(update={"retries": 2, "selector": "zone=eu", "cache": False,
                                         "deal": plain.deal.model_copy(update={"min_bids": 2}),
                                         "deadlines": plain.deadlines.model_copy(update={"bid_limit": 60.0})})
    assert scheduled.digest() != plain.digest()
    assert scheduled.seed() == plain.seed() and scheduled.cache_key() == plain.cache_key()
    other = plain.model_copy(update={"env": {"A": "1"}})
    assert other.seed() != plain.seed() and other.cache_key() != plain.cache_key()

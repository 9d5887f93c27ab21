from requester.trust import verify


def test_majority_wins_and_dissenters_are_rejected():
    v = verify({"a": "h1", "b": "h1", "c": "h2"}, confidence=2)
    assert v.verified and set(v.accepted) == {"a", "b"} and v.rejected == ("c",) and v.digest == "h1"


def test_below_confidence_is_not_verified_and_blames_nobody():
    v = verify({"a": "h1", "b": "h2", "c": "h3"}, confidence=2)
    assert not v.verified and v.rejected == () and "no result shared by 2 nodes" in v.reason


def test_a_tie_is_not_verified():
    v = verify({"a": "h1", "b": "h1", "c": "h2", "d": "h2"}, confidence=2)
    assert not v.verified and "tie" in v.reason


def test_unanimous():
    v = verify({"a": "x", "b": "x", "c": "x"}, confidence=3)
    assert v.verified and len(v.accepted) == 3

import pytest

from jobs import MalformedMessage
from jobs.messages import Announce, Cancel, decode, encode
from jobs.spec import JobSpec


def test_round_trip():
    ann = Announce(job_id="j-1", spec=JobSpec(engine={"name": "noop"}), requester="p", attempt=2)
    assert decode(encode(ann)) == ann


@pytest.mark.parametrize("data", [
    b"", b"\xff", b"[]", b'{"kind":"nope"}', b'{"kind":"cancel"}',
    b'{"kind":"cancel","job_id":"j","execution_id":"e","v":2}',
    b'{"kind":"cancel","job_id":"j","execution_id":"e","reason":"\\udb37"}',  # a lone surrogate
    b'{"kind":"announce","job_id":"j","requester":"p","spec":{"engine":{"name":"noop"},"resources":{"memory":[1]}}}',
])
def test_malformed_messages_are_refused_with_a_reason(data):
    with pytest.raises(MalformedMessage):
        decode(data)


def test_escaped_text_that_is_valid_unicode_is_kept():
    message = decode(b'{"kind":"cancel","job_id":"j","execution_id":"e","reason":"caf\\u00e9"}')
    assert isinstance(message, Cancel) and message.reason == "caf\u00e9"

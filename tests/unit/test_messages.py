import json
import re

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


@pytest.mark.parametrize("size", [b"Infinity", b"-Infinity", b"NaN", b"1e400"])
def test_a_size_that_is_no_finite_number_is_a_malformed_message_not_a_crash(size):
    """JSON's Infinity once made the size parser raise OverflowError past the message validation."""
    room = b'{"cpu":4,"memory":%s,"disk":1}' % size
    data = b'{"v":1,"kind":"node_info","peer_id":"p","max_per_job":%s,"total":%s,"free":%s}' % (room, room, room)
    with pytest.raises(MalformedMessage, match="invalid message"):
        decode(data)


@pytest.mark.parametrize("size", [float("inf"), float("nan"), 1e400, "1e400"])
def test_a_job_cannot_ask_for_endless_memory(size):
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=r"resources\.memory"):
        JobSpec.model_validate({"engine": {"name": "noop"}, "resources": {"memory": size}})


@pytest.mark.parametrize("number", [b"NaN", b"Infinity", b"-Infinity", b"1e400"])
@pytest.mark.parametrize("field", [b"bid_deadline", b"started_at"])
def test_a_peer_message_holds_no_number_that_is_not_finite(number, field):
    from jobs.messages import Result
    from jobs.model import RunResult

    ann = encode(Announce(job_id="j", spec=JobSpec(engine={"name": "noop"}), requester="r", bid_deadline=1.0))
    result = encode(Result(job_id="j", execution_id="e", result=RunResult(started_at=1.0)))
    data = ann if field == b"bid_deadline" else result
    assert b'"%s":1.0' % field in data
    with pytest.raises(MalformedMessage, match="finite number"):
        decode(data.replace(b'"%s":1.0' % field, b'"%s":%s' % (field, number)))


@pytest.mark.parametrize("name", ["..", "."])
def test_an_announced_job_whose_output_names_the_folder_above_is_refused(name):
    """An output named '..' was the node's own results folder, writable inside a container: a job linked
    its stdout file there to any host path, and the node, as root, wrote the job's output into it. A
    requester may not announce one either."""
    spec = {"engine": {"name": "docker", "image": "busybox"}, "outputs": [{"name": name, "path": "/out"}]}
    announce = {"kind": "announce", "job_id": "j", "requester": "p", "spec": spec}
    with pytest.raises(MalformedMessage, match=re.escape("not '.' or '..'")):
        decode(json.dumps(announce).encode())

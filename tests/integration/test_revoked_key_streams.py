"""A key removed from a node's authorized-keys file loses the streams it already has open, against a
real ``shoal serve``: its event stream and the log it follows end within seconds, saying why, and
carry nothing of what happens to the job afterwards; the SDK then reports it as Forbidden."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoal import Client, ClientKey, Forbidden, ShoalAuth
from tests.integration.rogue import free_base_port
from tests.integration.single_node import noop_node

pytestmark = pytest.mark.slow

PORT = free_base_port(1)
API = f"http://127.0.0.1:{PORT}"
PENDING = {"engine": {"name": "noop"}, "deal": {"concurrency": 5}}  # one node: it never starts
ENDS_WITHIN = 10.0  # a stream looks at the file at least every SSE_WAKE (5 s)


class Reader(threading.Thread):
    """Reads one signed streaming GET to its end, noting when each line arrived."""

    def __init__(self, key: ClientKey, path: str) -> None:
        super().__init__(daemon=True)
        self.key, self.path = key, path
        self.lines: list[tuple[float, str]] = []
        self.status = 0
        self.opened = threading.Event()

    def run(self) -> None:
        with httpx.Client(base_url=API, timeout=60) as http:
            request = ShoalAuth(self.key).sign(http.build_request("GET", self.path))
            response = http.send(request, stream=True)
            try:
                self.status = response.status_code
                self.opened.set()
                for line in response.iter_lines():
                    self.lines.append((time.monotonic(), line))
            finally:
                response.close()

    def after(self, moment: float) -> list[str]:
        return [line for at, line in self.lines if at > moment]


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, ClientKey]:
    return {name: ClientKey.load_or_create(tmp_path / name / "client.key") for name in ("owner", "friend")}


@pytest.fixture
def keys_file(tmp_path: Path, keys: dict[str, ClientKey]) -> Path:
    path = tmp_path / "authorized_keys"
    path.write_text("".join(f"{key.public_key_b64}\n" for key in keys.values()))
    return path


@pytest.fixture
def node(tmp_path: Path, keys_file: Path) -> Iterator[None]:
    args = ["--authorized-keys", str(keys_file), "--listen", f"/ip4/127.0.0.1/tcp/{PORT + 1}"]
    with noop_node(tmp_path / "home", PORT, args=args):
        yield


def test_a_removed_key_reads_nothing_more_from_its_open_streams(node, keys, keys_file) -> None:
    owner, friend = Client(API, key=keys["owner"]), Client(API, key=keys["friend"])
    job = owner.submit(PENDING, cache=False).job.id
    owner.share(job, keys["friend"].public_key_b64)
    events = Reader(keys["friend"], f"/v1/jobs/{job}/events")
    logs = Reader(keys["friend"], f"/v1/jobs/{job}/logs?follow=true")
    sdk_error: list[BaseException] = []

    def sdk_events() -> None:
        try:
            for _ in friend.events(job):
                pass
        except BaseException as e:  # what the SDK raised is the assertion
            sdk_error.append(e)

    sdk = threading.Thread(target=sdk_events, daemon=True)
    waited = Reader(keys["friend"], f"/v1/jobs/{job}?wait=20")  # a describe waiting for the job's end
    for reader in (events, logs):
        reader.start()
        assert reader.opened.wait(30) and reader.status == 200
    sdk.start()
    waited.start()
    deadline = time.monotonic() + 30
    while not any(line.startswith("event: Created") for _, line in events.lines) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1)  # the SDK's stream is open too

    keys_file.write_text(f"{keys['owner'].public_key_b64}\n")  # the friend is removed
    removed = time.monotonic()
    for thread in (events, logs, sdk):
        thread.join(ENDS_WITHIN)
        assert not thread.is_alive(), "a stream of the removed key is still open"
    owner.cancel(job)  # what happens now is no longer the friend's to see
    waited.join(ENDS_WITHIN)
    assert waited.status == 403 and "cancelled" not in "".join(line for _, line in waited.lines), waited.lines
    time.sleep(2)

    sent = [line for line in events.after(removed) if line]
    assert [line.split(":")[0] for line in sent] == ["event", "data"], sent
    assert sent[0] == "event: error"
    error = json.loads(sent[1].removeprefix("data: "))["error"]
    assert error["code"] == "forbidden" and "not authorized" in error["message"]
    assert [line for line in logs.after(removed) if line] == [
        f"[shoal: client {keys['friend'].public_key_b64} is not authorized on this node: the stream ends here]"]
    assert len(sdk_error) == 1 and isinstance(sdk_error[0], Forbidden), sdk_error
    with pytest.raises(Forbidden):
        friend.describe(job)
    owner.close()
    friend.close()

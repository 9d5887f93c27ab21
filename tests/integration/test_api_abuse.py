"""Replays and abuse against real ``shoal serve`` processes (issue #17, item 3).

What an attacker gets, and what honest clients still get: a replayed request is refused by a
restarted node and by another node; an oversized body is refused from its Content-Length
without being read; an idle connection is closed; per-client quotas answer 429 with
Retry-After and are counted in /metrics; an event stream is woken by a new event (well before
its timer would); a job without a finite bid deadline is refused; an uploaded context is
removed after the node's retention.
"""

from __future__ import annotations

import base64
import json
import os
import re
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from shoal import Client, ClientKey, ShoalAuth
from tests.integration.rogue import free_base_port
from tests.integration.single_node import noop_node

pytestmark = pytest.mark.slow

BASE = free_base_port(6)
PORT = BASE  # node A: defaults, short retention
QUOTA_PORT = BASE + 1  # node B: small quotas
RESTART_PORT = BASE + 2
FD_PORT = BASE + 3  # a node with few file descriptors
HANGUP_PORT = BASE + 4
WAIT_PORT = BASE + 5  # one event stream per client
A, B = f"http://127.0.0.1:{PORT}", f"http://127.0.0.1:{QUOTA_PORT}"
PENDING = {"engine": {"name": "noop"}, "deal": {"concurrency": 5}}  # one node: never enough, stays pending
IMPOSSIBLE = {"engine": {"name": "noop"}, "resources": {"cpu": 1000}}  # fails on admission: never in flight
RETENTION = 2.0


@pytest.fixture(scope="module")
def node_a(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("abuse-a")
    with noop_node(home, PORT, args=["--retention", f"{RETENTION:g}"]):
        yield home


@pytest.fixture(scope="module")
def node_b(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    home = tmp_path_factory.mktemp("abuse-b")
    with noop_node(home, QUOTA_PORT, args=["--quota-jobs-in-flight", "2", "--quota-submits-per-second", "2",
                                           "--quota-event-streams", "1",
                                           "--quota-context-bytes-per-hour", "1MiB",
                                           "--quota-spec-bytes-in-flight", "900KiB",
                                           "--quota-sweep-indexes-per-hour", "1000"]):  # fmt: skip
        yield home


def signed(http: httpx.Client, key: ClientKey, method: str, url: str, **kw) -> httpx.Request:
    return ShoalAuth(key).sign(http.build_request(method, url, **kw))


def error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    return response.json()["error"]


def raw_exchange(port: int, head: bytes, timeout: float = 10) -> tuple[bytes, float]:
    """Send ``head`` (request line and headers, no body) and read the response (headers and the
    body its Content-Length announces); returns it and how long it took to come."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        received = b""
        while b"\r\n\r\n" not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        headers, _, body = received.partition(b"\r\n\r\n")
        length = next((int(line.split(b":", 1)[1]) for line in headers.split(b"\r\n")
                       if line.lower().startswith(b"content-length:")), 0)
        while len(body) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            body += chunk
    return headers + b"\r\n\r\n" + body, time.monotonic() - started


# -- replays ---------------------------------------------------------------------------------------


def test_replay_against_a_restarted_node_is_refused(tmp_path: Path) -> None:
    key = ClientKey.generate()
    with httpx.Client(timeout=30) as http:
        request = signed(http, key, "POST", f"http://127.0.0.1:{RESTART_PORT}/v1/jobs",
                         json={"spec": {"engine": {"name": "noop"}}})
        with noop_node(tmp_path, RESTART_PORT):
            assert http.send(request).status_code == 201
        with noop_node(tmp_path, RESTART_PORT):  # same data dir: a restart
            assert error(http.send(request), 401)["message"] == "nonce already used"
            jobs = signed(http, key, "GET", f"http://127.0.0.1:{RESTART_PORT}/v1/jobs")
            assert http.send(jobs).json()["total"] == 1  # the replay made no second job
            assert http.send(signed(http, key, "GET", f"http://127.0.0.1:{RESTART_PORT}/v1/jobs")).status_code == 200


def test_request_signed_for_one_node_is_refused_by_another(node_a: Path, node_b: Path) -> None:
    key = ClientKey.generate()
    with httpx.Client(timeout=30) as http:
        for_a = signed(http, key, "POST", f"{A}/v1/jobs", json={"spec": PENDING})
        to_b = http.build_request("POST", f"{B}/v1/jobs", content=for_a.content, headers=for_a.headers)
        assert to_b.headers["Host"] == f"127.0.0.1:{PORT}"  # sent to B as it was made: for A
        assert "not a name of this node" in error(http.send(to_b), 401)["message"]
        to_b.headers["Host"] = f"127.0.0.1:{QUOTA_PORT}"  # relabelled for B: no longer what was signed
        assert error(http.send(to_b), 401)["message"] == "bad signature"
        listed = http.send(signed(http, key, "GET", f"{B}/v1/jobs")).json()
        assert listed["total"] == 0  # B ran nothing of it
        assert http.send(for_a).status_code == 201  # and A, the node it was made for, takes it


# -- bodies and connections -----------------------------------------------------------------------


def test_oversized_content_length_is_refused_without_reading_the_body(node_a: Path) -> None:
    """The headers promise 100 MB (or 13 MiB of context) and no byte of body follows: the node
    answers 413 at once rather than waiting for (or reading) any of it."""
    for path, size in (("/v1/jobs", 100_000_000), ("/v1/contexts", 13 << 20)):
        head = (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {size}\r\n\r\n").encode()  # fmt: skip
        answer, took = raw_exchange(PORT, head)
        assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
        assert b"body_too_large" in answer
        assert took < 5


def test_idle_connection_is_closed(node_a: Path) -> None:
    """A connection that never sends its request (slowloris) is closed after the keep-alive timeout."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", PORT), timeout=30) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # headers never finished
        assert sock.recv(100) == b""  # closed by the node
    assert time.monotonic() - started < 15


# -- quotas ------------------------------------------------------------------------------------------


def test_quotas_answer_429_with_retry_after(node_b: Path) -> None:
    fast, holder = ClientKey.generate(), ClientKey.generate()
    with httpx.Client(timeout=30) as http:
        # submissions per second: 2 (bursts of 4); a fifth at once is refused. The jobs fail on admission
        # (no node has 1000 cores), so none is in flight: only the per-second quota can refuse them.
        codes = [http.send(signed(http, fast, "POST", f"{B}/v1/jobs", json={"spec": IMPOSSIBLE})) for _ in range(5)]
        assert [r.status_code for r in codes[:4]] == [201] * 4
        refused = error(codes[4], 429)
        assert refused["code"] == "too_many_requests" and "per second" in refused["message"]
        assert int(codes[4].headers["Retry-After"]) >= 1

        # jobs in flight: 2 pending jobs, then a third is refused until one ends
        pending = [http.send(signed(http, holder, "POST", f"{B}/v1/jobs", json={"spec": PENDING})) for _ in range(2)]
        ids = [r.json()["job"]["id"] for r in pending]
        third = http.send(signed(http, holder, "POST", f"{B}/v1/jobs", json={"spec": PENDING}))
        assert "jobs and sweeps in flight" in error(third, 429)["message"] and third.headers["Retry-After"]

        # open event streams: 1; a second is refused while the first is open, accepted once it closes
        with http.stream("GET", f"{B}/v1/jobs/{ids[0]}/events", auth=ShoalAuth(holder)) as first:
            assert first.status_code == 200
            second = http.send(signed(http, holder, "GET", f"{B}/v1/jobs/{ids[1]}/events"))
            assert "event streams" in error(second, 429)["message"] and second.headers["Retry-After"]
            # a log followed is a stream too: 8,552 of them once took a core and slowed other clients 200-fold
            follow = http.send(signed(http, holder, "GET", f"{B}/v1/jobs/{ids[1]}/logs?follow=true"))
            assert "followed logs" in error(follow, 429)["message"]
        assert http.send(signed(http, holder, "POST", f"{B}/v1/jobs/{ids[0]}/cancel")).status_code == 200
        time.sleep(0.5)  # the closed stream's slot comes back when the node notices the disconnect
        with http.stream("GET", f"{B}/v1/jobs/{ids[1]}/events", auth=ShoalAuth(holder)) as again:
            assert again.status_code == 200
        fourth = http.send(signed(http, holder, "POST", f"{B}/v1/jobs", json={"spec": PENDING}))
        assert fourth.status_code == 201  # one of the two ended: room again

        # another client is not limited by them, and /metrics counts each refusal
        other = http.send(signed(http, ClientKey.generate(), "POST", f"{B}/v1/jobs", json={"spec": PENDING}))
        assert other.status_code == 201
        metrics = http.get(f"{B}/metrics").text
    for quota in ("jobs_in_flight", "submits_per_second", "event_streams"):
        line = next(x for x in metrics.splitlines() if x.startswith(f'shoal_api_refused_total{{quota="{quota}"}}'))
        assert int(line.split()[-1]) >= 1, line


def context(size: int) -> bytes:
    """A working directory as the SDK packs it (shoal._context), holding ``size`` random bytes."""
    import io
    import os
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        top = tarfile.TarInfo("context")
        top.type = tarfile.DIRTYPE
        tar.addfile(top)
        data = tarfile.TarInfo("context/data.bin")
        data.size = size
        tar.addfile(data, io.BytesIO(os.urandom(size)))
    return buf.getvalue()


def test_working_directories_a_client_stores_are_held_to_its_hourly_quota(node_b: Path) -> None:
    """A client that may submit once stored 10 MiB contexts as fast as it sent them (403 MiB in 8 s), each
    kept for the node's retention. Past its hourly allowance it gets 429, and the node stores nothing of it."""
    from shoal import ShoalAPIError

    stored = node_b / "node" / "results"
    with Client(B, key=ClientKey.generate()) as client:
        client.upload_context(context(600 << 10))
        before = sorted(stored.glob("*"))
        with pytest.raises(ShoalAPIError) as refused:
            client.upload_context(context(600 << 10))
        assert refused.value.status == 429
        assert "stored more than 1 MiB of working directories and job specs in the last hour" in str(refused.value)
        assert sorted(stored.glob("*")) == before
    with Client(B, key=ClientKey.generate()) as other:  # another client has its own allowance
        other.upload_context(context(600 << 10))
    metrics = httpx.get(f"{B}/metrics", timeout=30).text
    assert 'shoal_api_refused_total{quota="context_bytes"} 1' in metrics


def test_job_specs_a_client_stores_count_against_the_same_hourly_bytes(node_b: Path) -> None:
    """Jobs with 900 KB of inline code that failed at once (no node could take them) grew a node's disk by
    36 MB/s, each spec kept for the node's --ttl, and counted against no quota of bytes."""
    code = "#" * (400 << 10)
    big = {**IMPOSSIBLE, "engine": {"name": "python", "code": code}}
    key = ClientKey.generate()
    with httpx.Client(timeout=30) as http:
        made = [http.send(signed(http, key, "POST", f"{B}/v1/jobs", json={"spec": big})) for _ in range(3)]
        assert [r.status_code for r in made[:2]] == [201, 201]
        assert "of working directories and job specs in the last hour" in error(made[2], 429)["message"]
        assert http.send(signed(http, key, "GET", f"{B}/v1/jobs")).json()["total"] == 2  # the third not stored
        sweep = {"job": big, "grid": {"x": ["1"]}}
        refused = http.send(signed(http, key, "POST", f"{B}/v1/sweeps", json={"spec": sweep}))
        assert "job specs in the last hour" in error(refused, 429)["message"]


def test_the_specs_of_a_clients_live_jobs_are_held_to_a_bound_together(node_b: Path) -> None:
    """Each live job's spec is held in memory and announced again while it waits: 300 jobs of 900 KB took a
    requester from 130 to 912 MiB, far inside the quota of jobs in flight. A spec that would take a client's
    live specs past the bound is refused and not stored; room comes back as its jobs end."""
    key = ClientKey.generate()
    data = {"DATA": "x" * (500 << 10)}  # 500 KiB; the node holds 900 KiB per client
    heavy = {**PENDING, "env": data}
    with httpx.Client(timeout=30) as http:
        first = http.send(signed(http, key, "POST", f"{B}/v1/jobs", json={"spec": heavy}))
        assert first.status_code == 201, first.text
        second = http.send(signed(http, key, "POST", f"{B}/v1/jobs", json={"spec": heavy}))
        refused = error(second, 429)
        assert re.search(r"has 500 KiB of job and sweep specs in flight on this node, and 500 KiB more would "
                         r"pass 900 KiB", refused["message"]), refused["message"]
        sweep = {"job": {"engine": {"name": "noop"}, "env": data}, "grid": {"x": ["1"]}}  # counts the same
        assert "specs in flight" in error(http.send(signed(http, key, "POST", f"{B}/v1/sweeps",
                                                            json={"spec": sweep})), 429)["message"]
        assert http.send(signed(http, key, "GET", f"{B}/v1/jobs")).json()["total"] == 1  # nothing more stored
        other = http.send(signed(http, ClientKey.generate(), "POST", f"{B}/v1/jobs", json={"spec": heavy}))
        assert other.status_code == 201  # another client's specs are its own
        job_id = first.json()["job"]["id"]
        assert http.send(signed(http, key, "POST", f"{B}/v1/jobs/{job_id}/cancel")).status_code == 200
        again = http.send(signed(http, key, "POST", f"{B}/v1/jobs", json={"spec": heavy}))
        assert again.status_code == 201, again.text  # the cancelled job's spec left the bound
        for made in (other, again):
            job_id = made.json()["job"]["id"]
            http.send(signed(http, key, "POST", f"{B}/v1/jobs/{job_id}/cancel"))
    metrics = httpx.get(f"{B}/metrics", timeout=30).text
    assert 'shoal_api_refused_total{quota="spec_bytes_in_flight"} 2' in metrics


def test_sweeps_are_held_to_a_clients_quotas(node_b: Path) -> None:
    """A 14 KB request for a 1000x1000 grid made a million rows (100 MB, 10 s of the node's time), and the
    sweeps a client kept live counted against no quota."""
    big, holder = ClientKey.generate(), ClientKey.generate()
    slow = {"engine": {"name": "noop", "delay": 120}}  # live for the whole test
    with httpx.Client(timeout=30) as http:
        grid = {"x": [str(i) for i in range(40)], "y": [str(i) for i in range(30)]}  # 1,200 indexes
        refused = http.send(signed(http, big, "POST", f"{B}/v1/sweeps", json={"spec": {"job": slow, "grid": grid}}))
        assert "submitted sweeps of more than 1000 indexes in the last hour" in error(refused, 429)["message"]
        assert http.send(signed(http, big, "GET", f"{B}/v1/sweeps")).json()["total"] == 0

        small = {"job": slow, "grid": {"x": ["1", "2"]}}
        live = [http.send(signed(http, holder, "POST", f"{B}/v1/sweeps", json={"spec": small})) for _ in range(2)]
        assert [r.status_code for r in live] == [201, 201]
        third = http.send(signed(http, holder, "POST", f"{B}/v1/sweeps", json={"spec": small}))
        assert "2 jobs and sweeps in flight" in error(third, 429)["message"]
        job = http.send(signed(http, holder, "POST", f"{B}/v1/jobs", json={"spec": PENDING}))
        assert "2 jobs and sweeps in flight" in error(job, 429)["message"]
        assert http.send(signed(http, holder, "GET", f"{B}/v1/sweeps")).json()["total"] == 2
        for r in live:
            sweep_id = r.json()["sweep"]["id"]
            assert http.send(signed(http, holder, "POST", f"{B}/v1/sweeps/{sweep_id}/cancel")).status_code == 200
    metrics = httpx.get(f"{B}/metrics", timeout=30).text
    assert 'shoal_api_refused_total{quota="sweep_indexes"} 1' in metrics


# -- deadlines, event streams, contexts -----------------------------------------------------------------


def test_a_job_without_a_finite_bid_deadline_is_refused(node_a: Path) -> None:
    key = ClientKey.generate()
    with httpx.Client(timeout=30) as http:
        for bid in (None, 10 * 24 * 3600):
            spec = {"engine": {"name": "noop"}, "deadlines": {"bid": bid}}
            refused = error(http.send(signed(http, key, "POST", f"{A}/v1/jobs", json={"spec": spec})), 422)
            assert "deadlines.bid" in refused["message"] and refused["fields"] == ["spec"]
            sweep = {"job": spec, "grid": {"x": ["1", "2"]}}
            refused = error(http.send(signed(http, key, "POST", f"{A}/v1/sweeps", json={"spec": sweep})), 422)
            assert "deadlines.bid" in refused["message"]
        assert http.send(signed(http, key, "GET", f"{A}/v1/jobs")).json()["total"] == 0
        ok = {"engine": {"name": "noop"}, "deadlines": {"bid": 3600}}
        assert http.send(signed(http, key, "POST", f"{A}/v1/jobs", json={"spec": ok})).status_code == 201


def test_endless_numbers_get_a_clear_refusal_not_an_internal_error(node_a: Path) -> None:
    """JSON's Infinity (or 1e400, or 1 and 400 zeros) as a size once made the node answer 500; an endless silence or
    grace let a job whose node died run for ever, and a silence of a microsecond made the nodes running
    a sweep report in a tight loop."""
    key = ClientKey.generate()
    with httpx.Client(timeout=30) as http:
        for field, spec in (
            ("resources.memory", {"engine": {"name": "noop"}, "resources": {"memory": float("inf")}}),
            ("resources.disk", {"engine": {"name": "noop"}, "resources": {"disk": 1e400}}),
            ("deadlines.silence", {"engine": {"name": "noop"}, "deadlines": {"silence": 1e9}}),
            ("deadlines.silence: at least 1 s", {"engine": {"name": "noop"}, "deadlines": {"silence": 1e-6}}),
            ("deadlines.result_grace", {"engine": {"name": "noop"}, "deadlines": {"result_grace": float("inf")}}),
            # an integer too large for a float: an OverflowError, answered 500 with a traceback in the log
            ("resources.memory", {"engine": {"name": "noop"}, "resources": {"memory": 10**400}}),
            ("timeout", {"engine": {"name": "noop"}, "timeout": 10**400}),
        ):
            for path, body in (("jobs", {"spec": spec}), ("sweeps", {"spec": {"job": spec, "grid": {"x": ["1"]}}})):
                raw = json.dumps(body).encode()  # Infinity, as Python's json (and JavaScript's) writes it
                request = signed(http, key, "POST", f"{A}/v1/{path}", content=raw,
                                 headers={"content-type": "application/json"})
                refused = error(http.send(request), 422)
                assert field in refused["message"], refused
        assert http.send(signed(http, key, "GET", f"{A}/v1/jobs")).json()["total"] == 0
        assert http.send(signed(http, key, "GET", f"{A}/v1/sweeps")).json()["total"] == 0


def test_a_job_asking_for_less_than_any_run_takes_is_refused_at_once(node_a: Path) -> None:
    """150 jobs of 1e-7 CPU and 1 byte each reserved nothing, and one node ran them all at once."""
    key = ClientKey.generate()
    with httpx.Client(timeout=30) as http:
        for resources, why in (({"cpu": 1e-7}, "resources.cpu: at least 0.01 (10m)"),
                               ({"memory": 1}, "resources.memory: at least 6 MiB")):
            spec = {"engine": {"name": "noop"}, "resources": resources}
            for path, body in (("jobs", {"spec": spec}), ("sweeps", {"spec": {"job": spec, "grid": {"x": ["1"]}}})):
                refused = error(http.send(signed(http, key, "POST", f"{A}/v1/{path}", json=body)), 422)
                assert why in refused["message"], refused
        assert http.send(signed(http, key, "GET", f"{A}/v1/jobs")).json()["total"] == 0
        ok = {"engine": {"name": "noop"}, "resources": {"cpu": 0.01, "memory": "6MiB"}}
        assert http.send(signed(http, key, "POST", f"{A}/v1/jobs", json={"spec": ok})).status_code == 201


@pytest.mark.parametrize("name", ["..", "."])
def test_an_output_named_for_the_folder_above_is_refused_by_the_api_the_sdk_and_the_cli(node_a: Path, name: str,
                                                                                       tmp_path: Path) -> None:
    """``shoal docker run -o ..:/out busybox -- sh -c 'ln -s /root/.ssh/authorized_keys /out/stdout; echo KEY'``
    had the node, as root, write the job's stdout to any host file: '..' was its own results folder."""
    import subprocess
    import sys

    from shoal import InvalidRequest

    spec = {"engine": {"name": "docker", "image": "busybox", "args": ["true"]},
            "outputs": [{"name": name, "path": "/out"}]}
    key = ClientKey.generate()
    with httpx.Client(timeout=30) as http:
        for path, body in (("jobs", {"spec": spec}), ("sweeps", {"spec": {"job": spec, "grid": {"x": ["1"]}}})):
            refused = error(http.send(signed(http, key, "POST", f"{A}/v1/{path}", json=body)), 422)
            assert "not '.' or '..'" in refused["message"], refused
        assert http.send(signed(http, key, "GET", f"{A}/v1/jobs")).json()["total"] == 0
    with Client(A, key=key) as client, pytest.raises(InvalidRequest, match=re.escape("not '.' or '..'")):
        client.submit(spec)
    cli = subprocess.run([sys.executable, "-m", "cli.main", "--api", A, "docker", "run", "-o", f"{name}:/out",
                          "busybox", "--", "true"], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "SHOAL_HOME": str(tmp_path)})
    assert cli.returncode == 2 and "not '.' or '..'" in cli.stderr, cli.stderr


def test_a_get_with_a_body_is_refused_and_holds_no_room_of_the_nodes(node_a: Path) -> None:
    """A request body counts against room all clients share until its answer ends: 128 event streams opened with
    a 1 MiB body each held every other client's submissions at 503 for as long as they stayed open. A GET carries
    no body now, declared or streamed, and another client's submission goes through while such streams are asked."""
    key, other = ClientKey.generate(), ClientKey.generate()
    with Client(A, key=key) as client, httpx.Client(timeout=30) as http:
        job = client.submit(PENDING).job.id
        body = b"x" * (1 << 20)
        with http.stream("GET", f"{A}/v1/jobs/{job}/events", content=body, auth=ShoalAuth(key)) as declared:
            assert declared.status_code == 400, "the stream was let in, its body held"
            assert json.loads(declared.read())["error"]["message"] == "a GET request carries no body"
        request = signed(http, key, "GET", f"{A}/v1/jobs/{job}?wait=5", content=body)  # sent chunked, undeclared
        head = "".join(f"{k}: {v}\r\n" for k, v in request.headers.items() if k.lower() != "content-length")
        head = f"GET {request.url.raw_path.decode()} HTTP/1.1\r\n{head}Transfer-Encoding: chunked\r\n\r\n"
        with socket.create_connection(("127.0.0.1", PORT), timeout=10) as sock:
            sock.sendall(head.encode() + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
            answer = b""
            while b"}" not in answer and (chunk := sock.recv(65536)):  # to the end of its JSON, or of the connection
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 400") and b"carries no body" in answer, answer[:300]
        with Client(A, key=other) as honest:
            assert honest.submit(PENDING).job.state.value == "pending"
        client.cancel(job)


def test_event_stream_is_woken_by_a_new_event(node_a: Path) -> None:
    """A stream waiting on a pending job sees its Cancelled event well within the 5 s the stream
    would otherwise sleep: it was woken by the write, not by its timer."""
    key = ClientKey.generate()
    with Client(A, key=key) as client, httpx.Client(timeout=30) as http:
        job = client.submit(PENDING).job.id
        with http.stream("GET", f"{A}/v1/jobs/{job}/events", auth=ShoalAuth(key)) as stream:
            lines = stream.iter_lines()
            while next(lines) != "event: Announced":
                pass
            time.sleep(1.0)  # the stream is now asleep, waiting
            cancelled_at = time.monotonic()
            client.cancel(job)
            while next(lines) != "event: Cancelled":
                pass
            took = time.monotonic() - cancelled_at
    assert took < 1.0, took


def test_an_uploaded_context_is_removed_after_the_retention(node_a: Path) -> None:
    import io
    import tarfile

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = b"print('hello')\n"
        info = tarfile.TarInfo("main.py")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with Client(A, key=ClientKey.generate()) as client:
        cid = client.upload_context(buf.getvalue())
    stored = node_a / "node" / "results" / cid
    assert stored.exists()
    deadline = time.monotonic() + RETENTION + 10
    while stored.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not stored.exists()


def test_a_context_with_a_link_out_of_itself_is_refused_and_nothing_is_stored(node_a: Path) -> None:
    """A working directory is a job's input. A link in it to ``/`` or to the node's keys would be followed on
    the node (storage.registry refuses it there too); the upload is refused at once, naming the link."""
    import io
    import tarfile

    from shoal import InvalidRequest

    for target in ("/etc", "../../node.key"):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:  # as the SDK packs a directory (shoal._context)
            top = tarfile.TarInfo("context")
            top.type = tarfile.DIRTYPE
            link = tarfile.TarInfo("context/keys")
            link.type, link.linkname = tarfile.SYMTYPE, target
            tar.addfile(top)
            tar.addfile(link)
        before = sorted((node_a / "node" / "results").glob("*"))
        with Client(A, key=ClientKey.generate()) as client, pytest.raises(InvalidRequest) as refused:
            client.upload_context(buf.getvalue())
        assert refused.value.status == 422 and f"link 'keys' -> '{target}'" in str(refused.value)
        assert sorted((node_a / "node" / "results").glob("*")) == before


def test_a_context_whose_links_loop_is_refused_at_once_and_uploads_go_on(node_a: Path) -> None:
    """15 links, each naming the one before eight times, all inside the context: checking them took 8^14 steps,
    so each upload held one of the node's four upload slots and a core for good, and a fifth from anyone was
    refused as busy. The kernel would give up after 40 links (ELOOP); so does the node now."""
    import io
    import tarfile

    from shoal import InvalidRequest

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        top = tarfile.TarInfo("context")
        top.type = tarfile.DIRTYPE
        tar.addfile(top)
        for i in range(15):
            link = tarfile.TarInfo(f"context/x{i}")
            link.type, link.linkname = tarfile.SYMTYPE, "/".join([f"x{i - 1}"] * 8) if i else "."
            tar.addfile(link)
    with Client(A, key=ClientKey.generate(), timeout=30) as client:
        for _ in range(5):  # one more than the node's upload slots
            with pytest.raises(InvalidRequest) as refused:
                client.upload_context(buf.getvalue())
            assert refused.value.status == 422 and "goes through too many links (a loop)" in str(refused.value)
        plain = io.BytesIO()
        with tarfile.open(fileobj=plain, mode="w") as tar:
            info = tarfile.TarInfo("main.py")
            info.size = 9
            tar.addfile(info, io.BytesIO(b"print(1)\n"))
        assert client.upload_context(plain.getvalue())  # its CID: the slots are free


def test_a_context_nested_deeper_than_the_limit_is_refused(node_a: Path) -> None:
    """The node walks an uploaded directory to store it; one Python could not recurse through would have
    ended the request with an internal error, and a job would have been refused it later."""
    import io
    import tarfile

    from shoal import InvalidRequest

    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for depth in range(151):
            entry = tarfile.TarInfo("/".join(["context", *["a"] * depth]))
            entry.type = tarfile.DIRTYPE
            tar.addfile(entry)
    with Client(A, key=ClientKey.generate()) as client, pytest.raises(InvalidRequest) as refused:
        client.upload_context(buf.getvalue())
    assert refused.value.status == 422 and "directories nested more than 100 deep" in str(refused.value)


def test_an_input_no_node_could_fetch_is_refused_at_once_naming_it(node_a: Path) -> None:
    """A local path or another scheme as an input source was taken, and the job waited its queue timeout
    (24 h by default) saying nodes had room: each node had refused it, quietly."""
    key = ClientKey.generate()
    with httpx.Client(timeout=30) as http:
        for source in ("./trades.csv", "/home/me/trades.csv", "s3://bucket/trades.csv"):
            spec = {"engine": {"name": "noop"}, "inputs": [{"source": source, "path": "/data/trades.csv"}]}
            for path, body in (("jobs", {"spec": spec}), ("sweeps", {"spec": {"job": spec, "grid": {"x": ["1"]}}})):
                refused = error(http.send(signed(http, key, "POST", f"{A}/v1/{path}", json=body)), 422)
                assert "inputs.0.source" in refused["message"] and "neither ipfs://CID" in refused["message"]
        long = {"engine": {"name": "noop"}, "inputs": [{"source": "https://example.com/" + "a" * 70_000, "path": "/d"}]}
        refused = error(http.send(signed(http, key, "POST", f"{A}/v1/jobs", json={"spec": long})), 422)
        assert refused["message"] == "spec: inputs.0.source: 70,020 characters; at most 8,192 are allowed"
        fetchable = {"engine": {"name": "noop"}, "inputs": [{"source": "https://example.com/t.csv", "path": "/d"}]}
        assert http.send(signed(http, key, "POST", f"{A}/v1/jobs", json={"spec": fetchable})).status_code == 201


def test_a_containers_working_directory_in_the_kernels_views_is_refused(node_a: Path) -> None:
    """``/proc/self/fd/N`` as a working directory took an older runc's container to the host's files
    (CVE-2024-21626): no submission names one, nor a relative path or '..'."""
    key = ClientKey.generate()
    with httpx.Client(timeout=30) as http:
        for workdir in ("/proc/self/fd/7", "//sys/fs", "/./dev", "work", "/data/../proc/1/root"):
            spec = {"engine": {"name": "docker", "image": "busybox", "workdir": workdir}}
            for path, body in (("jobs", {"spec": spec}), ("sweeps", {"spec": {"job": spec, "grid": {"x": ["1"]}}})):
                refused = error(http.send(signed(http, key, "POST", f"{A}/v1/{path}", json=body)), 422)
                assert f"engine.workdir {workdir!r}" in refused["message"]
        assert http.send(signed(http, key, "GET", f"{A}/v1/jobs")).json()["total"] == 0  # nothing was stored


def test_an_image_no_docker_daemon_takes_is_refused_at_once(node_a: Path) -> None:
    """Images of 5,000 characters, with spaces, escapes or upper case were taken (201), announced, and run on four
    nodes before the job failed with Docker's "invalid reference format"."""
    key = ClientKey.generate()
    with httpx.Client(timeout=30) as http:
        for image in ("a" * 5_000, "busy box", "\x1b]0;pwned\x07busybox", "BusyBox", "busybox:"):
            for engine in ({"name": "docker", "image": image}, {"name": "python", "code": "print(1)", "image": image}):
                for path, body in (("jobs", {"spec": {"engine": engine}}),
                                   ("sweeps", {"spec": {"job": {"engine": engine}, "grid": {"x": ["1"]}}})):
                    reply = http.send(signed(http, key, "POST", f"{A}/v1/{path}", json=body))
                    if engine["name"] == "python" and (len(image) > 256 or " " in image):
                        assert reply.status_code == 422  # the python engine's own field rule
                        continue
                    refused = error(reply, 422)
                    assert "engine.image" in refused["message"] and "\x1b" not in refused["message"], refused
        assert http.send(signed(http, key, "GET", f"{A}/v1/jobs")).json()["total"] == 0  # nothing was stored
        for image in ("busybox:1.36", "ghcr.io/org/tool@sha256:" + "0" * 64, "localhost:5000/team/img_v2:latest"):
            spec = {"engine": {"name": "docker", "image": image}, "deadlines": {"bid": "1s"}}
            assert http.send(signed(http, key, "POST", f"{A}/v1/jobs", json={"spec": spec})).status_code == 201


def test_a_node_out_of_file_descriptors_logs_it_once_in_a_while_and_serves_again(tmp_path):
    """Trio's accept loop logged a whole traceback every 0.1 s while the node had no file descriptor left:
    anyone able to open connections could fill the node's disk with its log. Now one warning line per 10 s
    says so, and the node serves again once the connections are gone."""
    log: list[str] = []
    with noop_node(tmp_path, FD_PORT, open_files=256, log=log):
        flood = [socket.create_connection(("127.0.0.1", FD_PORT)) for _ in range(400)]  # the backlog takes them
        time.sleep(3)  # about 30 accept failures
        for sock in flood:
            sock.close()
        with Client(f"http://127.0.0.1:{FD_PORT}", timeout=30) as client:
            assert client.node().peer_id
    refused = [line for line in log if "accept returned EMFILE" in line]
    assert len(refused) == 1 and " WARNING " in refused[0], refused
    assert not any("Traceback" in line for line in log)  # noop_node checks this too


def test_clients_hanging_up_mid_body_leave_no_error_in_the_log(tmp_path):
    """Each hang-up was logged as "POST /v1/jobs failed" with a traceback (a 1.4 KB disk filler for strangers:
    no valid key needed); and 600 of them at the moment the node sent its 408s stopped the node."""
    key = base64.b64encode(os.urandom(32)).decode()
    log: list[str] = []
    with noop_node(tmp_path, HANGUP_PORT, log=log):  # it checks that no ERROR or traceback was logged
        for _ in range(20):
            with socket.create_connection(("127.0.0.1", HANGUP_PORT)) as sock:
                sock.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1:{HANGUP_PORT}\r\nContent-Length: 1000\r\n"
                             f"Content-Type: application/json\r\nX-Shoal-Auth: 2\r\nX-Shoal-Key: {key}\r\n"
                             f"X-Shoal-Timestamp: {int(time.time())}\r\nX-Shoal-Nonce: {os.urandom(16).hex()}\r\n"
                             f"X-Shoal-Signature: {base64.b64encode(os.urandom(64)).decode()}\r\n\r\n{{".encode())
                time.sleep(0.05)
        with Client(f"http://127.0.0.1:{HANGUP_PORT}", timeout=30) as client:
            assert client.node().peer_id
    assert not any("failed" in line for line in log)


def test_a_clients_long_polls_hold_its_streams(tmp_path):
    """?wait= counted for nothing: one key held 3,000 long polls open at once. Each now holds one of the
    client's streams; with none left, the description comes back at once, unwaited."""
    url, key = f"http://127.0.0.1:{WAIT_PORT}", ClientKey.generate()
    with noop_node(tmp_path, WAIT_PORT, args=["--quota-event-streams", "1"]):
        with Client(url, key=key) as client:
            job = client.submit(PENDING).job.id
        with httpx.Client(timeout=30) as first, httpx.Client(timeout=30) as second:
            waiting = signed(first, key, "GET", f"{url}/v1/jobs/{job}?wait=6")
            holder = threading.Thread(target=lambda: first.send(waiting))
            holder.start()
            time.sleep(1.5)  # it waits, holding the client's one stream
            started = time.monotonic()
            answer = second.send(signed(second, key, "GET", f"{url}/v1/jobs/{job}?wait=6"))
            assert answer.status_code == 200 and answer.json()["job"]["state"] in ("pending", "running")
            assert time.monotonic() - started < 3  # not waited on
            holder.join()
            started = time.monotonic()
            second.send(signed(second, key, "GET", f"{url}/v1/jobs/{job}?wait=2"))
            assert time.monotonic() - started >= 1.5  # the stream is back: it waits again


def test_a_sweep_retried_after_it_ended_counts_against_the_clients_quotas(node_b: Path) -> None:
    """Retrying made an ended sweep live again without asking the quotas: a client that submitted and cancelled
    20 sweeps, one at a time, then retried them all had 20 live on a node allowing it 5 in flight."""
    key = ClientKey.generate()
    spec = {"job": {"engine": {"name": "noop", "delay": 120}}, "grid": {"x": ["1"]}}
    with httpx.Client(timeout=30) as http:
        ids = []
        for _ in range(4):  # the burst of submissions; never more than one in flight
            made = http.send(signed(http, key, "POST", f"{B}/v1/sweeps", json={"spec": spec}))
            assert made.status_code == 201, made.text
            ids.append(made.json()["sweep"]["id"])
            assert http.send(signed(http, key, "POST", f"{B}/v1/sweeps/{ids[-1]}/cancel")).status_code == 200
        time.sleep(2.5)  # the tokens come back (2 a second): only the quota of 2 in flight refuses below
        retried = [http.send(signed(http, key, "POST", f"{B}/v1/sweeps/{i}/retry")) for i in ids]
        assert [r.status_code for r in retried[:2]] == [200, 200], retried[0].text
        for refused in retried[2:]:
            assert "2 jobs and sweeps in flight" in error(refused, 429)["message"] and refused.headers["Retry-After"]
        sweeps = http.send(signed(http, key, "GET", f"{B}/v1/sweeps")).json()["sweeps"]
        states = {s["id"]: s["state"] for s in sweeps}
        assert [states[i] in ("pending", "running") for i in ids] == [True, True, False, False]  # no more live
        for i in ids[:2]:
            assert http.send(signed(http, key, "POST", f"{B}/v1/sweeps/{i}/cancel")).status_code == 200


def test_concurrent_submissions_of_a_client_are_held_to_its_quota_in_flight(tmp_path: Path) -> None:
    """The quota was checked before the submission was stored, and the job counted only after: 60 submissions
    at once from a client allowed 5 jobs in flight left it 12 live. Now no more than 5 are live, whatever the
    route (jobs or sweeps), and every other submission is refused."""
    port = free_base_port(1)
    url = f"http://127.0.0.1:{port}"
    sweep = {"job": {"engine": {"name": "noop", "delay": 120}}, "grid": {"x": ["1"]}}

    def submit(key: ClientKey, path: str, body: dict, start: threading.Barrier, codes: list[int]) -> None:
        with httpx.Client(timeout=60) as http:
            request = signed(http, key, "POST", f"{url}/v1/{path}", json=body)
            start.wait()  # all 60 at once
            codes.append(http.send(request).status_code)

    with noop_node(tmp_path, port, args=["--quota-jobs-in-flight", "5", "--quota-spec-bytes-in-flight", "2MiB"]):
        for path, body in (("jobs", {"spec": PENDING}), ("sweeps", {"spec": sweep})):
            key, start, codes = ClientKey.generate(), threading.Barrier(60), []
            threads = [threading.Thread(target=submit, args=(key, path, body, start, codes)) for _ in range(60)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            # exactly 5: a job announcing (seconds, on a network) once counted twice, live and reserved
            assert sorted(set(codes)) == [201, 429] and codes.count(201) == 5, codes
            with httpx.Client(timeout=30) as http:
                made = http.send(signed(http, key, "GET", f"{url}/v1/{path}")).json()
            live = [m["state"] for m in made[path] if m["state"] in ("pending", "running")]
            assert made["total"] == len(live) == codes.count(201), made  # the refused ones were never stored

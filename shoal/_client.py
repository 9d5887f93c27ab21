"""``Client`` and ``AsyncClient``: the Python SDK for a Shoal node's REST API.

Both share ``_BaseClient``, which builds every request and parses every response. Operations
that are a sequence of requests (submit with retries, wait's long-polls, run, and the same for
sweeps) are written once
as *flows*: generators that yield an ``httpx.Request`` to send (or a float: seconds to sleep)
and receive the ``httpx.Response``; errors are thrown back into them at the yield. The sync and
async clients differ only in the runner that drives a flow, and in the streaming methods
(events, follow_logs, download), whose bodies are consumed with ``for`` vs ``async for``.

The async client runs on trio or asyncio (httpx uses anyio underneath). Beside it:
``shoal._error_mapping`` (responses and transport failures → exceptions), ``shoal._sse``
(event streams) and ``shoal._results`` (downloads checked against their CID).
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar
from urllib.parse import quote

import anyio
import httpx
from pydantic import BaseModel, ValidationError

from jobs.events import Event
from jobs.spec import MAX_SPEC_BYTES, JobSpec
from jobs.states import JobState
from jobs.sweep import IndexRecord, SweepSpec
from jobs.views import (
    MAX_PAGE,
    ContextStored,
    IndexList,
    JobDescription,
    JobList,
    NodeList,
    NodeStatus,
    PeerList,
    Share,
    ShareRequest,
    SubmitRequest,
    SweepDescription,
    SweepList,
    SweepSubmitRequest,
)
from shoal._auth import ClientKey, ShoalAuth, b64encode, parse_public_key, shoal_home
from shoal._error_mapping import check, connection_failed, parse, request_failed, validation_summary
from shoal._errors import ConnectionFailed, InvalidRequest, ServerError, ShoalAPIError, WaitTimeout
from shoal._results import (
    Plan,
    extract_results,
    extract_results_async,
    make_folder,
    plan_download,
    warn_if_truncated,
    write_from_record,
)
from shoal._sse import EventReader

if TYPE_CHECKING:
    from shoal._map import MapRun

DEFAULT_API_URL = "http://127.0.0.1:8700"
USER_AGENT = "shoal-python/0.1"
# Requests one AsyncClient has in flight at once, its streams aside: more wait here for a slot, and a wait for a
# slot is not the node's (no timeout counts it). 1,000 jobs run at once from one client queued 1,000 requests in
# httpx's connection pool, whose bookkeeping rescans its whole queue for each (84% of the client's CPU at 400),
# and whose wait for a connection counted against the request's timeout: most of them failed with "no answer
# from Shoal API" from a healthy node. Long polls (a wait for a job's end, up to 25 s each) have slots of their
# own, so that they never keep a submit waiting.
MAX_IN_FLIGHT = 32
MAX_POLLING = 256
POOL = httpx.Limits(max_connections=MAX_IN_FLIGHT + MAX_POLLING + 64)  # 64: streams (events, logs -f) beside
# index results a sweep's download fetches at once: each waits mostly on the node getting it from IPFS (measured,
# 300 fresh indexes on a 2-node devstack: 47 ms each one at a time, 11 ms each 8 at a time)
DOWNLOADS_AT_ONCE = 8
# The most bytes of one record in an answer: a spec of up to MAX_SPEC_BYTES and stdout and stderr tails of up to
# 64 KiB (what a result carries on the wire), with room for JSON's escapes. An answer is read into memory up to that
# many bytes for each record of its page, or of 100 for other answers (``_answer_cap``; event streams, followed logs
# and downloads aside): a node sending more once took all the client's memory (an endless describe: 558 MB in 1.5 s).
MAX_RECORD_BYTES = (MAX_SPEC_BYTES + 2 * 64 * 1024) * 3 // 2
# An answer's body must arrive within the client's timeout and one second more for each MIN_ANSWER_RATE bytes of it:
# a slow link carries a large page, and a node sending a byte a second (which no read timeout ends) is cut off.
MIN_ANSWER_RATE = 64 * 1024
LogStream = Literal["stdout", "stderr"]

_T = TypeVar("_T")
_A = TypeVar("_A")
_M = TypeVar("_M", bound=BaseModel)
# A flow yields a request to send, or a float (seconds to sleep), and is sent the response.
_Flow = Generator["httpx.Request | float", "httpx.Response", _T]


@dataclass(frozen=True)
class _Capped:
    """A step of a map's flow: send ``request`` and return its body, refused past ``limit`` bytes as it comes
    (a whole response read into memory first would let a node's result take the client's memory)."""

    request: httpx.Request
    limit: int

    def take(self, body: bytearray, chunk: bytes, deadline: float | None = None) -> None:
        """Add ``chunk`` to ``body``, refusing the response once it is over the limit, or past ``deadline``
        (``time.monotonic()``) and a second for each MIN_ANSWER_RATE bytes so far: httpx's timeouts bound each
        read, so a node sending a byte a second never ended."""
        body += chunk
        if len(body) > self.limit:
            raise ShoalAPIError(f"the node's answer to {self.request.url.path} is over {self.limit} bytes; refused",
                                None, "too_large")
        if deadline is not None and time.monotonic() > deadline + len(body) / MIN_ANSWER_RATE:
            raise httpx.ReadTimeout("the answer did not end in time", request=self.request)


def _answer_cap(request: httpx.Request) -> int:
    """The most bytes of the answer to ``request`` read into memory: MAX_RECORD_BYTES for each record of the page it
    asks for (``limit``), and for 100 at least."""
    try:
        records = int(request.url.params.get("limit", 0))
    except ValueError:
        records = 0
    return min(max(records, 100), MAX_PAGE) * MAX_RECORD_BYTES


def find_api_url() -> str:
    """Where the SDK and CLI find a node when no URL is given.

    ``$SHOAL_API``; else the first node of a running devstack (``$SHOAL_HOME/devstack.json``);
    else ``http://127.0.0.1:8700``. An unreadable devstack file is ignored: it is usually stale.
    """
    url = os.environ.get("SHOAL_API", "").strip()
    if url:
        return _normalise_url(url)
    try:
        state = json.loads((shoal_home() / "devstack.json").read_text())
        url = state["nodes"][0]["api"]
        if isinstance(url, str) and url:
            return _normalise_url(url)
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        pass
    return DEFAULT_API_URL


def _env_ca_cert() -> Path | None:
    value = os.environ.get("SHOAL_CA_CERT", "").strip()
    return Path(value).expanduser() if value else None


def _pinned_context(ca_cert: Path) -> Any:
    """A TLS context that trusts only the certificates in ``ca_cert`` (PEM): the node's own
    self-signed certificate, or the CA that issued it. The host name is checked as usual, so
    the certificate must name the host in the API URL (an IP address as an IP SAN)."""
    import ssl

    try:
        return ssl.create_default_context(cafile=str(ca_cert))
    except (OSError, ssl.SSLError) as e:
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
        raise ShoalAPIError(f"cannot use {ca_cert} as the node's certificate (SHOAL_CA_CERT / --ca-cert): "
                            f"{reason}", None, "bad_ca_cert") from None


def _normalise_url(url: str) -> str:
    url = url.strip().rstrip("/")
    return url if "://" in url else f"http://{url}"


class _BaseClient:
    """Request building and response parsing shared by ``Client`` and ``AsyncClient``."""

    # Pauses between the attempts of a submit that hit a connection error: 3 retries, each with
    # the same Idempotency-Key, so a submit whose response was lost is not run twice.
    submit_retry_delays: tuple[float, ...] = (0.25, 0.5, 1.0)
    # Pauses between reconnections of a broken event stream; more consecutive failures than
    # this (without receiving an event in between) give up with ConnectionFailed.
    stream_retry_delays: tuple[float, ...] = (0.1, 0.5, 1.0, 2.0, 5.0)
    # Seconds a wait (``wait``, ``wait_sweep``, ``map``) keeps asking a node it cannot reach: one restarting
    # comes back within it, and a restart once ended every wait on its jobs and sweeps.
    reconnect_patience: float = 60.0
    reconnect_first_delay: float = 0.5  # doubling to 5 s

    _http: httpx.Client | httpx.AsyncClient

    def __init__(self, api_url: str | None, key: ClientKey | None, timeout: float,
                 ca_cert: str | os.PathLike[str] | None = None) -> None:
        self.api_url = _normalise_url(api_url) if api_url else find_api_url()
        self.key = key if key is not None else ClientKey.load_or_create()
        self.timeout = timeout
        self.ca_cert = Path(ca_cert).expanduser() if ca_cert else _env_ca_cert()
        self._auth = ShoalAuth(self.key)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.api_url!r}, client_id={self.client_id!r})"

    @property
    def client_id(self) -> str:
        """Who the node thinks you are: the owner of the jobs you submit."""
        return self.key.client_id

    def _http_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "base_url": self.api_url,
            "auth": self._auth,
            "timeout": self.timeout,
            "headers": {"User-Agent": USER_AGENT, "Accept": "application/json"},
            "limits": POOL,
        }
        if self.api_url.startswith("https://") and self.ca_cert is not None:
            kwargs["verify"] = _pinned_context(self.ca_cert)
        elif self.api_url.startswith("http://"):
            # Plain HTTP never uses TLS, yet httpx loads certifi's CA bundle for every client
            # (measured 30-60 ms, a tenth of `shoal list`). A context that trusts no CA costs
            # nothing, and would fail closed, never open, if a request ever went to https.
            import ssl

            kwargs["verify"] = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        return kwargs

    # -- request building ----------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: httpx.Timeout | None = None,
    ) -> httpx.Request:
        if body is not None:
            headers = {"Content-Type": "application/json", **(headers or {})}
        return self._http.build_request(
            method,
            path,
            params=params,
            content=body,
            headers=headers,
            timeout=timeout if timeout is not None else httpx.USE_CLIENT_DEFAULT,
        )

    def _stream_timeout(self) -> httpx.Timeout:
        # Streams may be quiet for as long as a job runs: no read timeout, the rest as usual.
        return httpx.Timeout(self.timeout, read=None)

    def _describe_request(self, job_id: str, wait: float | None = None) -> httpx.Request:
        return self._long_poll(_job_path(job_id), wait)

    def _long_poll(self, path: str, wait: float | None) -> httpx.Request:
        """GET ``path``, answered at once or, with ``wait``, when it ends or after ``wait`` s."""
        if wait is None:
            return self._request("GET", path)
        return self._request(
            "GET",
            path,
            params={"wait": _seconds(wait)},
            timeout=httpx.Timeout(self.timeout, read=self.timeout + wait),
        )

    def _list_request(self, state: JobState | str | None, limit: int, offset: int,
                      selector: str | None = None) -> httpx.Request:
        params = {"limit": str(limit), "offset": str(offset)}
        if state is not None:
            params["state"] = str(JobState(state))
        if selector:
            params["selector"] = selector
        return self._request("GET", "/v1/jobs", params=params)

    def _events_request(self, job_id: str, last_event_id: str | None) -> httpx.Request:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        path = _sweep_path(job_id, "events") if _is_sweep(job_id) else _job_path(job_id, "events")
        return self._request("GET", path, headers=headers, timeout=self._stream_timeout())

    def _logs_request(self, job_id: str, stream: LogStream, follow: bool, offset: int = 0) -> httpx.Request:
        _check_stream(stream)
        return self._request(
            "GET",
            _job_path(job_id, "logs"),
            params={"stream": stream, "follow": "true" if follow else "false",
                    **({"offset": offset} if offset else {})},
            headers={"Accept": "text/plain"},
            timeout=self._stream_timeout() if follow else None,
        )

    def _share_request(self, some_id: str, key: str) -> httpx.Request:
        try:
            raw = parse_public_key(key)
        except ValueError as e:
            raise InvalidRequest(str(e), None, "invalid_key", ["key"]) from None
        path = _sweep_path(some_id, "shares") if _is_sweep(some_id) else _job_path(some_id, "shares")
        return self._request("POST", path, body=ShareRequest(key=b64encode(raw)).model_dump_json().encode())

    def _results_request(self, job_id: str) -> httpx.Request:
        return self._tar_request(_job_path(job_id, "results"))

    def _tar_request(self, path: str) -> httpx.Request:
        return self._request("GET", path, headers={"Accept": "application/x-tar"}, timeout=self._stream_timeout())

    def _sweep_list_request(self, limit: int, offset: int) -> httpx.Request:
        return self._request("GET", "/v1/sweeps", params={"limit": str(limit), "offset": str(offset)})

    def _sweep_indexes_request(
        self, sweep_id: str, state: JobState | str | None, first: int, limit: int
    ) -> httpx.Request:
        params = {"first": str(first), "limit": str(limit)}
        if state is not None:
            params["state"] = str(JobState(state))
        return self._request("GET", _sweep_path(sweep_id, "indexes"), params=params)

    def _index_logs_request(self, sweep_id: str, index: int, stream: LogStream) -> httpx.Request:
        _check_stream(stream)
        return self._request(
            "GET", _index_path(sweep_id, index, "logs"), params={"stream": stream}, headers={"Accept": "text/plain"}
        )

    # -- flows (see the module docstring) --------------------------------------------------------

    def _get_flow(self, request: httpx.Request, model: type[_M]) -> _Flow[_M]:
        response = yield request
        return parse(model, response)

    def _submit_flow(
        self, spec: JobSpec | dict[str, Any], idempotency_key: str | None, cache: bool = True
    ) -> _Flow[JobDescription]:
        body = SubmitRequest(spec=_as_spec(spec)).model_dump_json().encode()
        params = None if cache else {"cache": "false"}
        return (yield from self._idempotent_post_flow("/v1/jobs", body, idempotency_key, params, JobDescription))

    def _submit_sweep_flow(
        self, spec: SweepSpec | dict[str, Any], idempotency_key: str | None
    ) -> _Flow[SweepDescription]:
        body = SweepSubmitRequest(spec=_as_sweep_spec(spec)).model_dump_json().encode()
        return (yield from self._idempotent_post_flow("/v1/sweeps", body, idempotency_key, None, SweepDescription))

    def _idempotent_post_flow(
        self, path: str, body: bytes, idempotency_key: str | None, params: dict[str, str] | None, model: type[_M]
    ) -> _Flow[_M]:
        """POST that creates something, retried with one Idempotency-Key on connection errors and on 503
        (the node did nothing: it cannot write its store, or reads too many bodies at once)."""
        headers = {"Idempotency-Key": idempotency_key or str(uuid.uuid4())}
        delays = self.submit_retry_delays
        for attempt in range(len(delays) + 1):
            try:
                response = yield self._request("POST", path, params=params, body=body, headers=headers)
            except ConnectionFailed as e:
                if attempt == len(delays):
                    if attempt:
                        raise ConnectionFailed(f"{e.message} (tried {attempt + 1} times)", e.url) from e
                    raise
                yield delays[attempt]
                continue
            except ServerError as e:
                if e.status != 503 or attempt == len(delays):
                    raise
                yield delays[attempt]
                continue
            return parse(model, response)
        raise AssertionError("unreachable")

    def _wait_flow(self, job_id: str, timeout: float | None, poll: float) -> _Flow[JobDescription]:
        path, what = _job_path(job_id), f"job {job_id}"
        return (yield from self._until_terminal(path, what, JobDescription, lambda d: d.job.state, timeout, poll))

    def _wait_sweep_flow(self, sweep_id: str, timeout: float | None, poll: float) -> _Flow[SweepDescription]:
        path, what = _sweep_path(sweep_id), f"sweep {sweep_id}"
        return (yield from self._until_terminal(path, what, SweepDescription, lambda d: d.sweep.state, timeout, poll))

    def _patiently(self, make: Callable[[], httpx.Request], until: float | None = None) -> _Flow[httpx.Response]:
        """Send the request ``make`` builds; while the node cannot be reached (restarting) or answers 503 (it
        cannot write its store now), build it afresh (a new nonce) and send it again, backing off, for
        ``reconnect_patience`` seconds (or until ``until``, a ``time.monotonic()``, if sooner)."""
        give_up, delay = time.monotonic() + self.reconnect_patience, self.reconnect_first_delay
        give_up = give_up if until is None else min(give_up, until)
        while True:
            try:
                return (yield make())
            except (ConnectionFailed, ServerError) as e:
                if (isinstance(e, ServerError) and e.status != 503) or time.monotonic() + delay > give_up:
                    raise
            yield delay
            delay = min(delay * 2, 5.0)

    def _until_terminal(
        self,
        path: str,
        what: str,
        model: type[_M],
        state_of: Callable[[_M], JobState],
        timeout: float | None,
        poll: float,
    ) -> _Flow[_M]:
        """Long-poll the description at ``path`` until its state is terminal; after ``timeout``
        raise ``WaitTimeout`` (``what``: "job j-…" or "sweep s-…", for its message)."""
        if poll <= 0:
            raise ValueError("poll must be positive")
        deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
        description: _M | None = None
        while True:
            wait = poll if deadline is None else max(0.0, min(poll, deadline - time.monotonic()))
            started = time.monotonic()
            try:
                response = yield from self._patiently(partial(self._long_poll, path, wait), deadline)
            except ConnectionFailed as e:  # unreachable, or no whole answer in time (a node trickling it)
                if description is None or deadline is None or time.monotonic() < deadline:
                    raise
                raise WaitTimeout(f"{what} is still {state_of(description)} after {timeout:g} s", description) from e
            description = parse(model, response)
            state = state_of(description)
            if state.is_terminal:
                return description
            if deadline is not None and time.monotonic() >= deadline:
                raise WaitTimeout(f"{what} is still {state} after {timeout:g} s", description)
            # A node that answers at once (state changed, or it ignores ?wait) must not be
            # hammered: keep at least a second, or the wait asked for, between polls.
            pause = min(wait, 1.0) - (time.monotonic() - started)
            if pause > 0:
                yield pause

    def _run_flow(
        self, spec: JobSpec | dict[str, Any], timeout: float | None, poll: float
    ) -> _Flow[JobDescription]:
        description = yield from self._submit_flow(spec, None)
        return (yield from self._wait_flow(description.job.id, timeout, poll))

    def _run_sweep_flow(
        self, spec: SweepSpec | dict[str, Any], timeout: float | None, idempotency_key: str | None, poll: float
    ) -> _Flow[SweepDescription]:
        description = yield from self._submit_sweep_flow(spec, idempotency_key)
        return (yield from self._wait_sweep_flow(description.sweep.id, timeout, poll))

    def _whole_stdout_flow(self, sweep_id: str, record: IndexRecord) -> Generator[_Capped, bytes, IndexRecord]:
        """An index record whose stdout, a map's value, is longer than the tail a record keeps: with its stdout
        whole, from the index's results (checked against their CID). Values of 64-900 KiB once came back as
        "gave no value". A fetch that fails says so in the record's reason."""
        import tempfile

        from shoal._map import MAP_RESULTS_MAX

        assert record.result is not None
        whose = f"index {record.index} of sweep {sweep_id}"
        try:
            plan = plan_download(record.result, whose, record.state.value, MAP_RESULTS_MAX)
            body = yield _Capped(self._tar_request(_index_path(sweep_id, record.index, "results")), plan.max_bytes)
            with tempfile.TemporaryDirectory() as scratch:
                folder = extract_results([body], Path(scratch) / "results", whose, plan.cid or "", plan.max_bytes)
                stdout = (folder / "stdout").read_text(encoding="utf-8", errors="replace")
        except (ShoalAPIError, OSError) as e:
            why = f"its value, longer than a record keeps, could not be fetched from its results: {e}"
            return record.model_copy(update={"reason": why})
        return record.model_copy(update={"result": record.result.model_copy(
            update={"stdout": stdout, "stdout_truncated": False})})

    def _map_flow(self, run: MapRun) -> Generator[httpx.Request | _Capped | float | tuple[int, Any], Any, None]:
        """Submit a map's sweep, then hand out ``(index, outcome)`` as its indexes finish
        (``shoal._map``): a flow with a third kind of step, the tuples, for the caller."""
        from shoal._map import FIRST_POLL, MAX_POLL, PAGE

        spec = run.plan.spec
        if spec is None:
            return
        # The same map (function, values, options), run again, takes up the sweep it made before if that did not
        # complete (a Ctrl-C, a killed kernel, a closed laptop) and runs only what had not. A deterministic
        # map's completed sweep is its answer too; a map in an image, whose clocks and entropy are real, runs
        # afresh once its last sweep completed: under the next key of its chain (map-D, map-D-2, map-D-3, ...).
        digest, generation = spec.digest(), 1
        while True:
            key = f"map-{digest}" if generation == 1 else f"map-{digest}-{generation}"
            description = yield from self._submit_sweep_flow(spec, key)
            if spec.job.repeats_exactly() or description.sweep.state is not JobState.COMPLETED:
                break
            generation += 1
        if description.sweep.state in (JobState.CANCELLED, JobState.FAILED):
            description = yield from self._get_flow(self._request("POST", _sweep_path(description.sweep.id, "retry")),
                                                    SweepDescription)
        run.sweep_id = sweep_id = description.sweep.id
        wait, ended, finished = FIRST_POLL, False, 0  # finished: the indexes the sweep last said had ended
        while True:
            before = seen = len(run.done)
            page = parse(IndexList, (yield from self._patiently(
                partial(self._sweep_indexes_request, sweep_id, None, run.low, PAGE))))
            records = []
            for record in page.indexes:
                if run.cut_short(record):
                    record = yield from self._whole_stdout_flow(sweep_id, record)
                records.append(record)
            yield from run.take(records)
            if ended and len(run.done) == seen:  # over, yet no records for the rest: never poll in a loop
                yield from run.take(IndexRecord(index=i, state=JobState.FAILED, reason="the sweep ended without it")
                                    for i in range(run.plan.count) if i not in run.done)
            if run.complete:
                run.finished = True
                return
            seen = len(run.done)
            # More had finished, yet the page read none: they are past it, while an index below them runs on (a
            # straggler). The same page would come back unchanged, so ask as seldom as while nothing finishes.
            stuck = finished > before and seen == before
            while True:  # until more indexes have finished; the long poll returns at once at the sweep's end
                sweep = parse(SweepDescription, (yield from self._patiently(
                    partial(self._long_poll, _sweep_path(sweep_id), wait)))).sweep
                ended = sweep.state.is_terminal
                finished = sum(n for s, n in sweep.counts.items() if s.is_terminal)
                run.ended(finished)
                news = ended or finished > seen
                wait = FIRST_POLL if news and not stuck else min(wait * 2, MAX_POLL)
                if news:
                    break

    def _text_flow(self, request: httpx.Request) -> _Flow[str]:
        response = yield request
        return response.text

    def _version_flow(self) -> _Flow[str]:
        response = yield self._request("GET", "/v1/version")
        try:
            version = response.json()["version"]
        except (ValueError, KeyError, TypeError):
            version = None
        if not isinstance(version, str):
            raise ShoalAPIError("unexpected response from /v1/version", response.status_code, "bad_response")
        return version

    # -- responses and errors --------------------------------------------------------------------

    def _connection_failed(self, exc: httpx.TransportError) -> ConnectionFailed:
        return connection_failed(exc, self.api_url)

    def _request_failed(self, exc: httpx.RequestError) -> ShoalAPIError:
        return request_failed(exc, self.api_url)

    def _stream_closed(self, job_id: str) -> ConnectionFailed:
        return ConnectionFailed(
            f"event stream of {'sweep' if _is_sweep(job_id) else 'job'} {job_id} from {self.api_url} keeps closing "
            "before its end",
            self.api_url,
        )


class Client(_BaseClient):
    """Synchronous client of one Shoal node::

        with shoal.Client() as client:
            job = client.run({"engine": {"name": "python", "code": "print(6 * 7)"}}, timeout=60)
            print(job.job.state, client.logs(job.job.id))

    Requests are signed with ``key`` (default: ``$SHOAL_HOME/client.key``, created on first
    use). ``api_url`` defaults to ``find_api_url()``. ``transport`` is for tests and proxies.
    For an ``https://`` node, ``ca_cert`` (default ``$SHOAL_CA_CERT``) is a PEM file of the only
    certificates trusted: the node's self-signed certificate, or its CA's; without it, the
    system's CAs. The host name is checked either way.
    """

    _http: httpx.Client

    def __init__(
        self,
        api_url: str | None = None,
        *,
        key: ClientKey | None = None,
        timeout: float = 30.0,
        transport: httpx.BaseTransport | None = None,
        ca_cert: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(api_url, key, timeout, ca_cert)
        self._http = httpx.Client(transport=transport, **self._http_kwargs())

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # -- plumbing --------------------------------------------------------------------------------

    def _send(self, request: httpx.Request) -> httpx.Response:
        response = self._start(request)
        body = self._body(response, _Capped(request, _answer_cap(request)), _read_timeout(request))
        return check(_with_body(response, body))

    def _read_capped(self, step: _Capped) -> bytes:
        return self._body(self._open(step.request), step, None)

    def _start(self, request: httpx.Request) -> httpx.Response:
        try:
            return self._http.send(request, stream=True)
        except httpx.RequestError as e:
            raise self._request_failed(e) from e

    def _body(self, response: httpx.Response, step: _Capped, within: float | None) -> bytes:
        """The streamed ``response``'s body, then closed; refused past ``step.limit`` bytes or ``within`` s."""
        body, deadline = bytearray(), None if within is None else time.monotonic() + within
        try:
            for chunk in response.iter_bytes():
                step.take(body, chunk, deadline)
        except httpx.RequestError as e:
            raise self._request_failed(e) from e
        finally:
            response.close()
        return bytes(body)

    def _open(self, request: httpx.Request) -> httpx.Response:
        """Send and return a streaming response (status checked); the caller closes it."""
        response = self._start(request)
        if response.is_error:
            with contextlib.suppress(ShoalAPIError):  # the status is the error, even without its body
                response = _with_body(response, self._body(response, _Capped(request, _answer_cap(request)),
                                                           self.timeout))
            check(response)
        return response

    def _drive(self, flow: _Flow[_T]) -> _T:
        reply: Any = None
        error: ShoalAPIError | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(reply)
            except StopIteration as stop:
                return stop.value
            reply = error = None
            if isinstance(step, httpx.Request):
                try:
                    reply = self._send(step)
                except ShoalAPIError as e:
                    error = e
            else:
                time.sleep(step)

    # -- API ---------------------------------------------------------------------------------------

    def submit(
        self, spec: JobSpec | dict[str, Any], *, idempotency_key: str | None = None, cache: bool = True
    ) -> JobDescription:
        """Submit a job. Safe to retry: without ``idempotency_key`` a fresh one is generated and
        reused by the automatic retries, so a connection error never submits the job twice.

        A deterministic job (noop, wasm, python) whose verified result the node already has
        completes at once with that result; ``cache=False`` runs it again."""
        return self._drive(self._submit_flow(spec, idempotency_key, cache))

    def describe(self, job_id: str) -> JobDescription:
        return self._drive(self._get_flow(self._describe_request(job_id), JobDescription))

    def wait(self, job_id: str, *, timeout: float | None = None, poll: float = 25.0) -> JobDescription:
        """Block until the job is terminal; after ``timeout`` s raise ``WaitTimeout`` (last description)."""
        return self._drive(self._wait_flow(job_id, timeout, poll))

    def run(self, spec: JobSpec | dict[str, Any], *, timeout: float | None = None) -> JobDescription:
        """``submit`` then ``wait``: the job's final description (raises ``WaitTimeout`` on timeout)."""
        return self._drive(self._run_flow(spec, timeout, 25.0))

    def list(self, *, state: JobState | str | None = None, limit: int = 50, offset: int = 0,
             selector: str | None = None) -> JobList:
        """Your jobs (those submitted with this client's key), newest first; ``selector``: only those whose
        selector contains this text (``"zone=eu"``).

        Only your own: a node never lists other clients' jobs.
        """
        return self._drive(self._get_flow(self._list_request(state, limit, offset, selector), JobList))

    def cancel(self, job_id: str) -> JobDescription:
        return self._drive(self._get_flow(self._request("POST", _job_path(job_id, "cancel")), JobDescription))

    def events(self, job_id: str, *, last_event_id: str | int | None = None) -> Iterator[Event]:
        """The job's (or, for an ``s-`` id, the sweep's) events, from the start (or after
        ``last_event_id``) until its end.

        A stream that breaks is resumed with ``Last-Event-ID``: no event is lost or repeated.
        """
        last = None if last_event_id is None else str(last_event_id)
        failures = 0
        while True:
            reader = EventReader(last)
            try:
                response = self._open(self._events_request(job_id, last))
                try:
                    for chunk in response.iter_bytes():
                        for item in reader.read(chunk):
                            if item == "end":
                                return
                            failures = 0
                            yield item
                finally:
                    response.close()
                error: ConnectionFailed = self._stream_closed(job_id)
            except httpx.TransportError as e:
                error = self._connection_failed(e)
            except ConnectionFailed as e:
                error = e
            last = reader.last_id
            if failures >= len(self.stream_retry_delays):
                raise error
            time.sleep(self.stream_retry_delays[failures])
            failures += 1

    def logs(self, job_id: str, stream: LogStream = "stdout") -> str:
        """The job's output so far (``stream``: stdout or stderr)."""
        return self._drive(self._text_flow(self._logs_request(job_id, stream, follow=False)))

    def follow_logs(self, job_id: str, stream: LogStream = "stdout") -> Iterator[str]:
        """The job's output as its node writes it, in text chunks, then the rest of its result, until the
        job ends. A stream that breaks is resumed after the last byte received."""
        follower = _LogFollower()
        while True:
            try:
                response = self._open(self._logs_request(job_id, stream, follow=True, offset=follower.received))
                try:
                    for chunk in response.iter_bytes():
                        if text := follower.feed(chunk):
                            yield text
                finally:
                    response.close()
                if text := follower.end():
                    yield text
                return
            except httpx.TransportError as e:
                error = self._connection_failed(e)
            if follower.failures >= len(self.stream_retry_delays):
                raise error
            time.sleep(self.stream_retry_delays[follower.failures])
            follower.failures += 1

    def download(self, job_id: str, dest: str | os.PathLike[str], *, max_bytes: int | None = None) -> Path:
        """Fetch the job's results and extract them into ``dest``; returns it.

        The files must hash to the CID in the job's record (``describe``: the result the compute
        node signed); they are extracted beside ``dest`` and moved there only once they do.
        Archives with absolute paths, ``..``, devices or links that resolve outside ``dest`` are
        refused, and so is a download over ``max_bytes`` (default: twice the result's recorded
        sizes plus 64 MiB). A refused download writes nothing. Into an existing folder the results go
        beside what is there; one of their names already there with other content is refused
        (``ShoalAPIError``, code ``dest_exists``), so nothing of the user's is replaced. A stdout or
        stderr longer than the 1 MiB a compute node keeps (its last) is warned of (``warnings.warn``).
        """
        desc = self.describe(job_id)
        plan = plan_download(desc.shown_result(), f"job {desc.job.id}", desc.job.state.value, max_bytes)
        path = self._fetch(plan, self._results_request(desc.job.id), Path(dest), f"job {desc.job.id}")
        warn_if_truncated(desc.shown_result(), path)
        return path

    def _fetch(self, plan: Plan, request: httpx.Request, dest: Path, whose: str) -> Path:
        if plan.cid is None:
            return write_from_record(plan.files, dest)
        response = self._open(request)
        try:
            return extract_results(response.iter_bytes(), dest, whose, plan.cid, plan.max_bytes)
        except httpx.TransportError as e:
            raise self._connection_failed(e) from e
        finally:
            response.close()

    def upload_context(self, archive: bytes) -> str:
        """Store a packed working directory (see ``pack_context``) on the node; returns its CID."""
        request = self._request("POST", "/v1/contexts", body=archive, headers={"Content-Type": "application/x-tar"})
        return self._drive(self._get_flow(request, ContextStored)).cid

    def share(self, some_id: str, key: str) -> Share:
        """Let the client with public ``key`` (as ``shoal key show`` prints it) read your job, or your
        sweep for an ``s-`` id: describe, events, logs and results, nothing else."""
        return self._drive(self._get_flow(self._share_request(some_id, key), Share))

    def node(self) -> NodeStatus:
        return self._drive(self._get_flow(self._request("GET", "/v1/node"), NodeStatus))

    def peers(self) -> PeerList:
        return self._drive(self._get_flow(self._request("GET", "/v1/peers"), PeerList))

    def nodes(self) -> NodeList:
        return self._drive(self._get_flow(self._request("GET", "/v1/nodes"), NodeList))

    def version(self) -> str:
        return self._drive(self._version_flow())

    # -- sweeps ------------------------------------------------------------------------------------

    def submit_sweep(
        self, spec: SweepSpec | dict[str, Any], *, idempotency_key: str | None = None
    ) -> SweepDescription:
        """Submit a sweep: one request for many indexed jobs (see ``SweepSpec``).

        Safe to retry like ``submit``. The same ``idempotency_key`` with the same spec returns
        the sweep made first (reattach); with another spec it raises ``Conflict``."""
        return self._drive(self._submit_sweep_flow(spec, idempotency_key))

    def describe_sweep(self, sweep_id: str, *, wait: float | None = None) -> SweepDescription:
        """Counts and ranges of indexes per state; with ``wait``, answered when the sweep ends
        or after ``wait`` s (at most 60), whichever comes first."""
        return self._drive(self._get_flow(self._long_poll(_sweep_path(sweep_id), wait), SweepDescription))

    def wait_sweep(self, sweep_id: str, *, timeout: float | None = None, poll: float = 25.0) -> SweepDescription:
        """Block until the sweep is terminal; after ``timeout`` s raise ``WaitTimeout`` (last description)."""
        return self._drive(self._wait_sweep_flow(sweep_id, timeout, poll))

    def run_sweep(
        self, spec: SweepSpec | dict[str, Any], *, timeout: float | None = None, idempotency_key: str | None = None
    ) -> SweepDescription:
        """``submit_sweep`` then ``wait_sweep``: the sweep's final description."""
        return self._drive(self._run_sweep_flow(spec, timeout, idempotency_key, 25.0))

    def list_sweeps(self, *, limit: int = 50, offset: int = 0) -> SweepList:
        """Your sweeps, newest first."""
        return self._drive(self._get_flow(self._sweep_list_request(limit, offset), SweepList))

    def sweep_indexes(
        self, sweep_id: str, *, state: JobState | str | None = None, first: int = 0, limit: int = 1000
    ) -> IndexList:
        """Index records in index order from index ``first`` on (only those in ``state`` if given);
        ``total`` counts every index in that state."""
        return self._drive(self._get_flow(self._sweep_indexes_request(sweep_id, state, first, limit), IndexList))

    def sweep_index(self, sweep_id: str, index: int) -> IndexRecord:
        """One index: its state, node, attempts, reason and result."""
        return self._drive(self._get_flow(self._request("GET", _index_path(sweep_id, index)), IndexRecord))

    def retry_sweep(self, sweep_id: str) -> SweepDescription:
        """Put the failed indexes back to run; a failed sweep runs again, a cancelled one resumes."""
        request = self._request("POST", _sweep_path(sweep_id, "retry"))
        return self._drive(self._get_flow(request, SweepDescription))

    def cancel_sweep(self, sweep_id: str) -> SweepDescription:
        request = self._request("POST", _sweep_path(sweep_id, "cancel"))
        return self._drive(self._get_flow(request, SweepDescription))

    def download_index(
        self, sweep_id: str, index: int, dest: str | os.PathLike[str], *, max_bytes: int | None = None
    ) -> Path:
        """Fetch one index's results into ``dest``, checked against their recorded CID like ``download``."""
        record = self.sweep_index(sweep_id, index)
        whose = f"index {index} of sweep {sweep_id}"
        plan = plan_download(record.result, whose, record.state.value, max_bytes)
        return self._fetch(plan, self._tar_request(_index_path(sweep_id, index, "results")), Path(dest), whose)

    def download_sweep(
        self, sweep_id: str, dest: str | os.PathLike[str], *, max_bytes: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Path]:
        """Fetch the results of every completed index into ``dest``/INDEX, each checked against its recorded CID
        like ``download``; returns their folders in index order. One request an index (``download_index`` makes
        two), so 1,000 indexes cost 1,000 downloads, not 2,000 round trips. ``dest`` is made even when no index
        completed (``cd "$(shoal get ID)"`` in a script then finds it empty, not missing). ``progress`` is
        called with the number of indexes downloaded so far after each one (from worker threads)."""
        count, paths, first = self.describe_sweep(sweep_id).sweep.count, [], 0
        make_folder(Path(dest))
        counted = _Progress(progress)

        def fetch(record: IndexRecord) -> Path:
            plan, request, whose = _index_download(sweep_id, record, max_bytes, self._tar_request)
            path = self._fetch(plan, request, Path(dest) / str(record.index), whose)
            counted.one_more()
            return path

        while first is not None:
            page = self.sweep_indexes(sweep_id, state="completed", first=first, limit=SWEEP_PAGE)
            records, first = _page_of_indexes(page, first, count)
            paths += _in_threads(fetch, records, DOWNLOADS_AT_ONCE)
        return paths

    def index_logs(self, sweep_id: str, index: int, stream: LogStream = "stdout") -> str:
        """One index's stdout (or stderr); empty while it has not run."""
        return self._drive(self._text_flow(self._index_logs_request(sweep_id, index, stream)))

    # -- map ---------------------------------------------------------------------------------------

    def map(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], grid: dict[str, Iterable[Any]] | None = None,
        image: str | None = None, job: dict[str, Any] | None = None, return_exceptions: bool = False,
        as_frame: bool = False, progress: bool | None = None, confidence: int = 0,
    ) -> Any:
        """``fn`` on every item, remotely, as one sweep: the values in order (see ``shoal._map``).

        ``map(fn, xs)`` calls ``fn(x)``, ``map(fn, xs, ys)`` calls ``fn(x, y)`` (equal lengths), and
        ``map(fn, grid={"s0": [...], "vol": [...]})`` calls ``fn(s0=..., vol=...)`` for every
        combination, in ``itertools.product`` order. ``fn`` travels as source with what it uses
        (``CannotShip`` if it cannot); items and values as JSON plus tuples, sets, bytes and
        complex (``shoal._codec``). It runs on the python engine (Pyodide), or with ``image=`` in
        that container image; ``job`` adds to each index's job spec (``resources``, ``timeout``, …).

        The first exception ``fn`` raises is re-raised here as ``RemoteError`` (with the remote
        traceback; the rest of the sweep is cancelled), an index that gave no value as
        ``IndexFailed``; ``return_exceptions=True`` puts them in the list instead. ``as_frame=True``
        returns a pandas DataFrame: a column per argument, then the value (or a column per key of
        dict values). ``progress``: a progress bar on stderr (default: in a terminal or notebook).
        ``confidence=2`` (or more): a value counts only once that many nodes returned the same one, so
        one lying node cannot decide it (each index runs on that many nodes or more).
        """
        from shoal._map import MapRun, plan_map

        run = MapRun(plan_map(fn, iterables, grid, image, job, confidence))
        values: list[Any] = [None] * run.plan.count
        with contextlib.closing(self._map_results(run, return_exceptions, progress)) as results:
            for index, value in results:
                values[index] = value
        return run.plan.frame(values) if as_frame else values

    def map_iter(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], grid: dict[str, Iterable[Any]] | None = None,
        image: str | None = None, job: dict[str, Any] | None = None, ordered: bool = False,
        return_exceptions: bool = False, progress: bool | None = None, confidence: int = 0,
    ) -> Iterator[tuple[int, Any]]:
        """Like ``map``, but yields ``(index, value)`` as indexes finish (in index order with
        ``ordered=True``). Leaving the loop early cancels what has not run."""
        from shoal._map import MapRun, plan_map

        run = MapRun(plan_map(fn, iterables, grid, image, job, confidence), ordered=ordered)
        return self._map_results(run, return_exceptions, progress)

    def _map_results(self, run: MapRun, return_exceptions: bool, progress: bool | None) -> Iterator[tuple[int, Any]]:
        from shoal._errors import MapError
        from shoal._map import Progress

        run.progress = Progress(run.plan.count, enabled=progress)
        flow = self._map_flow(run)
        reply: Any = None
        error: ShoalAPIError | None = None
        try:
            while True:
                try:
                    step = flow.throw(error) if error is not None else flow.send(reply)
                except StopIteration:
                    return
                reply = error = None
                if isinstance(step, httpx.Request | _Capped):
                    try:
                        reply = self._send(step) if isinstance(step, httpx.Request) else self._read_capped(step)
                    except ShoalAPIError as e:
                        error = e
                elif isinstance(step, float):
                    time.sleep(step)
                elif isinstance(step[1], MapError) and not return_exceptions:
                    raise step[1]
                else:
                    yield step
        except KeyboardInterrupt:
            if run.sweep_id is None or run.finished:
                raise
            # raised afresh: a Ctrl-C lands in the HTTP client's frames, of no use to the one who pressed it
            raise KeyboardInterrupt(f"sweep {run.sweep_id} stopped; the same map, run again, takes it up where it "
                                    "stopped (what finished is kept)") from None
        finally:
            run.progress.close()
            if run.sweep_id is not None and not run.finished:
                with contextlib.suppress(ShoalAPIError):
                    self.cancel_sweep(run.sweep_id)


class AsyncClient(_BaseClient):
    """Asynchronous client (trio or asyncio) with the same methods as ``Client``::

        async with shoal.AsyncClient() as client:
            job = await client.submit(spec)
            async for event in client.events(job.job.id):
                print(event.kind, event.message)

    ``events`` and ``follow_logs`` are async generators: if you stop iterating early, close
    them (``async with contextlib.aclosing(client.events(job_id)) as events: ...``) so the
    connection is released at once rather than when the generator is garbage collected.
    """

    _http: httpx.AsyncClient

    def __init__(
        self,
        api_url: str | None = None,
        *,
        key: ClientKey | None = None,
        timeout: float = 30.0,
        transport: httpx.AsyncBaseTransport | None = None,
        ca_cert: str | os.PathLike[str] | None = None,
    ) -> None:
        super().__init__(api_url, key, timeout, ca_cert)
        self._http = httpx.AsyncClient(transport=transport, **self._http_kwargs())
        self._slots: tuple[anyio.Semaphore, anyio.Semaphore] | None = None  # (requests, long polls): made in
        # the event loop that first sends (trio or asyncio)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    # -- plumbing --------------------------------------------------------------------------------

    async def _send(self, request: httpx.Request) -> httpx.Response:
        if self._slots is None:
            self._slots = anyio.Semaphore(MAX_IN_FLIGHT), anyio.Semaphore(MAX_POLLING)
        async with self._slots["wait" in request.url.params]:
            response = await self._start(request)
            body = await self._body(response, _Capped(request, _answer_cap(request)), _read_timeout(request))
        return check(_with_body(response, body))

    async def _read_capped(self, step: _Capped) -> bytes:
        return await self._body(await self._open(step.request), step, None)

    async def _start(self, request: httpx.Request) -> httpx.Response:
        try:
            return await self._http.send(request, stream=True)
        except httpx.RequestError as e:
            raise self._request_failed(e) from e

    async def _body(self, response: httpx.Response, step: _Capped, within: float | None) -> bytes:
        """See ``Client._body``."""
        body, deadline = bytearray(), None if within is None else time.monotonic() + within
        try:
            async for chunk in response.aiter_bytes():
                step.take(body, chunk, deadline)
        except httpx.RequestError as e:
            raise self._request_failed(e) from e
        finally:
            await response.aclose()
        return bytes(body)

    async def _open(self, request: httpx.Request) -> httpx.Response:
        response = await self._start(request)
        if response.is_error:
            with contextlib.suppress(ShoalAPIError):  # the status is the error, even without its body
                response = _with_body(response, await self._body(response, _Capped(request, _answer_cap(request)),
                                                                 self.timeout))
            check(response)
        return response

    async def _drive(self, flow: _Flow[_T]) -> _T:
        reply: Any = None
        error: ShoalAPIError | None = None
        while True:
            try:
                step = flow.throw(error) if error is not None else flow.send(reply)
            except StopIteration as stop:
                return stop.value
            reply = error = None
            if isinstance(step, httpx.Request):
                try:
                    reply = await self._send(step)
                except ShoalAPIError as e:
                    error = e
            else:
                await _asleep(step)

    # -- API ---------------------------------------------------------------------------------------

    async def submit(
        self, spec: JobSpec | dict[str, Any], *, idempotency_key: str | None = None, cache: bool = True
    ) -> JobDescription:
        """See ``Client.submit``."""
        return await self._drive(self._submit_flow(spec, idempotency_key, cache))

    async def describe(self, job_id: str) -> JobDescription:
        return await self._drive(self._get_flow(self._describe_request(job_id), JobDescription))

    async def wait(self, job_id: str, *, timeout: float | None = None, poll: float = 25.0) -> JobDescription:
        """See ``Client.wait``."""
        return await self._drive(self._wait_flow(job_id, timeout, poll))

    async def run(self, spec: JobSpec | dict[str, Any], *, timeout: float | None = None) -> JobDescription:
        """See ``Client.run``."""
        return await self._drive(self._run_flow(spec, timeout, 25.0))

    async def list(self, *, state: JobState | str | None = None, limit: int = 50, offset: int = 0,
                   selector: str | None = None) -> JobList:
        """See ``Client.list``."""
        return await self._drive(self._get_flow(self._list_request(state, limit, offset, selector), JobList))

    async def cancel(self, job_id: str) -> JobDescription:
        return await self._drive(
            self._get_flow(self._request("POST", _job_path(job_id, "cancel")), JobDescription)
        )

    async def events(self, job_id: str, *, last_event_id: str | int | None = None) -> AsyncIterator[Event]:
        """See ``Client.events``."""
        last = None if last_event_id is None else str(last_event_id)
        failures = 0
        while True:
            reader = EventReader(last)
            try:
                response = await self._open(self._events_request(job_id, last))
                try:
                    chunks = response.aiter_bytes()
                    async for chunk in chunks:
                        for item in reader.read(chunk):
                            if item == "end":
                                await _drain(chunks)
                                return
                            failures = 0
                            yield item
                finally:
                    await response.aclose()
                error: ConnectionFailed = self._stream_closed(job_id)
            except httpx.TransportError as e:
                error = self._connection_failed(e)
            except ConnectionFailed as e:
                error = e
            last = reader.last_id
            if failures >= len(self.stream_retry_delays):
                raise error
            await _asleep(self.stream_retry_delays[failures])
            failures += 1

    async def logs(self, job_id: str, stream: LogStream = "stdout") -> str:
        return await self._drive(self._text_flow(self._logs_request(job_id, stream, follow=False)))

    async def follow_logs(self, job_id: str, stream: LogStream = "stdout") -> AsyncIterator[str]:
        """See ``Client.follow_logs``."""
        follower = _LogFollower()
        while True:
            try:
                response = await self._open(self._logs_request(job_id, stream, follow=True,
                                                                offset=follower.received))
                try:
                    async for chunk in response.aiter_bytes():
                        if text := follower.feed(chunk):
                            yield text
                finally:
                    await response.aclose()
                if text := follower.end():
                    yield text
                return
            except httpx.TransportError as e:
                error = self._connection_failed(e)
            if follower.failures >= len(self.stream_retry_delays):
                raise error
            await _asleep(self.stream_retry_delays[follower.failures])
            follower.failures += 1

    async def download(self, job_id: str, dest: str | os.PathLike[str], *, max_bytes: int | None = None) -> Path:
        """See ``Client.download``. Extraction runs in worker threads."""
        desc = await self.describe(job_id)
        plan = plan_download(desc.shown_result(), f"job {desc.job.id}", desc.job.state.value, max_bytes)
        path = await self._fetch(plan, self._results_request(desc.job.id), Path(dest), f"job {desc.job.id}")
        warn_if_truncated(desc.shown_result(), path)
        return path

    async def _fetch(self, plan: Plan, request: httpx.Request, dest: Path, whose: str) -> Path:
        import anyio
        import anyio.to_thread

        if plan.cid is None:
            return await anyio.to_thread.run_sync(write_from_record, plan.files, dest)
        response = await self._open(request)
        try:
            return await extract_results_async(response.aiter_bytes(), dest, whose, plan.cid, plan.max_bytes)
        except httpx.TransportError as e:
            raise self._connection_failed(e) from e
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()

    async def upload_context(self, archive: bytes) -> str:
        """See ``Client.upload_context``."""
        request = self._request("POST", "/v1/contexts", body=archive, headers={"Content-Type": "application/x-tar"})
        return (await self._drive(self._get_flow(request, ContextStored))).cid

    async def share(self, some_id: str, key: str) -> Share:
        """Like ``Client.share``."""
        return await self._drive(self._get_flow(self._share_request(some_id, key), Share))

    async def node(self) -> NodeStatus:
        return await self._drive(self._get_flow(self._request("GET", "/v1/node"), NodeStatus))

    async def peers(self) -> PeerList:
        return await self._drive(self._get_flow(self._request("GET", "/v1/peers"), PeerList))

    async def nodes(self) -> NodeList:
        return await self._drive(self._get_flow(self._request("GET", "/v1/nodes"), NodeList))

    async def version(self) -> str:
        return await self._drive(self._version_flow())

    # -- sweeps ------------------------------------------------------------------------------------

    async def submit_sweep(
        self, spec: SweepSpec | dict[str, Any], *, idempotency_key: str | None = None
    ) -> SweepDescription:
        """See ``Client.submit_sweep``."""
        return await self._drive(self._submit_sweep_flow(spec, idempotency_key))

    async def describe_sweep(self, sweep_id: str, *, wait: float | None = None) -> SweepDescription:
        """See ``Client.describe_sweep``."""
        return await self._drive(self._get_flow(self._long_poll(_sweep_path(sweep_id), wait), SweepDescription))

    async def wait_sweep(
        self, sweep_id: str, *, timeout: float | None = None, poll: float = 25.0
    ) -> SweepDescription:
        """See ``Client.wait_sweep``."""
        return await self._drive(self._wait_sweep_flow(sweep_id, timeout, poll))

    async def run_sweep(
        self, spec: SweepSpec | dict[str, Any], *, timeout: float | None = None, idempotency_key: str | None = None
    ) -> SweepDescription:
        """See ``Client.run_sweep``."""
        return await self._drive(self._run_sweep_flow(spec, timeout, idempotency_key, 25.0))

    async def list_sweeps(self, *, limit: int = 50, offset: int = 0) -> SweepList:
        """See ``Client.list_sweeps``."""
        return await self._drive(self._get_flow(self._sweep_list_request(limit, offset), SweepList))

    async def sweep_indexes(
        self, sweep_id: str, *, state: JobState | str | None = None, first: int = 0, limit: int = 1000
    ) -> IndexList:
        """See ``Client.sweep_indexes``."""
        request = self._sweep_indexes_request(sweep_id, state, first, limit)
        return await self._drive(self._get_flow(request, IndexList))

    async def sweep_index(self, sweep_id: str, index: int) -> IndexRecord:
        """See ``Client.sweep_index``."""
        return await self._drive(self._get_flow(self._request("GET", _index_path(sweep_id, index)), IndexRecord))

    async def retry_sweep(self, sweep_id: str) -> SweepDescription:
        """See ``Client.retry_sweep``."""
        request = self._request("POST", _sweep_path(sweep_id, "retry"))
        return await self._drive(self._get_flow(request, SweepDescription))

    async def cancel_sweep(self, sweep_id: str) -> SweepDescription:
        request = self._request("POST", _sweep_path(sweep_id, "cancel"))
        return await self._drive(self._get_flow(request, SweepDescription))

    async def download_index(
        self, sweep_id: str, index: int, dest: str | os.PathLike[str], *, max_bytes: int | None = None
    ) -> Path:
        """See ``Client.download_index``."""
        record = await self.sweep_index(sweep_id, index)
        whose = f"index {index} of sweep {sweep_id}"
        plan = plan_download(record.result, whose, record.state.value, max_bytes)
        return await self._fetch(plan, self._tar_request(_index_path(sweep_id, index, "results")), Path(dest), whose)

    async def download_sweep(
        self, sweep_id: str, dest: str | os.PathLike[str], *, max_bytes: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> list[Path]:
        """See ``Client.download_sweep``."""
        count, paths, first = (await self.describe_sweep(sweep_id)).sweep.count, [], 0
        make_folder(Path(dest))
        room = anyio.Semaphore(DOWNLOADS_AT_ONCE)
        fetched: dict[int, Path] = {}
        counted = _Progress(progress)

        async def fetch(record: IndexRecord) -> None:
            async with room:
                plan, request, whose = _index_download(sweep_id, record, max_bytes, self._tar_request)
                fetched[record.index] = await self._fetch(plan, request, Path(dest) / str(record.index), whose)
                counted.one_more()

        while first is not None:
            page = await self.sweep_indexes(sweep_id, state="completed", first=first, limit=SWEEP_PAGE)
            records, first = _page_of_indexes(page, first, count)
            try:
                async with anyio.create_task_group() as tasks:
                    for record in records:
                        tasks.start_soon(fetch, record)
            except BaseExceptionGroup as group:  # the first failure, as one at a time raised it
                raise _first_leaf(group) from None
            paths += [fetched.pop(record.index) for record in records]
        return paths

    async def index_logs(self, sweep_id: str, index: int, stream: LogStream = "stdout") -> str:
        """See ``Client.index_logs``."""
        return await self._drive(self._text_flow(self._index_logs_request(sweep_id, index, stream)))

    # -- map ---------------------------------------------------------------------------------------

    async def map(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], grid: dict[str, Iterable[Any]] | None = None,
        image: str | None = None, job: dict[str, Any] | None = None, return_exceptions: bool = False,
        as_frame: bool = False, progress: bool | None = None, confidence: int = 0,
    ) -> Any:
        """See ``Client.map``."""
        from shoal._map import MapRun, plan_map

        run = MapRun(plan_map(fn, iterables, grid, image, job, confidence))
        values: list[Any] = [None] * run.plan.count
        async with contextlib.aclosing(self._map_results(run, return_exceptions, progress)) as results:
            async for index, value in results:
                values[index] = value
        return run.plan.frame(values) if as_frame else values

    def map_iter(
        self, fn: Callable[..., Any], *iterables: Iterable[Any], grid: dict[str, Iterable[Any]] | None = None,
        image: str | None = None, job: dict[str, Any] | None = None, ordered: bool = False,
        return_exceptions: bool = False, progress: bool | None = None, confidence: int = 0,
    ) -> AsyncIterator[tuple[int, Any]]:
        """See ``Client.map_iter``; an async generator: close it (``contextlib.aclosing``) if you
        leave the loop early, so that what has not run is cancelled at once."""
        from shoal._map import MapRun, plan_map

        run = MapRun(plan_map(fn, iterables, grid, image, job, confidence), ordered=ordered)
        return self._map_results(run, return_exceptions, progress)

    async def _map_results(
        self, run: MapRun, return_exceptions: bool, progress: bool | None
    ) -> AsyncIterator[tuple[int, Any]]:
        import anyio

        from shoal._errors import MapError
        from shoal._map import Progress

        run.progress = Progress(run.plan.count, enabled=progress)
        flow = self._map_flow(run)
        reply: Any = None
        error: ShoalAPIError | None = None
        try:
            while True:
                try:
                    step = flow.throw(error) if error is not None else flow.send(reply)
                except StopIteration:
                    return
                reply = error = None
                if isinstance(step, httpx.Request | _Capped):
                    try:
                        reply = await (self._send(step) if isinstance(step, httpx.Request) else self._read_capped(step))
                    except ShoalAPIError as e:
                        error = e
                elif isinstance(step, float):
                    await _asleep(step)
                elif isinstance(step[1], MapError) and not return_exceptions:
                    raise step[1]
                else:
                    yield step
        finally:
            run.progress.close()
            if run.sweep_id is not None and not run.finished:
                with anyio.CancelScope(shield=True), anyio.move_on_after(10), contextlib.suppress(ShoalAPIError):
                    await self.cancel_sweep(run.sweep_id)


async def _drain(chunks: AsyncIterator[bytes], limit: float = 1.0) -> None:
    """Read to the end of a stream whose last message arrived (the node closes right after it).

    Leaving httpx's nested async generators suspended would make trio finalise them from the
    garbage collector, with a ResourceWarning each; a node that does not close is given up on.
    """
    import anyio

    with anyio.move_on_after(limit):
        async for _ in chunks:
            pass


async def _asleep(seconds: float) -> None:
    import anyio  # works under trio and asyncio alike; imported only when an async client sleeps

    await anyio.sleep(seconds)


# -- helpers ---------------------------------------------------------------------------------------


def _job_path(job_id: str, action: str = "") -> str:
    if not job_id or job_id in (".", ".."):
        raise ValueError(f"invalid job id {job_id!r}")
    path = f"/v1/jobs/{quote(job_id, safe='')}"
    return f"{path}/{action}" if action else path


def _sweep_path(sweep_id: str, action: str = "") -> str:
    if not sweep_id or sweep_id in (".", ".."):
        raise ValueError(f"invalid sweep id {sweep_id!r}")
    path = f"/v1/sweeps/{quote(sweep_id, safe='')}"
    return f"{path}/{action}" if action else path


SWEEP_PAGE = 1000  # index records asked for at once


class _Progress:
    """Counts what a download has done so far for its ``progress`` callback (called from worker threads)."""

    def __init__(self, callback: Callable[[int], None] | None) -> None:
        import threading

        self.callback, self.done, self.lock = callback, 0, threading.Lock()

    def one_more(self) -> None:
        if self.callback is not None:
            with self.lock:
                self.done += 1
                self.callback(self.done)


def _in_threads(fn: Callable[[_A], _T], items: list[_A], at_once: int) -> list[_T]:
    """``fn`` of each item, ``at_once`` at a time, in daemon threads; the results in order. The first failure is
    raised as soon as it happens, and so is Ctrl-C: no call under way is waited for (a pool's threads are joined,
    and a stalled download held Ctrl-C back for good); none is started after."""
    import threading

    results: list[Any] = [None] * len(items)
    failed: list[BaseException] = []
    left, lock, done = iter(range(len(items))), threading.Lock(), threading.Event()
    ended = 0

    def work() -> None:
        nonlocal ended
        while not failed and not done.is_set():
            with lock:
                i = next(left, None)
            if i is None:
                return
            try:
                results[i] = fn(items[i])
            except BaseException as e:  # raised in the caller's thread
                failed.append(e)
            with lock:
                ended += 1
                if failed or ended == len(items):
                    done.set()

    if items:
        for _ in range(min(at_once, len(items))):
            threading.Thread(target=work, name="shoal-download", daemon=True).start()
        try:
            done.wait()
        finally:
            done.set()  # on Ctrl-C too: the threads start nothing more
    if failed:
        raise failed[0]
    return results


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    """The first error in ``group`` that is not itself a group."""
    error: BaseException = group
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def _page_of_indexes(page: IndexList, first: int, count: int) -> tuple[list[IndexRecord], int | None]:
    """A page of index records: those to download, each once and in order, from ``first`` and below ``count`` (what
    a node answers is checked, so a page that does not move on ends the loop), and where the next page starts
    (None: this one was the last)."""
    records, after = [], first
    for record in sorted(page.indexes, key=lambda r: r.index):
        if after <= record.index < count:
            records.append(record)
            after = record.index + 1
    last = len(page.indexes) < SWEEP_PAGE or after == first or after >= count
    return records, None if last else after


def _index_download(sweep_id: str, record: IndexRecord, max_bytes: int | None,
                    tar_request: Callable[[str], httpx.Request]) -> tuple[Plan, httpx.Request, str]:
    """What ``_fetch`` takes to download one index's results, from its record: the plan, the request, whose."""
    whose = f"index {record.index} of sweep {sweep_id}"
    plan = plan_download(record.result, whose, record.state.value, max_bytes)
    return plan, tar_request(_index_path(sweep_id, record.index, "results")), whose


def _index_path(sweep_id: str, index: int, action: str = "") -> str:
    if isinstance(index, bool) or not isinstance(index, int) or index < 0:
        raise ValueError(f"invalid index {index!r}: a sweep's indexes are 0, 1, 2, …")
    return _sweep_path(sweep_id, f"indexes/{index}" + (f"/{action}" if action else ""))


def _is_sweep(some_id: str) -> bool:
    """Sweep ids start with ``s-``, job ids with ``j-``."""
    return some_id.startswith("s-")


class _LogFollower:
    """Bytes of a followed log → text (UTF-8 sequences split between chunks are kept whole), and how many
    bytes came, to resume after them."""

    def __init__(self) -> None:
        self.received = 0
        self.failures = 0
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def feed(self, chunk: bytes) -> str:
        if chunk:
            self.received += len(chunk)
            self.failures = 0
        return self._decoder.decode(chunk)

    def end(self) -> str:
        return self._decoder.decode(b"", final=True)


def _read_timeout(request: httpx.Request) -> float | None:
    """The request's read timeout (the client's; a long poll's, its wait more; a stream's, none): the most its
    whole answer may take once its headers came."""
    return request.extensions.get("timeout", {}).get("read")


def _with_body(response: httpx.Response, body: bytes) -> httpx.Response:
    """A streamed ``response`` with its ``body``, read (and decoded) by the caller: as ``send`` would return it."""
    headers = [(k, v) for k, v in response.headers.multi_items() if k.lower() != "content-encoding"]
    return httpx.Response(response.status_code, headers=headers, content=body, request=response.request,
                          extensions=response.extensions)


def _check_stream(stream: str) -> None:
    if stream not in ("stdout", "stderr"):
        raise ValueError(f"stream must be 'stdout' or 'stderr', not {stream!r}")


def _seconds(value: float) -> str:
    """Compact decimal seconds for ``?wait=``: ``25``, ``0.5``."""
    return f"{value:.3f}".rstrip("0").rstrip(".")


def _as_spec(spec: JobSpec | dict[str, Any]) -> JobSpec:
    """Validate locally so a bad spec fails with every problem named, before any request."""
    job = _validated(JobSpec, spec, "job")
    _admissible(job.submission_problem(), "job", "spec")
    return job


def _as_sweep_spec(spec: SweepSpec | dict[str, Any]) -> SweepSpec:
    sweep = _validated(SweepSpec, spec, "sweep")
    _admissible(sweep.job.submission_problem(), "sweep", "spec.job")
    return sweep


def _admissible(problem: str | None, what: str, prefix: str) -> None:
    """What a node refuses of a new submission (an endless deadline, an input no node can fetch), refused here."""
    if problem:
        field = f"{prefix}.{problem.partition(':')[0]}"
        raise InvalidRequest(f"invalid {what} spec: {field}: {problem.partition(': ')[2]}", None, "invalid_spec",
                             [field])


def _validated(model: type[_M], spec: _M | dict[str, Any], what: str) -> _M:
    if isinstance(spec, model):
        return spec
    try:
        return model.model_validate(spec)
    except ValidationError as e:
        fields = [".".join(["spec", *map(str, err["loc"])]) for err in e.errors()]
        raise InvalidRequest(
            f"invalid {what} spec: {validation_summary(e, 'spec')}", None, "invalid_spec", fields
        ) from None

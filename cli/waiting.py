"""Submit a job (or a sweep) and follow it: live status line, the job's stdout, and the exit code.

stdout carries only what a script wants (the job's stdout, its id, or JSON); everything for
the human (status line, where the results are, errors) goes to stderr, so
``shoal run … > out.txt`` captures exactly the job's output.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, TypeVar

from cli.errors import EXIT_JOB_FAILED, EXIT_OK, EXIT_TIMEOUT, EXIT_UNREACHABLE, CLIError
from cli.options import RunOptions
from cli.render import print_json, status_line, stderr_tail, truncation_note
from cli.terminal import write_output

if TYPE_CHECKING:
    from rich.status import Status

    from jobs import JobSpec, RunResult
    from jobs.sweep import Sweep, SweepSpec
    from jobs.views import JobDescription, SweepDescription
    from shoal import Client, ConnectionFailed

T = TypeVar("T")

# While a sweep runs, its description is fetched with ?wait= this long: the node answers at once
# when the sweep ends, else after this, so the live line moves about once a second or two.
SWEEP_POLL = 1.5


def submitted(submit: Callable[[str], T], key: str | None) -> T:
    """``submit(key)``, with ``--idempotency-key`` or a key of our own. A submit whose answer never came may have
    been made (a node frozen, or killed, after it wrote the job: it ran, and the user had no id): the error
    says how to find it, and how to submit it again without making a second. One refused at every try was not."""
    from shoal import ConnectionFailed

    key = key or str(uuid.uuid4())
    try:
        return submit(key)
    except ConnectionFailed as e:
        if "connection refused" in e.message:  # no node listens there: nothing was sent, and the usual hint fits
            raise
        raise CLIError(f"{e.message} (if the node took it before it stopped answering, 'shoal list' shows it; to "
                       f"submit again without making a second, add --idempotency-key {key})",
                       code=EXIT_UNREACHABLE) from None


def submit_and_follow(client: Client, new_client: Callable[[], Client], spec: JobSpec, opts: RunOptions) -> int:
    """Submit ``spec``; unless ``--no-wait``, wait for a terminal state. Returns the exit code."""
    desc = submitted(lambda key: client.submit(spec, idempotency_key=key, cache=opts.cache), opts.idempotency_key)
    job_id = desc.job.id
    quiet = opts.id_only or opts.json
    if opts.id_only:
        print(job_id, flush=True)  # at once, so a reader of the pipe has it while we wait
    if not opts.wait:
        if opts.json:
            print_json(desc)
        elif not opts.id_only:
            print(job_id)
            print(f"Job submitted; follow it with: shoal wait {job_id} (or see where it stands: shoal describe)",
                  file=sys.stderr)
        return EXIT_OK
    if not quiet:
        print(f"Job {job_id} submitted", file=sys.stderr, flush=True)
    return follow_job(client, new_client, desc, opts)


def follow_job(client: Client, new_client: Callable[[], Client], desc: JobDescription, opts: RunOptions) -> int:
    """Wait for the job's end (or ``opts.wait_timeout``) with a live status line, then report it."""
    from shoal import ConnectionFailed

    job_id = desc.job.id
    try:
        live = not (opts.id_only or opts.json) and sys.stderr.isatty()
        desc = _wait(client, new_client, desc, opts.wait_timeout, live=live)
    except KeyboardInterrupt:
        print(f"Interrupted; job {job_id} goes on (stop it with: shoal cancel {job_id})", file=sys.stderr)
        raise
    except ConnectionFailed as e:
        raise gave_up(e, "job", job_id) from None
    return report_outcome(client, desc, opts)


def gave_up(e: ConnectionFailed, what: str, name: str) -> CLIError:
    """The node stopped answering while we waited (restarting, say): the work goes on there, and the hint to start
    a devstack, fit for a node never reached, would mislead."""
    return CLIError(f"{e.message}; the {what} goes on there once it is back: shoal wait {name}", code=EXIT_UNREACHABLE)


def report_outcome(client: Client, desc: JobDescription, opts: RunOptions) -> int:
    job = desc.job
    if opts.json:
        print_json(desc)
    if not job.state.is_terminal:
        raise CLIError(
            f"job {job.id} still {job.state} after waiting: {job.reason or 'no reason given'}"
            f" (it goes on: shoal wait {job.id})",
            code=EXIT_TIMEOUT,
        )
    if job.state != "completed":
        if (tail := stderr_tail(job)) and not opts.json:
            print(f"The job's stderr ended with (all of it: shoal logs --stderr {job.id}):", file=sys.stderr)
            write_output([tail], sys.stderr)
        raise CLIError(f"job {job.id} {job.state}: {job.reason or 'no reason given'}", code=EXIT_JOB_FAILED)
    if not (opts.json or opts.id_only):
        write_output([job_stdout(client, desc)])
        result = desc.shown_result()
        shoal_notes(result)
        if note := truncation_note(result, "stdout", f"shoal get {job.id}"):
            print(note, file=sys.stderr)
        # the job's result alone: an outvoted node's (rejected) differs, and is no result of the job
        where = f"results at ipfs://{result.cid}; " if result and result.cid else ""
        print(f"Job {job.id} completed; {where}download with: shoal get {job.id}", file=sys.stderr)
    return EXIT_OK


SHOAL_NOTES = 5  # last lines of a completed run's stderr looked at for Shoal's notes (a job can print a flood)


def shoal_notes(result: RunResult | None) -> None:
    """The lines of a completed run's stderr that Shoal wrote to the user ("shoal: …", e.g. a file written
    outside the outputs and lost): on success its stderr is not shown, and the user missed them."""
    lines = (result.stderr if result else "").splitlines()[-SHOAL_NOTES:]  # the runner's come last
    notes = [f"{line}\n" for line in lines if line.startswith("shoal: ")]
    if notes:
        write_output(notes, sys.stderr)


def job_stdout(client: Client, desc: JobDescription) -> str:
    """The full stdout from the node; the tail kept in the execution record if that fails."""
    from shoal import ShoalAPIError

    try:
        return client.logs(desc.job.id, "stdout")
    except ShoalAPIError:
        done = [ex for ex in desc.executions if ex.result is not None and ex.state == "completed"]
        return done[0].result.stdout if done and done[0].result else ""


def _wait(
    client: Client, new_client: Callable[[], Client], desc: JobDescription, timeout: float | None, live: bool
) -> JobDescription:
    from shoal import WaitTimeout

    job_id = desc.job.id
    try:
        if not live:
            return client.wait(job_id, timeout=timeout)
        from cli.render import console

        err = console(stderr=True)
        with err.status("") as status:
            line = _LiveLine(status, job_id, width=err.width - 2)  # the spinner and a space come first
            line.update(desc.job.state, desc.job.reason)
            threading.Thread(target=watch, args=(new_client, job_id, line), daemon=True).start()
            try:
                return client.wait(job_id, timeout=timeout)
            finally:
                line.close()
    except WaitTimeout as exc:
        return exc.description  # not terminal: report_outcome turns it into exit 124


class _LiveLine:
    """The status line, updated from the watcher thread until the main thread closes it."""

    def __init__(self, status: Status, job_id: str, width: int) -> None:
        self._status = status
        self._job_id = job_id
        self._width = width
        self._lock = threading.Lock()
        self._closed = False

    def update(self, state: str, reason: str) -> None:
        with self._lock:
            if not self._closed:
                self._status.update(status_line(self._job_id, state, reason, self._width))

    def close(self) -> None:
        with self._lock:
            self._closed = True


def watch(new_client: Callable[[], Client], job_id: str, line: _LiveLine) -> None:
    """Refresh the status line on every event of the job.

    Cosmetic only and on its own client (own connection): the main thread's ``wait`` decides
    the outcome, so any failure here just freezes the line.
    """
    try:
        client = new_client()
        for _event in client.events(job_id):
            job = client.describe(job_id).job
            line.update(job.state, job.reason)
    except Exception:
        return


# -- sweeps -------------------------------------------------------------------------------------


def submit_and_follow_sweep(client: Client, spec: SweepSpec, opts: RunOptions) -> int:
    """Submit a sweep; unless ``--no-wait``, follow it to its end. Returns the exit code."""
    desc = submitted(lambda key: client.submit_sweep(spec, idempotency_key=key), opts.idempotency_key)
    count = desc.sweep.count
    message = f"Sweep {desc.sweep.id} submitted: {count} index{'es' if count != 1 else ''}"
    return follow_sweep(client, desc, opts, message)


def follow_sweep(client: Client, desc: SweepDescription, opts: RunOptions, message: str) -> int:
    """After a submit (or retry): print the id or ``message``, wait unless ``--no-wait``, report."""
    from shoal import ConnectionFailed

    sweep_id = desc.sweep.id
    quiet = opts.id_only or opts.json
    if opts.id_only:
        print(sweep_id, flush=True)
    if not opts.wait:
        if opts.json:
            print_json(desc)
        elif not opts.id_only:
            print(sweep_id)
            print(f"{message}; follow it with: shoal wait {sweep_id} (or see where it stands: shoal describe)",
                  file=sys.stderr)
        return EXIT_OK
    if not quiet:
        print(message, file=sys.stderr, flush=True)
    try:
        desc = wait_sweep(client, desc, opts.wait_timeout, live=not quiet and sys.stderr.isatty())
    except KeyboardInterrupt:
        print(f"Interrupted; sweep {sweep_id} goes on (stop it with: shoal cancel {sweep_id})", file=sys.stderr)
        raise
    except ConnectionFailed as e:
        raise gave_up(e, "sweep", sweep_id) from None
    return report_sweep(client, desc, opts)


def wait_sweep(client: Client, desc: SweepDescription, timeout: float | None, live: bool) -> SweepDescription:
    """Wait for the sweep's end (or ``timeout``): the last description seen, terminal or not."""
    from shoal import ConnectionFailed, WaitTimeout

    sweep_id = desc.sweep.id
    if desc.sweep.state.is_terminal:
        return desc
    if not live:
        try:
            return client.wait_sweep(sweep_id, timeout=timeout)
        except WaitTimeout as exc:
            return exc.description  # type: ignore[return-value]  # a sweep's: report_sweep says 124
    from cli.render import console, sweep_status_line

    err = console(stderr=True)
    deadline = None if timeout is None else time.monotonic() + timeout
    unreachable: float | None = None  # since when the node has not answered
    width = err.width - 2  # the spinner and a space come first
    with err.status(sweep_status_line(desc.sweep, width)) as status:
        while not desc.sweep.state.is_terminal:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            wait = SWEEP_POLL if left is None else min(SWEEP_POLL, left)
            started = time.monotonic()
            try:
                desc = client.describe_sweep(sweep_id, wait=wait)
            except ConnectionFailed:  # the node restarting: asked again, as client.wait_sweep does
                unreachable = unreachable or time.monotonic()
                if time.monotonic() - unreachable > client.reconnect_patience:
                    raise
                status.update(f"node unreachable, asking again; sweep {sweep_id} goes on there")
                time.sleep(1.0)
                continue
            unreachable = None
            status.update(sweep_status_line(desc.sweep, width))
            pause = min(wait, 1.0) - (time.monotonic() - started)  # a node that ignores ?wait is not hammered
            if pause > 0 and not desc.sweep.state.is_terminal:
                time.sleep(pause)
    return desc


def report_sweep(client: Client, desc: SweepDescription, opts: RunOptions) -> int:
    """The outcome: ranges of indexes per state on stderr; with success=any, the winner's stdout."""
    from cli.render import index_values, range_lines, sweep_counts
    from jobs import JobState
    from shoal import ShoalAPIError

    sweep = desc.sweep
    quiet = opts.json or opts.id_only
    if opts.json:
        print_json(desc)
    if not sweep.state.is_terminal:
        raise CLIError(
            f"sweep {sweep.id} still {sweep.state} after waiting: {sweep_counts(sweep)}"
            f" (it goes on: shoal wait {sweep.id})",
            code=EXIT_TIMEOUT,
        )
    if not quiet:
        print(f"Sweep {sweep.id} {sweep.state}: {sweep_counts(sweep)}", file=sys.stderr)
        for line in range_lines(desc):
            print(line, file=sys.stderr)
    if sweep.state != "completed":
        if not quiet and sweep.counts.get(JobState.FAILED):
            explain_failures(client, sweep)
        raise CLIError(f"sweep {sweep.id} {sweep.state}: {sweep.reason or 'no reason given'}", code=EXIT_JOB_FAILED)
    if quiet:
        return EXIT_OK
    if sweep.winner is not None:
        values = index_values(sweep.spec, sweep.winner)
        print(f"Index {sweep.winner} succeeded first" + (f" ({values})" if values else "") + "; its stdout:",
              file=sys.stderr, flush=True)
        write_output([index_stdout(client, sweep.id, sweep.winner)])
        with contextlib.suppress(ShoalAPIError):
            shoal_notes(client.sweep_index(sweep.id, sweep.winner).result)
        print(f"Its results: shoal sweep get {sweep.id} {sweep.winner}", file=sys.stderr)
    else:
        print(f"An index's stdout: shoal sweep logs {sweep.id} INDEX; every index's results: shoal get {sweep.id}",
              file=sys.stderr)
    return EXIT_OK


def explain_failures(client: Client, sweep: Sweep) -> None:
    """The first failed index's stderr, as a failed job's (a syntax error showed only "exit code 1"), and what
    to do next: a retry runs what failed by chance again, never a program that exits the same on every run."""
    from cli.render import index_values
    from jobs import JobState
    from shoal import ShoalAPIError

    try:
        first = client.sweep_indexes(sweep.id, state=JobState.FAILED, limit=1).indexes
    except ShoalAPIError:
        first = []
    if first and (tail := stderr_tail(first[0])):
        index = first[0].index
        values = index_values(sweep.spec, index)
        print(f"Index {index}" + (f" ({values})" if values else "") + " failed; its stderr ended with (all of it: "
              f"shoal sweep logs {sweep.id} {index} --stderr):", file=sys.stderr)
        write_output([tail], sys.stderr)
    exited = bool(first) and first[0].result is not None
    if exited and sweep.spec.job.repeats_exactly():
        print(f"Why: shoal sweep indexes {sweep.id} --state failed. A deterministic program exits the same on "
              "every run: fix it and run the sweep again", file=sys.stderr)
    else:
        print(f"Why: shoal sweep indexes {sweep.id} --state failed; "
              f"run them again: shoal sweep retry {sweep.id}", file=sys.stderr)


def index_stdout(client: Client, sweep_id: str, index: int) -> str:
    """One index's stdout from the node; its record's copy if that fails."""
    from shoal import ShoalAPIError

    try:
        return client.index_logs(sweep_id, index)
    except ShoalAPIError:
        try:
            record = client.sweep_index(sweep_id, index)
        except ShoalAPIError:
            return ""
        return record.result.stdout if record.result else ""

"""One execution's pipeline: stage inputs, run the executor under the job's timeout, publish results.

The published results directory holds ``stdout``, ``stderr``, ``exitCode`` and ``outputs/<name>``
for each declared output; its CID is what the node signs and what verification compares.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from executors import ExecutorError, ExecutorRegistry, LiveOutput, RunRequest, tree_size
from executors.base import MAX_OUTPUT_ENTRIES, disk_limit
from jobs import Execution, JobSpec, Resources, RunResult, ShoalError, format_bytes
from jobs.spec import DEFAULT_DISK, ENGINE_VERSIONS, INPUT_DEADLINE, PREPARE_DEADLINE
from node.tasks import RunBlocking
from storage.errors import TooLarge
from storage.trees import Unstorable, Unwalkable, count_entries, remove_tree

if TYPE_CHECKING:
    from storage import InputRegistry, Publisher

log = logging.getLogger("shoal.compute")

WIRE_TAIL = 64 * 1024  # stdout/stderr bytes carried in the result message; the rest is in the results CID
MAX_INPUT_BYTES = 10 * 1024**3  # a job's inputs together
MAX_ERROR_CHARS = 8 * 1024  # of why a run failed: it may quote what the job's peer sent (an input's URL), at any size


@dataclass(frozen=True)
class Outcome:
    result: RunResult | None
    error: str | None = None
    retryable: bool = False

    def __post_init__(self) -> None:  # the error goes to the requester in a Result or a Claim, both bounded
        if self.error is not None and len(self.error) > MAX_ERROR_CHARS:
            cut = len(self.error) - MAX_ERROR_CHARS
            object.__setattr__(self, "error", f"{self.error[:MAX_ERROR_CHARS]}… ({cut:,} more characters)")


class Runner:
    def __init__(self, executors: ExecutorRegistry, work_dir: Path, *, inputs: InputRegistry | None = None,
                 publisher: Publisher | None = None, limits: Resources | None = None,
                 max_output_entries: int | None = None, run_blocking: RunBlocking = trio.to_thread.run_sync) -> None:
        self.executors = executors
        self.limits = limits  # the node's per-job maximum (``Resources.reserved``)
        self.max_output_entries = max_output_entries or MAX_OUTPUT_ENTRIES  # files and folders of one job's outputs
        self.work_dir = work_dir
        self.inputs = inputs
        self.publisher = publisher
        self._run_blocking = run_blocking

    def remove_leftovers(self) -> None:
        """Remove the scratch space of executions a previous process left when it died (kill -9). Blocking;
        called once at start, before anything runs: no execution of this process owns a folder yet."""
        entries = list(self.work_dir.iterdir()) if self.work_dir.is_dir() else []
        for entry in entries:
            remove_tree(entry)
        if entries:
            log.info("removed the scratch space of %d execution(s) left behind", len(entries))

    def input_problems(self, spec: JobSpec) -> list[str]:
        """Why this node could never stage the job's inputs (for bidding); empty when it can."""
        if not spec.inputs:
            return []
        if self.inputs is None:
            return ["this node cannot fetch inputs"]
        return self.inputs.check(spec.inputs)

    async def run(self, ex: Execution, secret_env: Mapping[str, str] | None = None,
                  live: LiveOutput | None = None, *, sweep: bool = False) -> Outcome:
        """Cancellation (the requester cancelled) propagates after the scratch space is removed. ``secret_env``
        (the job's secrets, from its acceptance) joins the env the executor sees; the seed comes from the
        spec as announced, the same on every node. ``live`` also gets the output as it is written. ``sweep``:
        an index of a sweep, whose other indexes may run in the same worker process (a job's run shares it
        with nothing: no other run has its owner)."""
        spec = ex.spec
        assert spec is not None
        scratch = self.work_dir / ex.id
        results = scratch / "results"
        try:
            executor = self.executors.get(spec.engine.executor)
            if executor.needs_workspace or spec.inputs or spec.outputs:
                await self._run_blocking(lambda: (results / "outputs").mkdir(parents=True, exist_ok=True))
            mounts = []
            if spec.inputs:
                if self.inputs is None:
                    raise ExecutorError("this node cannot fetch inputs")
                (scratch / "inputs").mkdir(parents=True, exist_ok=True)
                # held to the job's disk as they arrive, not only once all are staged
                budget = min(MAX_INPUT_BYTES, disk_limit(spec, self.limits) or MAX_INPUT_BYTES)
                try:
                    mounts = await self.inputs.prepare_inputs(spec.inputs, scratch / "inputs",
                                                              deadline=INPUT_DEADLINE, max_bytes=budget)
                except TooLarge as e:
                    if (ours := self._our_disk_limit(spec, str(e))) is None:
                        raise
                    return ours
            staged = await self._run_blocking(tree_size, scratch / "inputs") if spec.inputs else 0
            run_spec = spec.model_copy(update={"env": {**spec.env, **secret_env}}) if secret_env else spec
            request = RunRequest(ex.job_id, ex.id, run_spec, scratch, results / "outputs", tuple(mounts),
                                 seed=spec.seed(), staged_bytes=staged, live=live,
                                 owner=f"{ex.requester}/{ex.job_id}" if sweep else "", limits=self.limits,
                                 max_entries=self.max_output_entries)
            if request.disk_limit and staged >= request.disk_limit:
                why = f"disk limit exceeded: the inputs take {staged} of the job's {request.disk_limit} bytes"
                return self._our_disk_limit(spec, why) or Outcome(None, f"{why} (resources.disk)", False)
            with trio.fail_after(PREPARE_DEADLINE):
                await executor.prepare(request)
            try:
                # an interpreter's start is not the job's: an executor that times the job itself gets its allowance
                with trio.fail_after(spec.timeout + executor.start_allowance):
                    result = await executor.run(request)
            except trio.TooSlowError:
                return Outcome(None, spec.timed_out())
            stamp: dict[str, object] = {"engine": executor.name,
                                        "engine_version": ENGINE_VERSIONS.get(executor.name, "")}
            if spec.outputs:
                try:  # before anything walks the outputs with recursion (sizes, publishing)
                    counted = await self._run_blocking(count_entries, results / "outputs", request.max_entries)
                except (Unwalkable, Unstorable) as e:
                    return Outcome(None, f"the job's outputs hold {e}", False)
                if counted > request.max_entries:  # the executors stopped the run there (their disk watch)
                    ours = request.max_entries < MAX_OUTPUT_ENTRIES  # this node's lower limit: retryable
                    note = f" (this node's limit; the network's is {MAX_OUTPUT_ENTRIES:,})" if ours else ""
                    return Outcome(None, f"the job's outputs hold more than {request.max_entries:,} files and "
                                         f"folders{note}", ours)
                # as the executors' disk watch counts it: what is below each output's folder (a failed run may have
                # stopped at the limit itself: a file size limit stops a write there)
                written = sum([await self._run_blocking(tree_size, m.source) for m in request.output_mounts()
                               if m.source.exists()]) if request.write_limit else 0
                if written > request.write_limit or (result.exit_code and written >= request.write_limit > 0):
                    # the run failed for it: what it wrote past its disk stays here
                    await self._run_blocking(_empty, results / "outputs")
                    if (ours := self._our_disk_limit(spec, "disk limit exceeded")) is not None:
                        return ours
                stamp["output_sizes"] = await self._run_blocking(
                    _output_sizes, results / "outputs", [o.name for o in spec.outputs])
            result = result.model_copy(update=stamp)
            return Outcome(await self._publish(result, results, bool(spec.outputs)))
        except trio.TooSlowError:
            return Outcome(None, "preparing the executor (e.g. pulling the image) took too long", True)
        except ShoalError as e:  # the executor's, or storage's: inputs missing, too large, too slow; publishing failed
            return Outcome(None, str(e), e.retryable)
        except Exception as e:
            log.exception("execution %s failed", ex.id)
            return Outcome(None, f"executor crashed: {type(e).__name__}: {e}", True)
        finally:
            with trio.CancelScope(shield=True):
                await self._run_blocking(remove_tree, scratch)

    def _our_disk_limit(self, spec: JobSpec, why: str) -> Outcome | None:
        """The retryable failure for ``why`` when the job states no disk and gets less of this node than
        ``DEFAULT_DISK`` (None: the limit is the job's or the network's). What fails for a limit this node set below the
        network's own is this node's ("try elsewhere"), never a result to compare: that node would be outvoted."""
        if spec.resources.disk or not 0 < (limit := disk_limit(spec, self.limits)) < DEFAULT_DISK:
            return None
        return Outcome(None, f"{why}: this node's per-job disk is {format_bytes(limit)}, less than the "
                             f"{format_bytes(DEFAULT_DISK)} a job stating no resources.disk may use", True)

    async def _publish(self, result: RunResult, results: Path, has_outputs: bool) -> RunResult:
        """Write and publish the results directory; an empty result (the noop's) publishes nothing."""
        empty = result.exit_code == 0 and not result.stdout and not result.stderr and not has_outputs
        if self.publisher is not None and not empty:
            def write() -> None:
                results.mkdir(parents=True, exist_ok=True)
                for name, text in result.files().items():
                    _write_new(results / name, text)

            await self._run_blocking(write)
            result = result.model_copy(update={"cid": await self.publisher.publish(results)})
        return _for_the_wire(result)


def _for_the_wire(result: RunResult) -> RunResult:
    changes: dict[str, object] = {}
    for stream in ("stdout", "stderr"):
        text: str = getattr(result, stream)
        if len(text) > WIRE_TAIL:
            changes[stream] = text[-WIRE_TAIL:]
            changes[f"{stream}_truncated"] = True
    return result.model_copy(update=changes) if changes else result


def _write_new(path: Path, text: str) -> None:
    """Write ``text`` to a new file at ``path``: never through a link, whatever stood there before."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def _empty(directory: Path) -> None:
    remove_tree(directory)
    directory.mkdir()


def _output_sizes(outputs: Path, names: list[str]) -> dict[str, int]:
    """Bytes in each declared output (a file, or a directory's files; 0 when the job wrote none)."""
    sizes = {}
    for name in names:
        path = outputs / name
        if path.is_dir():
            sizes[name] = sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink())
        else:
            sizes[name] = path.stat().st_size if path.is_file() else 0
    return sizes


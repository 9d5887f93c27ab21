"""The Docker executor: one fresh, locked-down container per execution, through a real Docker Engine.

It runs docker jobs, and python jobs that name an image (``PythonEngine.image``): :func:`container` maps
those to ``python3`` in the image with the python engine's conventions.

docker-py is blocking, so every call runs in ``trio.to_thread.run_sync``; docker-py's errors become
:class:`ExecutorError` here and nowhere else.

Lifecycle of one execution (``run``)::

    create (labelled shoal.node / shoal.execution / shoal.job; its own uid, ``JobUsers``)
      → make its memory cgroup, with its socket buffers' limit (cgroup v1: ``ContainerSockets``)
      → attach stdout+stderr (before start, so nothing is missed)
      → start → read both streams until they close → wait for the exit code
      → inspect for OOM when the exit code is not 0
      → remove (always: shielded, also on cancellation and timeout)

Containers are hardened: no network unless the job asks and the node allows it, and then one fenced
from the host, its cloud's metadata server and private addresses (``executors.docker_network``); memory (no swap),
CPU quota and pids limits from the job's resources, and socket buffers held to its memory too
(``executors.cgroups.ContainerSockets``); read-only root with a writable tmpfs ``/tmp`` (and
one in place of each VOLUME the image declares); ``cap_drop ALL``; ``no-new-privileges``; Docker's default
seccomp profile with unix and internet sockets only (``executors.docker_seccomp``), and no ping sockets;
never root (on a root node, a uid of its own: ``JobUsers``; else the node's uid:gid); no host path but the
inputs (read-only) and outputs (writable),
and outputs held to ``resources.disk`` (the container is killed: "disk limit exceeded: wrote N of M").
The log driver is ``none``: output is read live from the attach stream and only the last ``MAX_CAPTURE``
bytes of each stream are kept, so a chatty job cannot fill the daemon's disk.

Run the tests with a daemon up (``scripts/install-docker``):
``.venv/bin/python -m pytest tests/integration/test_docker_executor.py``.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import inspect
import logging
import os
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
import trio
from docker.types import DeviceRequest, Ulimit
from docker.types import Mount as DockerMount
from docker.utils import parse_repository_tag
from docker.utils.socket import STDERR, frames_iter_no_tty

from executors import docker_seccomp
from executors._common import CONTEXT_DIR, Written, disk_overrun, job_path, own_again, watch_disk, written_past
from executors.base import Executor, ExecutorError, LiveOutput, RunRequest
from executors.cgroups import ContainerSockets
from executors.docker_network import fenced_network
from executors.docker_pulls import DEFAULT_MAX_IMAGE, PulledImages
from executors.images import IMAGES as BASE_IMAGES
from executors.users import JobUsers
from jobs import JobSpec, RunResult
from jobs.model import MAX_CAPTURE
from jobs.spec import MIN_CPU, MIN_MEMORY, DockerEngine, PythonEngine, format_bytes, image_problem

log = logging.getLogger("shoal.executors.docker")

LABEL_NODE = "shoal.node"
LABEL_EXECUTION = "shoal.execution"
LABEL_JOB = "shoal.job"

SHARED_UID = 65533  # every container's uid where the node's range is not mapped (``JobUsers``)
OOM_CHECKS = 30  # times a SIGKILLed container's OOM flag is read, 0.1 s apart (1 s was too short under load)
DEFAULT_PIDS_LIMIT = 256  # processes and threads per container: a fork bomb stops here, not at the host's limit
# Open files (sockets too) per process, and what it may raise that to. Each TCP connection may hold one
# 64 KiB segment past the container's socket buffer limit (the kernel's guarantee of progress), so this
# bounds what many connections hold: 2,048 connections, 128 MiB (ContainerSockets).
OPEN_FILES, OPEN_FILES_HARD = 1024, 4096
# ICMP echo ("ping") sockets, which Docker lets any user of a container make: what they queue is counted by
# no memory cgroup (a 64 MiB job held 1 GiB). No group may make one.
NO_PING = {"net.ipv4.ping_group_range": "1 0"}
DEFAULT_TMP_SIZE = 64 * 1024**2  # /tmp when the job states no disk; tmpfs pages also count against memory
CPU_PERIOD = 100_000  # µs; the quota is cpu * period
MIN_CPU_QUOTA = int(MIN_CPU * CPU_PERIOD)  # µs; Docker's floor, 1,000 (MIN_MEMORY: the smallest limit it takes)
INSTALLED_TTL = 5.0  # seconds an is_installed() answer is reused
PING_TIMEOUT = 1.0  # seconds is_installed() waits for the daemon (it is called from the event loop)
API_TIMEOUT = 60.0  # seconds for ordinary API calls (create, start, remove, pull steps)
WAIT_CHUNK = 60.0  # seconds per container wait request; re-issued until the container exits
CLEANUP_TIMEOUT = 30.0  # seconds the shielded removal may take before we leave it to cleanup_leftovers
PROGRESS_INTERVAL = 1.0  # seconds between pull progress reports
# seconds a failed pull's error answers for the image at once: a sweep naming a missing image had each of its
# indexes try the registry for seconds, holding a slot, so one typo held every node for minutes
PULL_FAILURE_TTL = 30.0

_BASE_IMAGES = ", ".join(BASE_IMAGES)
# What a python job sees in an image besides its own env: the python engine's conventions (executors/pyodide.py:
# hash seed 0, UTF-8, UTC) and single-threaded BLAS and OpenMP, so that a seeded numpy program computes the
# same bytes on every node, whatever its core count.
PYTHON_ENV = {"PYTHONHASHSEED": "0", "LANG": "C.UTF-8", "TZ": "UTC", "PYTHONDONTWRITEBYTECODE": "1",
              "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
_UNREACHABLE = ("dial tcp", "no such host", "connection refused", "i/o timeout", "network is unreachable",
                "tls handshake", "client.timeout", "server misbehaving", "temporary failure in name resolution",
                "no route to host", "connection reset")

ProgressCallback = Callable[[str], Awaitable[None] | None]
_DaemonErrors = (docker.errors.DockerException, requests.exceptions.RequestException)


def _connect(timeout: float) -> docker.APIClient:
    """A low-level client for the daemon named by the environment (DOCKER_HOST, TLS settings).

    Raises docker.errors.DockerException when the daemon does not answer (the API version is
    negotiated on construction).
    """
    return docker.from_env(timeout=timeout, max_pool_size=32).api


def _daemon_error(e: BaseException, doing: str) -> ExecutorError:
    return ExecutorError(f"Docker daemon error while {doing}: {e}", retryable=True)


class _Tail:
    """The last ``cap`` bytes of a stream, and whether anything before them was dropped."""

    def __init__(self, cap: int) -> None:
        self.cap = cap
        self.buf = bytearray()
        self.truncated = False

    def add(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > self.cap:
            del self.buf[: len(self.buf) - self.cap]  # cheap: bytearray deletes from the front in O(1)
            self.truncated = True

    def text(self) -> str:
        data = bytes(self.buf)
        if self.truncated:  # the cut may have split a UTF-8 sequence: drop its continuation bytes
            skip = 0
            while skip < min(3, len(data)) and data[skip] & 0xC0 == 0x80:
                skip += 1
            data = data[skip:]
        return data.decode("utf-8", errors="replace")


class PullProgress:
    """Turns Docker's per-layer pull events into a few human lines ("3/5 layers, 12 MiB/40 MiB").

    ``update`` returns a line to report, or None when nothing worth saying happened (at most one
    line per ``interval`` seconds, except the first and the final status).
    """

    def __init__(self, image: str, interval: float = PROGRESS_INTERVAL, clock: Callable[[], float] = time.monotonic):
        self.image, self.interval, self.clock = image, interval, clock
        self.layers: dict[str, tuple[int, int, bool]] = {}  # id → (bytes done, total, complete)
        self.last = -1e9

    def update(self, event: dict[str, Any]) -> str | None:
        status = str(event.get("status", ""))
        layer = event.get("id")
        final = status.startswith("Status:")
        if layer and status != "Pulling fs layer" and not status.startswith(("Pulling from", "Digest:")):
            done, total, complete = self.layers.get(layer, (0, 0, False))
            if status == "Downloading":
                detail = event.get("progressDetail") or {}
                done, total = int(detail.get("current", done)), int(detail.get("total", total))
            elif status in ("Download complete", "Pull complete", "Already exists"):
                done = max(done, total)
                complete = complete or status != "Download complete"
            self.layers[layer] = (done, total, complete)
        elif layer and status == "Pulling fs layer":
            self.layers.setdefault(layer, (0, 0, False))
        now = self.clock()
        if final:
            return f"pulling {self.image}: {status.removeprefix('Status:').strip()}"
        if not self.layers or now - self.last < self.interval:
            return None
        self.last = now
        finished = sum(1 for _, _, c in self.layers.values() if c)
        done = sum(d for d, _, _ in self.layers.values())
        total = self.download_bytes
        size = f", {format_bytes(done)}/{format_bytes(total)}" if total else ""
        return f"pulling {self.image}: {finished}/{len(self.layers)} layers{size}"

    @property
    def download_bytes(self) -> int:
        """What the layers being downloaded take together, as far as announced (present ones count 0)."""
        return sum(total for _, total, _ in self.layers.values())


class DockerExecutor(Executor):
    """Runs ``DockerEngine`` jobs in containers.

    Args:
        node_label: identifies this node's containers (``shoal.node`` label) so that
            :func:`cleanup_leftovers` removes exactly what this node left behind; use the node's data
            dir or peer id. Two nodes on one host must use different labels.
        allow_network: whether jobs asking for ``network`` may have it (default: refused).
        pids_limit: processes + threads allowed per container.
        pulled_record, max_image_size, image_cache_size: the images pulled for jobs, kept across restarts,
            how large one may be and how much of them is kept (``executors.docker_pulls``).

    Wiring (compute service):
        1. ``await cleanup_leftovers(node_label)`` once at node start.
        2. ``await executor.prepare(request, on_progress)`` *before* entering the job's
           ``trio.fail_after(spec.timeout)``: pulling an image is not the job's run time.
        3. ``await executor.run(request)`` inside the timeout. Cancelling it (timeout, job cancel)
           kills and removes the container before the cancellation propagates.
    """

    name = "docker"

    def __init__(self, node_label: str, *, allow_network: bool = False, pids_limit: int = DEFAULT_PIDS_LIMIT,
                 max_capture: int = MAX_CAPTURE, allow_images: tuple[str, ...] = (),
                 pulled_record: Path | None = None, max_image_size: int = DEFAULT_MAX_IMAGE,
                 image_cache_size: int | None = None) -> None:
        if not node_label:
            raise ValueError("node_label must be non-empty: it names this node's containers")
        self.node_label = node_label
        self.allow_images = tuple(allow_images)
        self.pulled = PulledImages(pulled_record, max_image=max_image_size, cache=image_cache_size)
        self.allow_network = allow_network
        self.pids_limit = pids_limit
        self.max_capture = max_capture
        self._api: docker.APIClient | None = None
        self._api_lock = threading.Lock()
        self._installed: tuple[bool, float] | None = None  # (answer, monotonic time)
        self._unremoved: set[str] = set()  # executions whose container the daemon could not remove: it was away
        self.users = JobUsers(node_label, shared=SHARED_UID)
        self._sockets: ContainerSockets | None = None  # bounds containers' socket buffers (cgroup v1)
        self._seccomp: str | None = None  # the jobs' seccomp profile, as a security option
        self._host_checked = False
        self._host_lock = trio.Lock()
        self._unpullable: dict[str, tuple[float, ExecutorError]] = {}  # image -> (until, monotonic; its pull's error)

    # -- installed? ----------------------------------------------------------------------------------

    def is_installed(self) -> bool:
        """True when the Docker daemon answers. Cached for INSTALLED_TTL seconds.

        Blocking but bounded: a missing socket fails at once; a hung daemon costs PING_TIMEOUT.
        """
        now = time.monotonic()
        if self._installed is not None and now - self._installed[1] < INSTALLED_TTL:
            return self._installed[0]
        try:
            _connect(PING_TIMEOUT).close()
            answer = True
        except _DaemonErrors as e:
            log.debug("docker daemon does not answer: %s", e)
            answer = False
        self._installed = (answer, time.monotonic())
        return answer

    def _client(self) -> docker.APIClient:
        with self._api_lock:
            if self._api is None:
                self._api = _connect(API_TIMEOUT)
            return self._api

    async def _connected(self) -> docker.APIClient:
        try:
            return await trio.to_thread.run_sync(self._client)
        except _DaemonErrors as e:
            self._installed = (False, time.monotonic())
            raise ExecutorError(f"the Docker daemon does not answer: {e}", retryable=True) from e

    # -- checks --------------------------------------------------------------------------------------

    def _engine(self, request: RunRequest) -> DockerEngine:
        engine = container(request.spec)[0]
        if engine.network and not self.allow_network:
            raise ExecutorError("this node does not give jobs network access (the job sets network: true)",
                                retryable=False)
        # a peer's announcement is not checked as a submission is
        if problem := engine.workdir_problem() or image_problem(engine.image):
            raise ExecutorError(problem, retryable=False)
        return engine

    # -- images --------------------------------------------------------------------------------------

    async def prepare(self, request: RunRequest, on_progress: ProgressCallback | None = None) -> None:
        """Make sure the job can start: the engine is acceptable and its image is present.

        Call it *before* the run timeout starts: when the image is missing and a registry is
        reachable it is pulled here, and ``on_progress`` (sync or async, called in the trio thread)
        receives lines such as ``"pulling python:3-slim: 2/5 layers, 12 MiB/40 MiB"``, at most one
        per second, for the job's events. Nothing is reported when the image is already present.

        Raises:
            ExecutorError: the daemon does not answer, the node refuses network jobs (not
                retryable), or the image is missing and cannot be pulled (retryable: another node
                may have it).
        """
        engine = self._engine(request)
        api = await self._connected()
        await self._ensure_image(api, engine.image, on_progress)

    def image_problem(self, image: str) -> str | None:
        """Why this node refuses to run ``image`` (None: it may), before it is looked up or pulled.

        With ``--allow-images`` only images matching one of its patterns run. Without it, an image runs if
        it is one of Shoal's base images or was pulled for a job: images that are on the node for other
        reasons (an operator's private, locally built ones) are not handed to strangers' jobs.
        """
        name = _normalise_image(image)
        if self.allow_images:
            if any(fnmatch.fnmatchcase(name, _normalise_image(p)) or fnmatch.fnmatchcase(image, p)
                   for p in self.allow_images):
                return None
            return f"image {image!r} is not allowed on this node (--allow-images {' '.join(self.allow_images)})"
        return None

    def _local_image_problem(self, image: str) -> str | None:
        if self.allow_images or _normalise_image(image) in _BASE_IMAGE_NAMES or \
                _normalise_image(image) in self.pulled:
            return None
        return (f"image {image!r} is on this node but was not pulled for jobs; it runs only if the operator "
                "allows it (shoal serve --allow-images PATTERN)")

    async def _ensure_image(self, api: docker.APIClient, image: str, on_progress: ProgressCallback | None) -> None:
        if (problem := self.image_problem(image)) is not None:
            raise ExecutorError(problem, retryable=True)  # another node may allow it
        try:
            await trio.to_thread.run_sync(api.inspect_image, image)
        except docker.errors.ImageNotFound:
            await self._pull(api, image, on_progress)
            await trio.to_thread.run_sync(self._keep_pulled, api, image)
            return
        except _DaemonErrors as e:
            raise _daemon_error(e, f"looking up image {image!r}") from e
        if (problem := self._local_image_problem(image)) is not None:
            raise ExecutorError(problem, retryable=True)
        self.pulled.used(_normalise_image(image))

    def _present_but_refused(self, api: docker.APIClient, image: str) -> tuple[str | None, list[str]]:
        """Blocking: the refusal for an image that is present locally but not allowed (None otherwise), and
        the paths it declares as VOLUME (none when it is missing: creating the container says so)."""
        try:
            inspected = api.inspect_image(image)
        except docker.errors.ImageNotFound:
            return None, []  # run() pulls it (and records it) through _ensure_image
        except _DaemonErrors:
            return None, []  # create_container will say what is wrong
        return self._local_image_problem(image), list((inspected.get("Config") or {}).get("Volumes") or {})

    def _keep_pulled(self, api: docker.APIClient, image: str) -> None:
        """Blocking: record an image just pulled for a job, unless it unpacked past the node's limit (it is
        removed), and keep the images pulled for jobs within the node's cache."""
        if (size := self.pulled.too_large(api, image)) is not None:
            raise ExecutorError(f"image {image!r} takes {format_bytes(size)} unpacked, more than this node keeps "
                                f"of one image ({format_bytes(self.pulled.max_image)}; shoal serve "
                                "--max-image-size)", retryable=True)
        name = _normalise_image(image)
        self.pulled.add(name)
        self.pulled.prune(api, keep=name)

    async def _pull(self, api: docker.APIClient, image: str, on_progress: ProgressCallback | None) -> None:
        repo, tag = parse_repository_tag(image)
        tracker = PullProgress(image)
        token = trio.lowlevel.current_trio_token()
        abandoned = threading.Event()

        async def report(line: str) -> None:
            if on_progress is not None:
                result = on_progress(line)
                if inspect.isawaitable(result):
                    await result

        until, failed = self._unpullable.get(image, (0.0, None))
        if failed is not None and time.monotonic() < until:
            await report(f"not pulling {image}: its pull failed here "
                         f"{PULL_FAILURE_TTL - (until - time.monotonic()):.0f} s ago")
            raise ExecutorError(str(failed), retryable=failed.retryable)

        def pull() -> None:
            events = api.pull(repo, tag=tag or "latest", stream=True, decode=True)
            for event in events:
                if abandoned.is_set():  # the caller's deadline passed: stop reading, drop the stream
                    events.close()
                    return
                if "error" in event:
                    raise docker.errors.APIError(str(event.get("error")))
                line = tracker.update(event)
                if tracker.download_bytes > self.pulled.max_image:  # closing the stream stops the daemon's pull
                    events.close()
                    raise ExecutorError(f"image {image!r} is larger than this node pulls: its layers pass "
                                        f"{format_bytes(self.pulled.max_image)} (shoal serve --max-image-size)",
                                        retryable=True)
                if line is not None and on_progress is not None and not abandoned.is_set():
                    trio.from_thread.run(report, line, trio_token=token)

        started = time.monotonic()
        if on_progress is not None:
            await report(f"pulling {image}: image not present on this node")
        try:
            await trio.to_thread.run_sync(pull, abandon_on_cancel=True)
        except docker.errors.DockerException as e:
            failed = _pull_error(image, e)
            now = time.monotonic()
            self._unpullable = {name: kept for name, kept in self._unpullable.items() if kept[0] > now}
            self._unpullable[image] = (now + PULL_FAILURE_TTL, failed)
            raise failed from e
        except requests.exceptions.RequestException as e:
            raise _daemon_error(e, f"pulling {image!r}") from e
        finally:
            abandoned.set()
        if on_progress is not None:
            await report(f"pulled {image} in {time.monotonic() - started:.1f} s")

    # -- running -------------------------------------------------------------------------------------

    async def run(self, request: RunRequest) -> RunResult:
        """Run the job in a fresh container and return its exit code and captured output.

        Output: each stream keeps its *last* ``MAX_CAPTURE`` bytes (the tail, where errors and
        results usually are); ``stdout_truncated``/``stderr_truncated`` say whether earlier bytes
        were dropped. Out of memory: exit code 137 and a final stderr line
        ``shoal: out of memory (limit 64 MiB)``. A command that cannot be started (not found, not
        executable) is a normal result with exit code 127/126, like a shell.

        Cancellation (the caller's timeout or a job cancel) kills and removes the container, then
        lets the cancellation propagate. If the image is missing it is pulled here, inside the
        caller's timeout; call :meth:`prepare` first to avoid that.

        Raises:
            ExecutorError: the daemon does not answer or fails, the image is missing and cannot be
                pulled (retryable), or the job is refused here (network; not retryable).
        """
        engine = self._engine(request)
        api = await self._connected()
        await self._remove_unremoved(api)
        if (problem := self.image_problem(engine.image)) is not None:
            raise ExecutorError(problem, retryable=True)
        problem, volumes = await trio.to_thread.run_sync(self._present_but_refused, api, engine.image)
        if problem is not None:
            raise ExecutorError(problem, retryable=True)
        self.pulled.used(_normalise_image(engine.image))
        network = await trio.to_thread.run_sync(fenced_network, api) if engine.network else "none"
        await self._check_host(api)
        uid, gid = self.users.take()
        try:
            return await self._run(api, request, engine, volumes, network, (uid, gid))
        finally:
            self.users.give_back(uid)

    async def _run(self, api: docker.APIClient, request: RunRequest, engine: DockerEngine, volumes: list[str],
                   network: str, user: tuple[int, int]) -> RunResult:
        """``run``'s container, as ``user`` (uid, gid)."""
        uid = user[0]
        create_args = await trio.to_thread.run_sync(self._create_args, api, request, engine, volumes, network, user)
        cid: str | None = None
        creating = False
        sock: Any = None
        try:
            try:
                creating = True
                try:
                    cid = (await trio.to_thread.run_sync(lambda: api.create_container(**create_args)))["Id"]
                except docker.errors.ImageNotFound:
                    await self._ensure_image(api, engine.image, None)
                    cid = (await trio.to_thread.run_sync(lambda: api.create_container(**create_args)))["Id"]
                sockets = await self._bound_sockets(api, cid, max(request.spec.resources.memory, MIN_MEMORY))
                sock = await trio.to_thread.run_sync(
                    lambda: api.attach_socket(cid, params={"stdout": 1, "stderr": 1, "stream": 1})
                )
                started_at = time.time()
                failed_start = await trio.to_thread.run_sync(_start, api, cid)
                if failed_start is not None:
                    return failed_start
                if sockets is not None and not await trio.to_thread.run_sync(sockets.held, cid):
                    log.warning("docker started a container outside %s (another cgroup parent?): docker jobs' "
                                "socket buffers are not bounded here", sockets.root)
                    self._sockets = None
                    await trio.to_thread.run_sync(sockets.forget, cid)
                init = await trio.to_thread.run_sync(lambda: api.inspect_container(cid)["State"].get("Pid") or 0)
                over_disk: list[Written] = []
                lost: BaseException | None = None
                async with trio.open_nursery() as nursery:
                    dirs = [m.source for m in request.output_mounts()]

                    async def kill() -> None:
                        with contextlib.suppress(*_DaemonErrors):
                            await trio.to_thread.run_sync(api.kill, cid)

                    nursery.start_soon(watch_disk, dirs, request.write_limit, request.max_entries, kill, over_disk,
                                       lambda: [init] if init else [])
                    try:
                        out, err = await trio.to_thread.run_sync(_collect, sock, self.max_capture, request.live,
                                                                 abandon_on_cancel=True)
                        exit_code = await trio.to_thread.run_sync(_wait, api, cid, abandon_on_cancel=True)
                    except _DaemonErrors as e:  # raised past the nursery, which would wrap it in a group that
                        lost = e  # the handlers below do not catch: "executor crashed" instead of the daemon
                    nursery.cancel_scope.cancel()
                if lost is not None:
                    raise lost
                finished_at = time.time()
                oom = exit_code != 0 and await trio.to_thread.run_sync(_oom_killed, api, cid, exit_code)
            except docker.errors.APIError as e:
                if e.status_code is not None and 400 <= e.status_code < 500:
                    raise ExecutorError(f"Docker refused the job: {e.explanation or e}", retryable=False) from e
                raise _daemon_error(e, "running the container") from e
            except _DaemonErrors as e:
                raise _daemon_error(e, "running the container") from e
        finally:
            if creating:
                with trio.CancelScope(shield=True):
                    await self._remove(api, request.execution_id, cid, sock)
                    if cid is not None and self._sockets is not None:
                        await trio.to_thread.run_sync(self._sockets.forget, cid)
        if uid != os.getuid():
            for m in request.output_mounts():
                await trio.to_thread.run_sync(own_again, m.source)
        stderr = err.text()
        if not over_disk and (written := await written_past(
                [m.source for m in request.output_mounts()], request.write_limit, request.max_entries)) is not None:
            over_disk.append(written)
        if over_disk:
            exit_code = exit_code or 1
            line = disk_overrun(over_disk[0], request.write_limit, request.max_entries)
            stderr = f"{stderr}{'' if not stderr or stderr.endswith(chr(10)) else chr(10)}{line}\n"
        elif oom:
            limit = request.spec.resources.memory
            line = f"shoal: out of memory (limit {format_bytes(max(limit, MIN_MEMORY)) if limit else 'none'})"
            stderr = f"{stderr}{'' if not stderr or stderr.endswith(chr(10)) else chr(10)}{line}\n"
        return RunResult(
            exit_code=exit_code, stdout=out.text(), stderr=stderr, stdout_truncated=out.truncated,
            stderr_truncated=err.truncated, started_at=started_at, finished_at=finished_at,
        )

    async def _check_host(self, api: docker.APIClient) -> None:
        """Once: how this host bounds containers' socket buffers, and the jobs' seccomp profile."""
        async with self._host_lock:
            if not self._host_checked:
                info = await trio.to_thread.run_sync(api.info)
                self._sockets = ContainerSockets.here(info)
                self._seccomp = await trio.to_thread.run_sync(docker_seccomp.security_option, info.get("ServerVersion"))
                self._host_checked = True

    async def _bound_sockets(self, api: docker.APIClient, cid: str, nbytes: int) -> ContainerSockets | None:
        """Hold the created container's socket buffers to ``nbytes`` (``ContainerSockets``), where this node can."""
        if self._sockets is None:
            return None
        try:
            await trio.to_thread.run_sync(self._sockets.bound, cid, nbytes)
        except OSError as e:
            raise ExecutorError(f"cannot bound the container's socket buffers: {e}", retryable=True) from e
        return self._sockets

    def _create_args(self, api: docker.APIClient, request: RunRequest, engine: DockerEngine,
                     volumes: Iterable[str], network: str, user: tuple[int, int]) -> dict[str, Any]:
        """The container's configuration; ``volumes``: the paths the image declares as VOLUME; ``network``:
        "none", or the fenced network of ``executors.docker_network``; ``user``: (uid, gid), from ``JobUsers``."""
        resources = request.spec.resources
        mounts = [DockerMount(m.target, str(m.source), type="bind", read_only=m.read_only) for m in request.inputs]
        uid, gid = user
        for m in request.output_mounts():
            m.source.mkdir(parents=True, exist_ok=True)
            if uid != os.getuid():
                os.chown(m.source, uid, gid)
            mounts.append(DockerMount(m.target, str(m.source), type="bind", read_only=False))
        limits: dict[str, Any] = {}
        if resources.memory > 0:  # 0: the job states no limit (Docker's convention)
            limits["mem_limit"] = limits["memswap_limit"] = max(resources.memory, MIN_MEMORY)
        if resources.cpu > 0:
            limits["cpu_period"] = CPU_PERIOD
            limits["cpu_quota"] = max(MIN_CPU_QUOTA, int(resources.cpu * CPU_PERIOD))
        if resources.gpu:
            limits["device_requests"] = gpu_device_requests(resources.gpu)
        tmp_size = resources.disk or DEFAULT_TMP_SIZE
        tmpfs = f"rw,nosuid,nodev,exec,size={tmp_size}"
        # A VOLUME the image declares would be an anonymous Docker volume: writable despite the read-only
        # root, outside the disk watch (a 4 MiB job wrote 200 MB there) and kept after the container. A tmpfs
        # takes its place, as /tmp, counted against the job's memory.
        host_config = api.create_host_config(
            mounts=mounts,
            network_mode=network,
            pids_limit=self.pids_limit,
            ulimits=[Ulimit(name="nofile", soft=OPEN_FILES, hard=OPEN_FILES_HARD)],
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges", *filter(None, [self._seccomp])],
            sysctls=NO_PING,
            tmpfs={"/tmp": tmpfs, **dict.fromkeys(volumes, tmpfs)},
            log_config={"Type": "none", "Config": {}},
            **limits,
        )
        env = container(request.spec)[1]
        return {
            "image": engine.image,
            "command": list(engine.args) or None,
            "entrypoint": list(engine.entrypoint) or None,
            "environment": [f"{k}={v}" for k, v in env.items()],
            "working_dir": engine.workdir,
            "user": f"{uid}:{gid}",
            "labels": {LABEL_NODE: self.node_label, LABEL_EXECUTION: request.execution_id,
                       LABEL_JOB: request.job_id},
            "network_disabled": network == "none",
            "host_config": host_config,
        }

    async def _remove(self, api: docker.APIClient, execution_id: str, cid: str | None, sock: Any) -> None:
        """Kill and remove the execution's container (found by its label if its id never reached us). Never
        raises: a container the daemon could not remove then (it went away mid-run) is removed before the
        next run here, as the node's restart would (dockerd keeps it, stopped or even running)."""

        def remove() -> None:
            if sock is not None:
                _close(sock)
            ids = [cid] if cid is not None else _labelled(api, LABEL_EXECUTION, execution_id)
            give_up = time.monotonic() + CLEANUP_TIMEOUT
            while True:
                try:
                    _remove_all(api, ids)
                    return
                except docker.errors.APIError as e:  # e.g. "did not receive an exit event": still dying
                    if time.monotonic() > give_up:
                        raise
                    log.info("container %s not removed yet (%s); retrying", cid or execution_id, e)
                    time.sleep(0.5)

        with trio.move_on_after(CLEANUP_TIMEOUT + API_TIMEOUT) as scope:
            try:
                await trio.to_thread.run_sync(remove, abandon_on_cancel=True)
                return
            except _DaemonErrors as e:
                log.warning("could not remove the container of execution %s (%s); the next run will", execution_id, e)
        if scope.cancelled_caught:
            log.warning("removing the container of execution %s takes too long; the next run will", execution_id)
        self._unremoved.add(execution_id)

    async def _remove_unremoved(self, api: docker.APIClient) -> None:
        """Remove the containers an earlier run could not, now that the daemon answers (bounded, never raises)."""
        for execution_id in list(self._unremoved):
            with trio.move_on_after(API_TIMEOUT):
                try:
                    await trio.to_thread.run_sync(_remove_labelled, api, execution_id, abandon_on_cancel=True)
                    self._unremoved.discard(execution_id)
                    log.info("removed the container of execution %s, left when the daemon went away", execution_id)
                except _DaemonErrors as e:
                    log.info("the container of execution %s is still not removed: %s", execution_id, e)

    async def cleanup_leftovers(self) -> list[str]:
        """Remove containers this node left behind (see the module-level :func:`cleanup_leftovers`)."""
        return await cleanup_leftovers(self.node_label)


async def cleanup_leftovers(node_label: str) -> list[str]:
    """Remove every container labelled ``shoal.node=node_label``, running or not; return their ids.

    Call it when a node starts, before it runs anything: whatever carries its label then was left
    behind by a crash. Returns [] when the daemon does not answer (then there is nothing to clean
    that we could reach).
    """

    def clean() -> list[str]:
        try:
            api = _connect(API_TIMEOUT)
        except _DaemonErrors:
            return []
        try:
            removed = _remove_all(api, _labelled(api, LABEL_NODE, node_label))
        finally:
            api.close()
        if removed:
            log.info("removed %d container(s) left behind by node %s", len(removed), node_label)
        return removed

    try:
        return await trio.to_thread.run_sync(clean)
    except _DaemonErrors as e:
        log.warning("could not clean up containers of node %s: %s", node_label, e)
        return []


def gpu_device_requests(count: int) -> list[DeviceRequest]:
    """What ``docker run --gpus COUNT`` asks for: COUNT devices of the NVIDIA container runtime's GPU capability
    (the container toolkit picks which; ``--limit-total-gpu`` keeps the node from promising more than it has)."""
    return [DeviceRequest(count=count, capabilities=[["gpu"]])]


def container(spec: JobSpec) -> tuple[DockerEngine, dict[str, str]]:
    """The container that runs ``spec``, and its environment: the one place a python job in an image
    (``PythonEngine.image``) becomes a container.

    Such a job runs as ``python3 MAIN ARGS`` or ``python3 -c CODE ARGS`` in the image, with the python
    engine's conventions: the context (``/context``) is the working directory and relative paths start
    there, inputs and outputs are at their paths, ``requirements`` (wheel files) are importable (on
    ``PYTHONPATH``), and ``PYTHON_ENV``; the job's env comes last and wins. Never with network.

    Raises:
        ExecutorError: the spec is not one the docker executor runs.
    """
    engine = spec.engine
    env = {"HOME": "/tmp"}  # the root fs is read-only: give tools a writable home
    if isinstance(engine, DockerEngine):
        return engine, {**env, **spec.env}
    if not isinstance(engine, PythonEngine) or engine.image is None:
        what = "python jobs without an image" if isinstance(engine, PythonEngine) else f"{engine.name!r} jobs"
        raise ExecutorError(f"the docker executor cannot run {what}", retryable=True)
    program = [job_path(engine.main)] if engine.main is not None else ["-c", engine.code or ""]
    env |= PYTHON_ENV
    if engine.requirements:
        env["PYTHONPATH"] = ":".join(job_path(r) for r in engine.requirements)
    has_context = any(i.path == CONTEXT_DIR for i in spec.inputs)
    python = DockerEngine(image=engine.image, entrypoint=["python3"], args=[*program, *engine.args],
                          workdir=CONTEXT_DIR if has_context else "/tmp")
    return python, {**env, **spec.env}


# -- blocking helpers (run in worker threads) ---------------------------------------------------------


def _normalise_image(image: str) -> str:
    """``busybox`` and ``busybox:latest`` (and ``docker.io/library/busybox``) name one image."""
    for prefix in ("docker.io/library/", "docker.io/", "index.docker.io/library/"):
        image = image.removeprefix(prefix)
    last = image.rsplit("/", 1)[-1]
    return image if ":" in last or "@" in last else f"{image}:latest"


_BASE_IMAGE_NAMES = frozenset(_normalise_image(i) for i in BASE_IMAGES)


def _start(api: docker.APIClient, cid: str) -> RunResult | None:
    """Start the container. A command that cannot start is the job's failure, reported like a shell."""
    try:
        api.start(cid)
        return None
    except docker.errors.APIError as e:
        text = str(e.explanation or e)
        low = text.lower()
        if 'exec: "' not in low:  # runc's words for the job's own command; anything else is ours
            raise
        if "executable file not found" in low or "no such file or directory" in low:
            code = 127
        elif "permission denied" in low:
            code = 126
        else:
            raise
        now = time.time()
        return RunResult(exit_code=code, stderr=f"shoal: cannot start the command: {text}\n", started_at=now,
                         finished_at=now)


def _collect(sock: Any, cap: int, live: LiveOutput | None) -> tuple[_Tail, _Tail]:
    """Read the attach stream until the container closes it (normally: it exited)."""
    out, err = _Tail(cap), _Tail(cap)
    try:
        for stream, data in frames_iter_no_tty(sock):
            (err if stream == STDERR else out).add(data)
            if live is not None:
                live.write("stderr" if stream == STDERR else "stdout", data)
    except OSError as e:  # closed under us by the cleanup after a cancellation
        if e.errno not in (errno.EBADF, errno.ECONNRESET, None):
            raise
    return out, err


def _wait(api: docker.APIClient, cid: str) -> int:
    """The container's exit code. Re-issues the wait every WAIT_CHUNK s: a job may close its streams and
    keep running."""
    while True:
        asked = time.monotonic()
        try:
            return int(api.wait(cid, timeout=WAIT_CHUNK)["StatusCode"])
        except (requests.exceptions.ConnectionError, requests.exceptions.Timeout):
            if time.monotonic() - asked < WAIT_CHUNK * 0.9:  # not our timeout: the daemon went away
                raise


def _oom_killed(api: docker.APIClient, cid: str, exit_code: int) -> bool:
    """Whether the kernel killed the container for its memory. Docker may set the flag a moment after it
    reports the exit (seen on a loaded machine): a SIGKILL's exit code (137) is asked about a few times."""
    for _ in range(OOM_CHECKS if exit_code == 137 else 1):
        if api.inspect_container(cid)["State"].get("OOMKilled"):
            return True
        if exit_code == 137:
            time.sleep(0.1)
    return False


def _labelled(api: docker.APIClient, label: str, value: str) -> list[str]:
    return [c["Id"] for c in api.containers(all=True, filters={"label": f"{label}={value}"})]


def _remove_labelled(api: docker.APIClient, execution_id: str) -> list[str]:
    return _remove_all(api, _labelled(api, LABEL_EXECUTION, execution_id))


def _remove_all(api: docker.APIClient, ids: list[str]) -> list[str]:
    """Kill (if running) and remove each container; return those removed now."""
    removed = []
    for cid in ids:
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_container(cid, force=True, v=True)  # and its anonymous volumes, should it have any
            removed.append(cid)
    return removed


def _close(sock: Any) -> None:
    for thing in (getattr(sock, "_response", None), sock):
        try:
            if thing is not None:
                thing.close()
        except Exception:
            pass


def _pull_error(image: str, e: BaseException) -> ExecutorError:
    text = str(getattr(e, "explanation", None) or e)
    if any(s in text.lower() for s in _UNREACHABLE):
        if _normalise_image(image.split("@")[0]) in _BASE_IMAGE_NAMES:
            hint = "build it with `shoal images build`"
        else:
            hint = ("load it on this node (`docker load`) or use a base image built by "
                    f"`shoal images build` ({_BASE_IMAGES})")
        return ExecutorError(f"image {image!r} not found locally and no registry is reachable; {hint}",
                             retryable=True)
    return ExecutorError(f"image {image!r} not found locally and could not be pulled: {text}", retryable=True)

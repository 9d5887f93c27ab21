"""One real ``shoal serve --noop`` process for API-level tests (no devstack needed)."""

from __future__ import annotations

import json
import os
import resource
import selectors
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

SHOAL = str(Path(sys.executable).with_name("shoal"))
REPO = Path(__file__).resolve().parents[2]


@contextmanager
def noop_node(home: Path, port: int, *, ready_timeout: float = 60, args: Sequence[str] = (),
              expected_errors: Sequence[str] = (), open_files: int | None = None,
              log: list[str] | None = None, noop: bool = True, user: int | None = None) -> Iterator[dict]:
    """Run a lone noop node with its data under ``home`` (and ``args`` for ``shoal serve``) until the
    block ends; then check it stopped cleanly and that nothing a client sent made it log an error (but
    the lines holding one of ``expected_errors``, which the test brought about). ``open_files``: its
    file descriptor limit (soft and hard); ``log`` receives its log lines once it has stopped.
    ``noop=False``: its real engines instead; ``user``: the uid it runs as (``home`` must be its).
    Yields its READY line: ``peer_id``, ``addrs``, ``api``."""
    from executors.sandbox import as_user

    path = [str(REPO), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    env = {**os.environ, "SHOAL_HOME": str(home), "PYTHONPATH": os.pathsep.join(path)}
    process = subprocess.Popen(
        [*as_user(user), SHOAL, "serve", *(["--noop"] if noop else []), "--data-dir", str(home / "node"),
         "--api-port", str(port), "--ipfs-api", "none", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
        preexec_fn=None if open_files is None else partial(resource.setrlimit, resource.RLIMIT_NOFILE,
                                                           (open_files, open_files)),
    )  # fmt: skip
    try:
        yield _wait_for_ready(process, ready_timeout)
    finally:
        process.terminate()
        _, err = process.communicate(timeout=30)
    if log is not None:
        log.extend(err.decode().splitlines())
    text = "\n".join(line for line in err.decode().splitlines() if not any(e in line for e in expected_errors))
    assert "Traceback" not in text and "ERROR" not in text, text[-3000:]
    assert process.returncode == 0, f"exit code {process.returncode}: {text[-3000:]}"


def _wait_for_ready(process: subprocess.Popen, timeout: float) -> dict:
    fd = process.stdout.fileno()
    seen = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while b"READY " not in seen:
            left = deadline - time.monotonic()
            chunk = os.read(fd, 65536) if left > 0 and selector.select(left) else b""
            if not chunk:
                process.kill()
                raise AssertionError(f"node not ready: {process.communicate()[1].decode()[-3000:]}")
            seen += chunk
    while b"\n" not in seen.split(b"READY ", 1)[1]:  # the rest of the line
        seen += os.read(fd, 65536)
    return json.loads(seen.split(b"READY ", 1)[1].split(b"\n", 1)[0])


@contextmanager
def in_process_devstack(home: Path, nodes: int) -> Iterator:
    """A ``devstack.Devstack`` of ``nodes`` run from this process, with ``SHOAL_HOME`` under ``home`` while
    it runs (and put back after, so no later test sees it)."""
    import pytest
    import trio

    from devstack import Devstack
    from tests.integration.rogue import free_base_port

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SHOAL_HOME", str(home / "home"))
        devstack = Devstack(nodes, base_dir=home / "stack", base_port=free_base_port(nodes), write_state=False)
        trio.run(devstack.start)
        try:
            yield devstack
        finally:
            trio.run(devstack.stop)

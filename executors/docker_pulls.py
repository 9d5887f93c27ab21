"""The images a node pulled for jobs: which they are, how large one may be, and how much of them it keeps.

A job names any image, and pulling it took what it took of the node's disk: one job could fill it with a
large image, and a stream of jobs with many. Now a pull stops once the layers it downloads pass
``max_image`` (``shoal serve --max-image-size``), and an image that unpacks to more is removed at once;
after each pull, the images pulled for jobs that were used least recently are removed until those left
take at most ``cache`` bytes (``--image-cache-size``). Base images and images the operator put on the
node are never removed: they are not in the record.

Blocking (docker-py and the record file): the executor calls these in worker threads.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path

import docker
import docker.errors
import requests

log = logging.getLogger("shoal.executors.docker")

DEFAULT_MAX_IMAGE = 10 * 1024**3  # bytes one pull may download (CUDA and ML images are a few GiB)
DEFAULT_CACHE = 20 * 1024**3  # bytes of pulled images kept, at most a quarter of the disk (``default_cache``)


def default_cache(docker_root: str | None) -> int:
    """``DEFAULT_CACHE``, or a quarter of the disk holding Docker's data where that is less."""
    try:
        disk = os.statvfs(docker_root) if docker_root else None
        total = disk.f_blocks * disk.f_frsize if disk else 0
    except OSError:  # a remote daemon (DOCKER_HOST): its disk is not ours to measure
        total = 0
    return min(DEFAULT_CACHE, total // 4) if total else DEFAULT_CACHE


class PulledImages:
    """The record of images pulled for jobs (one name a line, kept across restarts) and when each was
    last used. Names are normalised (``busybox:latest``)."""

    def __init__(self, record: Path | None, *, max_image: int = DEFAULT_MAX_IMAGE, cache: int | None = None) -> None:
        self.record, self.max_image, self.cache = record, max_image, cache
        self._names = _read(record)
        self._last_used: dict[str, float] = {}  # monotonic; a name pulled before this start is the oldest
        self._lock = threading.Lock()

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def used(self, name: str) -> None:
        if name in self._names:
            self._last_used[name] = time.monotonic()

    def add(self, name: str) -> None:
        with self._lock:
            self._last_used[name] = time.monotonic()
            if name in self._names:
                return
            self._names.add(name)
            if self.record is not None:
                self.record.parent.mkdir(parents=True, exist_ok=True)
                with self.record.open("a") as f:
                    f.write(name + "\n")

    def too_large(self, api: docker.APIClient, name: str) -> int | None:
        """The size of a just-pulled image when it unpacked to more than ``max_image`` (it is removed:
        a layer of zeros compresses a thousandfold), else None."""
        size = _size(api, name)
        if size is None or size <= self.max_image:
            return None
        _remove(api, name)
        return size

    def prune(self, api: docker.APIClient, keep: str) -> list[str]:
        """Remove the images pulled for jobs that were used least recently until the rest take at most
        ``cache`` bytes (shared layers are counted once per image: it errs towards removing). ``keep``,
        the image about to run, and images a container uses stay. Returns the names removed."""
        with self._lock:
            names = sorted(self._names - {keep}, key=lambda n: self._last_used.get(n, 0.0))
        sizes = {n: s for n in [*names, keep] if (s := _size(api, n)) is not None}
        gone = [n for n in names if n not in sizes]  # removed by someone else: forget them
        if self.cache is None:  # asked of the daemon once, at the first pull
            self.cache = default_cache(_docker_root(api))
        cache = self.cache
        total = sum(sizes.values())
        removed = []
        for name in names:
            if total <= cache:
                break
            if name in sizes and _remove(api, name):
                total -= sizes[name]
                removed.append(name)
        if removed or gone:
            self._forget([*removed, *gone])
        if removed:
            log.info("removed images pulled for jobs, least recently used first, to keep them within %d bytes: %s",
                     cache, ", ".join(removed))
        return removed

    def _forget(self, names: list[str]) -> None:
        with self._lock:
            self._names -= set(names)
            for name in names:
                self._last_used.pop(name, None)
            if self.record is not None and self.record.is_file():
                temporary = self.record.with_suffix(".tmp")
                temporary.write_text("".join(f"{n}\n" for n in sorted(self._names)))
                temporary.replace(self.record)


def _read(path: Path | None) -> set[str]:
    if path is None or not path.is_file():
        return set()
    return {line.strip() for line in path.read_text().splitlines() if line.strip()}


def _size(api: docker.APIClient, name: str) -> int | None:
    try:
        return int(api.inspect_image(name).get("Size") or 0)
    except docker.errors.ImageNotFound:
        return None
    except (docker.errors.APIError, requests.exceptions.RequestException) as e:
        log.warning("could not size image %s: %s", name, e)
        return 0  # counted as nothing, kept: a daemon error removes no image


def _remove(api: docker.APIClient, name: str) -> bool:
    try:
        api.remove_image(name)
        return True
    except docker.errors.ImageNotFound:
        return True
    except (docker.errors.APIError, requests.exceptions.RequestException) as e:  # in use by a container
        log.info("kept image %s: %s", name, e)
        return False


def _docker_root(api: docker.APIClient) -> str | None:
    try:
        return api.info().get("DockerRootDir")
    except (docker.errors.APIError, requests.exceptions.RequestException):
        return None

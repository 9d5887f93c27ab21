"""``shoal serve``/``devstack`` support: flags → ``NodeConfig``, and how a foreground node stops."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cli.errors import EXIT_USAGE, CLIError

if TYPE_CHECKING:
    from jobs import Resources
    from node.config import NodeConfig


@dataclass(frozen=True)
class Limit:
    """A partial resource limit as typed: None means "not given"."""

    cpu: str | None = None
    memory: str | None = None
    disk: str | None = None
    gpu: int | None = None

    @property
    def given(self) -> bool:
        return any(v is not None for v in (self.cpu, self.memory, self.disk, self.gpu))


def build_node_config(
    *,
    data_dir: Path | None = None,
    listen: list[str] | None = None,
    peers: list[str] | None = None,
    api_host: str | None = None,
    api_port: int | None = None,
    requester: bool = True,
    compute: bool = True,
    noop: bool = False,
    labels: list[str] | None = None,
    limit_total: Limit = Limit(),
    limit_job: Limit = Limit(),
    log_level: str | None = None,
    ipfs_api: str | None = None,
    allow_private_urls: bool = False,
    bad_actor: bool = False,
    retention: float | None = None,
    ttl: float | None = None,
    pending_bid_timeout: float | None = None,
    unsandboxed_python: bool = False,
    allow_images: list[str] | None = None,
    max_image_size: int | None = None,
    image_cache_size: int | None = None,
    allow_network: bool = False,
    max_output_entries: int | None = None,
    network_key: Path | None = None,
    trusted_peers: Path | None = None,
    authorized_keys: Path | None = None,
    open_api: bool = False,
    tls_cert: Path | None = None,
    tls_key: Path | None = None,
    api_limits: dict[str, Any] | None = None,
    peer_rate_limit: float | None = None,
) -> NodeConfig:
    from pydantic import ValidationError

    from cli.specs import validation_lines
    from node.config import NodeConfig, machine_resources, shoal_home

    values: dict[str, Any] = {"requester": requester, "compute": compute, "noop": noop,
                              "allow_private_urls": allow_private_urls, "bad_actor": bad_actor,
                              "unsandboxed_python": unsandboxed_python,
                              "allow_images": tuple(allow_images or ()), "allow_network": allow_network}
    values.update({k: v for k, v in (api_limits or {}).items() if v is not None})  # names and quotas
    values.update({k: v for k, v in (("max_image_size", max_image_size), ("image_cache_size", image_cache_size),
                                     ("max_output_entries", max_output_entries)) if v is not None})
    if labels:
        values["labels"] = _labels(labels, "--label")
    if retention is not None:
        values["retention"] = retention
    if ttl is not None:
        values["ttl"] = ttl
    if pending_bid_timeout is not None:
        values["pending_bid_timeout"] = pending_bid_timeout
    if peer_rate_limit is not None:
        values["peer_rate_limit"] = peer_rate_limit
    if ipfs_api is not None:
        values["ipfs_api"] = None if ipfs_api.lower() == "none" else ipfs_api
        values["require_ipfs"] = values["ipfs_api"] is not None
    if network_key is not None or trusted_peers is not None:
        from node.net.admission import AdmissionError, load_admission

        try:
            load_admission(network_key, trusted_peers)  # a bad file is a usage error now, not a crash later
        except AdmissionError as exc:
            raise CLIError(str(exc), code=EXIT_USAGE) from None
        values["network_key"] = network_key
        values["trusted_peers"] = trusted_peers
    if data_dir is not None:
        values["data_dir"] = data_dir
    if listen:
        values["listen"] = tuple(listen)
    if peers:
        values["peers"] = tuple(peers)
    if api_host is not None:
        values["api_host"] = api_host
    if api_port is not None:
        values["api_port"] = api_port
    if log_level is not None:
        values["log_level"] = log_level.upper()
    api_host = values.get("api_host", NodeConfig.api_host)
    values.update(_api_access(api_host, authorized_keys, open_api, tls_cert, tls_key))
    try:
        # A partial limit fills the rest from the machine (total) or from the total (per job),
        # which is what NodeConfig's None means for the whole limit.
        if limit_total.given or limit_job.given:
            machine = machine_resources(values.get("data_dir") or shoal_home() / "node")
        if limit_total.given:
            values["limit_total"] = _fill(limit_total, machine)
        if limit_job.given:
            values["limit_job"] = _fill(limit_job, values.get("limit_total") or machine)
    except ValidationError as exc:
        raise CLIError(*(f"limit {line}" for line in validation_lines(exc)), code=EXIT_USAGE) from None
    return NodeConfig(**values)


def _labels(items: list[str], flag: str) -> dict[str, str]:
    from jobs.selector import LabelError, parse_labels

    try:
        return parse_labels(items)
    except LabelError as e:
        raise CLIError(f"{flag}: {e}", code=EXIT_USAGE) from None


def node_labels(items: list[str], nodes: int) -> dict[int, dict[str, str]]:
    """``shoal devstack --node-label I:KEY=VALUE`` → labels by node index, each node's checked."""
    by_node: dict[int, list[str]] = {}
    for item in items:
        index, colon, label = item.partition(":")
        if not colon or not index.strip().isdigit():
            raise CLIError(f"--node-label {item!r}: expected I:KEY=VALUE, e.g. 0:zone=eu", code=EXIT_USAGE)
        if int(index) >= nodes:
            raise CLIError(f"--node-label {item!r}: there is no node {int(index)} (nodes are 0 to {nodes - 1})",
                           code=EXIT_USAGE)
        by_node.setdefault(int(index), []).append(label)
    return {i: _labels(labels, f"--node-label (node {i})") for i, labels in by_node.items()}


def _api_access(api_host: str, authorized_keys: Path | None, open_api: bool, tls_cert: Path | None,
                tls_key: Path | None) -> dict[str, Any]:
    """The API's access and TLS settings, checked before the node starts: each problem is one line."""
    from node.api.access import AuthorizedKeys, exposure_problem

    problem = exposure_problem(api_host, authorized_keys, open_api)
    if problem is not None:
        raise CLIError(problem, code=EXIT_USAGE)
    values: dict[str, Any] = {"open_api": open_api}
    if authorized_keys is not None:
        authorized_keys = authorized_keys.expanduser().absolute()
        try:
            AuthorizedKeys(authorized_keys).load()
        except ValueError as e:
            raise CLIError(str(e), code=EXIT_USAGE) from None
        values["authorized_keys"] = authorized_keys
    if (tls_cert is None) != (tls_key is None):
        raise CLIError("--tls-cert and --tls-key go together: give both (or neither, for plain HTTP)", code=EXIT_USAGE)
    if tls_cert is not None and tls_key is not None:
        import ssl

        tls_cert, tls_key = tls_cert.expanduser().absolute(), tls_key.expanduser().absolute()
        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(tls_cert, tls_key)
        except (OSError, ssl.SSLError) as e:
            raise CLIError(f"cannot use --tls-cert {tls_cert} with --tls-key {tls_key}: {e}", code=EXIT_USAGE) from None
        values.update(tls_cert=tls_cert, tls_key=tls_key)
    return values


def _fill(limit: Limit, base: Resources) -> Resources:
    from jobs import Resources

    return Resources.model_validate(
        {
            "cpu": base.cpu if limit.cpu is None else limit.cpu,
            "memory": base.memory if limit.memory is None else limit.memory,
            "disk": base.disk if limit.disk is None else limit.disk,
            "gpu": base.gpu if limit.gpu is None else limit.gpu,
        }
    )


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM both stop a foreground node the way Ctrl-C does.

    A process started in the background by a non-interactive shell (scripts, CI) inherits an
    *ignored* SIGINT, and so do its children: restore the default so Ctrl-C, ``kill -INT`` and
    the devstack's own SIGINT to its nodes work. SIGTERM (``kill``, ``docker stop``, systemd) is
    forwarded as SIGINT, which trio turns into KeyboardInterrupt at a safe point.
    """
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda signum, frame: os.kill(os.getpid(), signal.SIGINT))
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

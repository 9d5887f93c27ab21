"""``shoal serve`` and ``shoal devstack``: run a node, or a few local ones, in the foreground."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from cli.extras import require_node

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

_Size = Annotated[str | None, typer.Option(metavar="SIZE", help="e.g. 4GiB (defaults: as for CPU).")]


def serve(
    data_dir: Annotated[Path | None, typer.Option("--data-dir", metavar="DIR",
        help="Keys and store (default ~/.shoal/node).")] = None,
    listen: Annotated[list[str] | None, typer.Option("--listen", metavar="MULTIADDR",
        help="libp2p listen address; repeatable.")] = None,
    peer: Annotated[list[str] | None, typer.Option("--peer", metavar="MULTIADDR",
        help="Peer to connect to; repeatable.")] = None,
    api_host: Annotated[str | None, typer.Option("--api-host", metavar="HOST", help="API bind address.")] = None,
    api_port: Annotated[int | None, typer.Option("--api-port", metavar="PORT",
        help="API port (default 8700; 0: any free port).")] = None,
    no_requester: Annotated[bool, typer.Option("--no-requester", help="Do not orchestrate jobs.")] = False,
    no_compute: Annotated[bool, typer.Option("--no-compute", help="Do not run jobs.")] = False,
    noop: Annotated[bool, typer.Option("--noop", help="Run every engine as noop (benchmarks).")] = False,
    label: Annotated[list[str] | None, typer.Option("--label", metavar="KEY=VALUE",
        help="A label of this compute node, for job selectors (e.g. zone=eu); repeatable.")] = None,
    limit_total_cpu: Annotated[str | None, typer.Option(metavar="CORES",
        help="CPU for all jobs together; a total limit not given is what the machine has.")] = None,
    limit_total_memory: _Size = None,
    limit_total_disk: _Size = None,
    limit_total_gpu: Annotated[int | None, typer.Option("--limit-total-gpu", metavar="N", min=0,
        help="GPUs for all jobs together (default: those `nvidia-smi -L` lists, else 0).")] = None,
    limit_job_cpu: Annotated[str | None, typer.Option(metavar="CORES",
        help="CPU for one job; a per-job limit not given is the total.")] = None,
    limit_job_memory: _Size = None,
    limit_job_disk: _Size = None,
    log_level: Annotated[LogLevel | None, typer.Option("--log-level", case_sensitive=False,
        help="Default INFO.")] = None,
    ipfs_api: Annotated[str | None, typer.Option("--ipfs-api", metavar="URL",
        help="Kubo RPC (default http://127.0.0.1:5001; 'none': keep results in the data dir).")] = None,
    allow_private_urls: Annotated[bool, typer.Option("--allow-private-urls",
        help="Let jobs download inputs from loopback/private addresses.")] = False,
    bad_actor: Annotated[bool, typer.Option("--bad-actor",
        help="Report wrong results (to test verification).")] = False,
    retention: Annotated[float | None, typer.Option("--retention", metavar="SECONDS", min=1,
        help="Unpin results this long after a job ends (default 7 days).")] = None,
    ttl: Annotated[float | None, typer.Option("--ttl", metavar="SECONDS", min=1,
        help="Delete finished jobs, sweeps and their results this long after they end (default 30 days).")] = None,
    pending_bid_timeout: Annotated[float | None, typer.Option("--pending-bid-timeout", metavar="SECONDS", min=0.1,
        help="Longest a bid the requester left undecided holds capacity (default 120; a job's own wait for "
             "min_bids plus 10 s when shorter).")] = None,
    unsafe_unsandboxed_python: Annotated[bool, typer.Option("--unsafe-unsandboxed-python",
        help="UNSAFE: run python jobs without the OS sandbox (when bubblewrap cannot work here).")] = False,
    allow_images: Annotated[list[str] | None, typer.Option("--allow-images", metavar="PATTERN",
        help="Docker images jobs may use (e.g. 'python:*'); repeatable. Default: Shoal's base images and "
             "images pulled for jobs, never other local ones.")] = None,
    max_image_size: Annotated[str | None, typer.Option("--max-image-size", metavar="SIZE",
        help="Largest docker image a job may have this node pull, downloaded or unpacked (default 10GiB).")] = None,
    image_cache_size: Annotated[str | None, typer.Option("--image-cache-size", metavar="SIZE",
        help="Images pulled for jobs this node keeps, the least recently used removed past it (default 20GiB, "
             "at most a quarter of Docker's disk).")] = None,
    max_output_entries: Annotated[int | None, typer.Option("--max-output-entries", metavar="N", min=1,
        help="Files and folders one job's outputs may hold (default 50000, at most 200000: what a client "
             "unpacks from one result); a job making more is stopped and fails.")] = None,
    allow_network: Annotated[bool, typer.Option("--allow-network",
        help="Give docker jobs that ask for it (shoal docker run --network) network access, fenced from this "
             "host and 169.254.0.0/16 (needs root, or `shoal docker fence` run as root at boot); without it "
             "this node refuses them.")] = False,
    network_key: Annotated[Path | None, typer.Option("--network-key", metavar="FILE",
        help="Private network: connect only with peers holding this key (shoal network-key new).")] = None,
    trusted_peers: Annotated[Path | None, typer.Option("--trusted-peers", metavar="FILE",
        help="Connect only with these peers (one peer id per line).")] = None,
    authorized_keys: Annotated[Path | None, typer.Option("--authorized-keys", metavar="FILE",
        help="Only these client keys may use the API: one per line (as 'shoal key show' prints it), "
             "optionally followed by capabilities submit, read, cancel, admin (none listed: all). "
             "Re-read when it changes.")] = None,
    open_api: Annotated[bool, typer.Option("--open-api",
        help="Let any client key in although the API listens beyond loopback (otherwise such a node needs "
             "--authorized-keys).")] = False,
    tls_cert: Annotated[Path | None, typer.Option("--tls-cert", metavar="FILE",
        help="Serve the API over HTTPS with this certificate (PEM); needs --tls-key.")] = None,
    tls_key: Annotated[Path | None, typer.Option("--tls-key", metavar="FILE",
        help="The private key (PEM) of --tls-cert.")] = None,
    api_name: Annotated[list[str] | None, typer.Option("--api-name", metavar="HOST[:PORT]",
        help="A name clients reach the API by (DNS name, public IP, proxy); repeatable. Signed requests "
             "name their host, and a node refuses those made for another.")] = None,
    quota_jobs_in_flight: Annotated[int | None, typer.Option("--quota-jobs-in-flight", metavar="N", min=1,
        help="Per client: live jobs and sweeps on this node (default 10000); then 429.")] = None,
    quota_spec_bytes_in_flight: Annotated[str | None, typer.Option("--quota-spec-bytes-in-flight", metavar="SIZE",
        help="Per client: the specs of its live jobs and sweeps on this node together, each held in memory "
             "while it waits (default 256MiB); then 429.")] = None,
    quota_submits_per_second: Annotated[float | None, typer.Option("--quota-submits-per-second", metavar="N",
        min=0.001, help="Per client: job and sweep submissions per second, bursts of twice that "
                        "(default 1000); then 429.")] = None,
    quota_event_streams: Annotated[int | None, typer.Option("--quota-event-streams", metavar="N", min=1,
        help="Per client: open event streams and logs followed (default 256); then 429.")] = None,
    quota_context_bytes_per_hour: Annotated[str | None, typer.Option("--quota-context-bytes-per-hour",
        metavar="SIZE", help="Per client: working directories and job and sweep specs stored per hour, kept "
                             "for --retention (default 2GiB); then 429.")] = None,
    quota_sweep_indexes_per_hour: Annotated[int | None, typer.Option("--quota-sweep-indexes-per-hour", metavar="N",
        min=1, help="Per client: indexes of the sweeps it submits per hour, each kept until --ttl "
                    "(default 2000000); then 429.")] = None,
    peer_rate_limit: Annotated[float | None, typer.Option("--peer-rate-limit", metavar="N", min=0,
        help="Direct requests per second one peer may make, in bursts of up to 2N; more are refused "
             "(default 1000; 0: no limit).")] = None,
) -> None:  # fmt: skip
    """Run a Shoal node in the foreground until Ctrl-C."""
    require_node("serve")
    from cli.daemon import Limit, build_node_config, stop_on_signals
    from cli.errors import CLIError
    from cli.exits import EXIT_USAGE
    from cli.specs import parse_size
    from storage.tarsafe import MAX_ENTRIES

    if max_output_entries is not None and max_output_entries > MAX_ENTRIES:
        raise CLIError(f"--max-output-entries: at most {MAX_ENTRIES:,}, what a client unpacks from one result",
                       code=EXIT_USAGE)
    sizes = {}
    for flag, given in (("--quota-context-bytes-per-hour", quota_context_bytes_per_hour),
                        ("--quota-spec-bytes-in-flight", quota_spec_bytes_in_flight),
                        ("--max-image-size", max_image_size), ("--image-cache-size", image_cache_size)):
        sizes[flag] = parse_size(given, flag)
        if sizes[flag] is not None and sizes[flag] < 1:
            raise CLIError(f"{flag}: must be at least 1 byte", code=EXIT_USAGE)

    config = build_node_config(
        data_dir=data_dir,
        listen=listen,
        peers=peer,
        api_host=api_host,
        api_port=api_port,
        requester=not no_requester,
        compute=not no_compute,
        noop=noop,
        labels=label,
        limit_total=Limit(limit_total_cpu, limit_total_memory, limit_total_disk, limit_total_gpu),
        limit_job=Limit(limit_job_cpu, limit_job_memory, limit_job_disk),
        log_level=log_level,
        ipfs_api=ipfs_api,
        allow_private_urls=allow_private_urls,
        bad_actor=bad_actor,
        retention=retention,
        ttl=ttl,
        pending_bid_timeout=pending_bid_timeout,
        unsandboxed_python=unsafe_unsandboxed_python,
        allow_images=allow_images,
        max_image_size=sizes["--max-image-size"],
        image_cache_size=sizes["--image-cache-size"],
        allow_network=allow_network,
        max_output_entries=max_output_entries,
        network_key=network_key,
        trusted_peers=trusted_peers,
        authorized_keys=authorized_keys,
        open_api=open_api,
        tls_cert=tls_cert,
        tls_key=tls_key,
        api_limits={"api_names": tuple(api_name) if api_name else None,
                    "quota_jobs_in_flight": quota_jobs_in_flight,
                    "quota_spec_bytes_in_flight": sizes["--quota-spec-bytes-in-flight"],
                    "quota_submits_per_second": quota_submits_per_second,
                    "quota_event_streams": quota_event_streams,
                    "quota_context_bytes_per_hour": sizes["--quota-context-bytes-per-hour"],
                    "quota_sweep_indexes_per_hour": quota_sweep_indexes_per_hour},
        peer_rate_limit=peer_rate_limit,
    )
    from node.daemon import main as run_node

    with stop_on_signals():
        run_node(config)


def devstack(
    nodes: Annotated[int, typer.Option("--nodes", "-n", metavar="N", min=1, help="How many nodes.")] = 3,
    noop: Annotated[bool, typer.Option("--noop", help="Run every engine as noop (benchmarks).")] = False,
    base_dir: Annotated[Path | None, typer.Option("--base-dir", metavar="DIR",
        help="A folder of the devstack's own for the nodes' files (default ~/.shoal/devstack); one holding "
             "anything else is refused. The CLI finds the stack by $SHOAL_HOME/devstack.json.")] = None,
    keep: Annotated[bool, typer.Option("--keep",
        help="Carry on from the last run in this folder: its jobs, sweeps, results and node identities "
             "(default: start afresh, deleting what the last run left).")] = False,
    base_port: Annotated[int | None, typer.Option("--base-port", metavar="PORT",
        help="First API port: node i takes PORT+i (API) and PORT+100+i (libp2p), its Kubo "
             "PORT+200+i, PORT+300+i and PORT+400+i.")] = None,
    kubo: Annotated[bool | None, typer.Option("--kubo/--no-kubo",
        help="One Kubo (IPFS) daemon per node (default: when Kubo is installed).")] = None,
    bad_actors: Annotated[int, typer.Option("--bad-actors", metavar="M", min=0,
        help="The last M nodes report wrong results (to watch verification).")] = 0,
    retention: Annotated[float | None, typer.Option("--retention", metavar="SECONDS", min=1,
        help="Every node's --retention (results unpinned after).")] = None,
    ttl: Annotated[float | None, typer.Option("--ttl", metavar="SECONDS", min=1,
        help="Every node's --ttl (finished jobs and sweeps deleted after).")] = None,
    node_label: Annotated[list[str] | None, typer.Option("--node-label", metavar="I:KEY=VALUE",
        help="A label of node I (0-based), e.g. 1:zone=eu; repeatable.")] = None,
    allow_network: Annotated[bool, typer.Option("--allow-network",
        help="Every node's --allow-network (docker jobs may ask for network).")] = False,
) -> None:  # fmt: skip
    """Run N local nodes for development until Ctrl-C.

    Other commands find the devstack on their own (no --api needed).
    """
    require_node("devstack")
    from cli.daemon import node_labels, stop_on_signals
    from devstack.stack import main as run_stack

    extra: dict[str, Any] = {}
    if node_label:
        extra["labels"] = node_labels(node_label, nodes)
    if base_dir is not None:
        extra["base_dir"] = base_dir
    if base_port is not None:
        extra["base_port"] = base_port
    if kubo is not None:
        extra["kubo"] = kubo
    if bad_actors:
        extra["bad_actors"] = bad_actors
    if keep:
        extra["fresh"] = False
    serve_args = [*(["--retention", f"{retention:g}"] if retention else []), *(["--ttl", f"{ttl:g}"] if ttl else []),
                  *(["--allow-network"] if allow_network else [])]
    if serve_args:
        extra["extra_args"] = serve_args
    with stop_on_signals():
        run_stack(nodes=nodes, noop=noop, **extra)

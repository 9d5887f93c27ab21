"""``shoal bench``, ``shoal images build``, ``shoal docker fence``, ``shoal pyodide install``: node tools."""

from __future__ import annotations

import os
from typing import Annotated

import typer

from cli.extras import require_node


def bench(
    ctx: typer.Context,
    jobs: Annotated[int, typer.Option("--jobs", metavar="N", min=1, help="Jobs to run.")] = 10_000,
    submitters: Annotated[int, typer.Option("--submitters", metavar="N", min=1,
        help="Concurrent clients, each submitting one job after another.")] = 10,
    nodes: Annotated[int, typer.Option("--nodes", metavar="N", min=1, help="Devstack nodes.")] = 3,
    concurrency: Annotated[int, typer.Option("--concurrency", metavar="N", min=1,
        help="Nodes that run each job.")] = 3,
    chaos: Annotated[bool, typer.Option("--chaos",
        help="Kill -9 a random node every few seconds and restart it.")] = False,
    chaos_interval: Annotated[float, typer.Option("--chaos-interval", metavar="S", min=0.5,
        help="Seconds between two faults (--chaos, --freeze).")] = 3.0,
    freeze: Annotated[float, typer.Option("--freeze", metavar="S", min=0.0,
        help="Instead of killing, stop a random node with SIGSTOP for S seconds, then resume it.")] = 0.0,
    job_seconds: Annotated[float, typer.Option("--job-seconds", metavar="S", min=0.0,
        help="How long each (noop) job runs: work in flight for --chaos and --freeze to hit.")] = 0.0,
    api: Annotated[str | None, typer.Option("--api", metavar="URL",
        help="Use this running node instead of starting a fresh noop devstack.")] = None,
    base_port: Annotated[int, typer.Option("--base-port", metavar="PORT")] = 8800,
    as_json: Annotated[bool, typer.Option("--json", help="Print only the JSON report.")] = False,
    targets: Annotated[bool, typer.Option("--targets",
        help="Run the benchmarks behind issue #20's seven performance targets (each on its own fresh "
             "devstack) and print every target beside its measured value. Long: see --quick.")] = False,
    quick: Annotated[bool, typer.Option("--quick",
        help="With --targets: smaller runs (the table marks them QUICK); not the targets' figures.")] = False,
    only: Annotated[str | None, typer.Option("--only", metavar="N,N",
        help="With --targets: only these targets, e.g. 1,3.")] = None,
) -> None:  # fmt: skip
    """Stress benchmark (Bacalhau's 2022 method by default): prints a summary and JSON.

    With --targets: issue #20's targets, goal beside measured value, in a table (or --json)."""
    require_node("bench")
    if targets or quick or only is not None:
        _bench_targets(ctx, targets=targets, quick=quick, only=only, as_json=as_json)
        return
    from devstack.bench import main as run_bench

    report = run_bench(nodes=nodes, jobs=jobs, submitters=submitters, concurrency=concurrency, api=api,
                       base_port=base_port, as_json=as_json, chaos=chaos, chaos_interval=chaos_interval,
                       freeze_for=freeze, job_seconds=job_seconds)
    if report.completed + report.failed != report.jobs or report.errors:
        raise typer.Exit(1)


_RUN_OPTIONS = ("jobs", "submitters", "nodes", "concurrency", "chaos", "chaos_interval", "freeze", "job_seconds",
                "api", "base_port")


def _bench_targets(ctx: typer.Context, *, targets: bool, quick: bool, only: str | None, as_json: bool) -> None:
    from cli.errors import EXIT_USAGE, CLIError
    from devstack import bench_targets
    from devstack.targets import parse_only

    if not targets:
        raise CLIError("--quick and --only go with --targets", code=EXIT_USAGE)
    # typer vendors click: its ParameterSource is not click's, so the source is compared by name
    given = [name for name in _RUN_OPTIONS if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"]
    if given:
        flags = ", ".join("--" + name.replace("_", "-") for name in given)
        raise CLIError(f"--targets runs each target's own workload; it takes no {flags}", code=EXIT_USAGE)
    try:
        numbers = parse_only(only)
    except ValueError as exc:
        raise CLIError(str(exc), code=EXIT_USAGE) from None
    verdicts = bench_targets.main(numbers, quick=quick, as_json=as_json)
    if any(v.met is None for v in verdicts):
        raise typer.Exit(1)


def images_build(
    no_python: Annotated[bool, typer.Option("--no-python", help="Only the busybox image.")] = False,
    no_sci: Annotated[bool, typer.Option("--no-sci", help="Not shoal/python-sci (numpy, scipy, pandas).")] = False,
) -> None:
    """Build Shoal's base container images offline (busybox, shoal/python:3, shoal/python-sci)."""
    require_node("images build")
    from executors.images import build_images

    build_images(python=not no_python, sci=not no_sci)


def docker_fence() -> None:
    """Fence the network docker jobs get (serve --allow-network) from the host, its cloud's metadata
    server and private addresses: network shoal-jobs and its iptables rules. Root only; a node that runs
    as root does it itself."""
    require_node("docker fence")
    import docker

    from cli.errors import CLIError
    from executors.base import ExecutorError
    from executors.docker_network import BRIDGE, CLOUD, fenced_network

    if os.geteuid() != 0:
        raise CLIError("shoal docker fence puts iptables rules in place: run it as root")
    try:
        network = fenced_network(docker.from_env(timeout=30).api)
    except docker.errors.DockerException as exc:
        raise CLIError(f"the Docker daemon does not answer: {exc}") from None
    except ExecutorError as exc:
        raise CLIError(str(exc)) from None
    print(f"network {network} (bridge {BRIDGE}) is fenced: its jobs reach neither this host nor {', '.join(CLOUD)} "
          "(DNS excepted)")


def pyodide_install(
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:  # fmt: skip
    """Install the pinned Pyodide the python engine runs in (npm ci beside the installed runner; needs Node.js)."""
    require_node("pyodide install")
    import json

    from cli.errors import CLIError
    from executors.base import ExecutorError
    from executors.pyodide import RUNNER_DIR
    from executors.runtime_install import install_pyodide

    try:
        version, installed = install_pyodide(RUNNER_DIR)
    except ExecutorError as exc:
        raise CLIError(str(exc)) from None
    if as_json:
        print(json.dumps({"pyodide": version, "installed": installed, "runner_dir": str(RUNNER_DIR)}))
    else:
        print(f"Pyodide {version} {'installed' if installed else 'already installed'} in {RUNNER_DIR}")

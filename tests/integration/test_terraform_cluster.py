"""The Terraform module's startup script, run for real on three "VMs" (network namespaces).

terraform/test/harness.py renders modules/shoal-cluster/templates/startup.sh.tftpl, gives each
namespace the instance metadata the module sets (served by a metadata-server emulator that tells
instances apart by source address, like GCP's), and runs the script in each: one bootstrap node
and two compute nodes. The script's real logic runs: metadata reading, the bootstrap publishing
its multiaddr as a guest attribute, the compute nodes finding it through the (emulated)
Compute API and peering with it, config and systemd unit writing, and the services' start (under
the script's restart-on-failure supervisor, as systemd is not here). Only the installs are
local: Shoal from this virtualenv, Kubo if an ipfs binary is on this machine, Node.js, Pyodide and
bubblewrap as this machine has them, this machine's Docker daemon when one answers (its unix socket
is a path, reachable from every namespace; the nodes' workspaces are paths it bind-mounts as they
are), no Ops Agent (its config is written).

Then a noop job with concurrency 3 submitted to the bootstrap's API must complete on all three
nodes, a python job (Pyodide, in the bubblewrap sandbox) must print its answer, and docker jobs
(busybox) must print theirs and, on all three nodes, publish an output `shoal get` brings back
(skipped, saying why, when no Docker daemon answers or busybox is missing); each node's Ops
Agent config must scrape a /metrics that answers with the waiting-work gauges; Kubo's RPC and the
compute nodes' APIs must be unreachable from the network; a killed node must be restarted; and a
rebooted bootstrap node must come back with the same peer id.

Needs root (network namespaces); skipped with the reason otherwise. Bounded to ~4 minutes.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "terraform" / "test"))

import harness  # noqa: E402

from executors.docker import DockerExecutor  # noqa: E402
from shoal import ClientKey  # noqa: E402

pytestmark = pytest.mark.slow

VENV = Path(sys.prefix) if (Path(sys.prefix) / "bin" / "shoal").exists() else REPO / ".venv"  # a virtualenv's root
SHOAL = VENV / "bin" / "shoal"
MULTIADDR = re.compile(r"^/ip4/10\.213\.0\.10/tcp/9700/p2p/(12D3KooW[1-9A-HJ-NP-Za-km-z]+)$")
BUDGET = 260.0  # seconds for the whole module, set-up and tear-down included (each wait is capped by it)
_deadline = time.monotonic() + BUDGET


def _left(cap: float) -> float:
    """A wait of at most ``cap`` seconds that still ends within the module's budget."""
    left = _deadline - time.monotonic()
    assert left > 1, f"the {BUDGET:g} s budget of this module is spent"
    return min(cap, left - 1)


def _skip_reason() -> str | None:
    if sys.platform != "linux":
        return "network namespaces are Linux-only"
    if os.geteuid() != 0:
        return "creating network namespaces (`ip netns add`) needs root"
    ok, why = harness.netns_permitted()
    if not ok:
        return why
    if not SHOAL.exists():
        return f"no shoal installed in {VENV} (run scripts/setup)"
    return None


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[harness.Cluster]:
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    global _deadline
    _deadline = time.monotonic() + BUDGET
    workdir = tmp_path_factory.mktemp("tf-cluster")
    operator = ClientKey.load_or_create(workdir / "client" / "client.key")  # the module's authorized_keys
    c = harness.Cluster(workdir, VENV, client_keys=[f"{operator.public_key_b64} submit,read,cancel"])
    started = time.monotonic()
    try:
        c.up()
        for vm in c.vms:  # all at once: the compute nodes must wait for the bootstrap's multiaddr
            c.boot(vm)
        c.wait_booted(c.vms, timeout=_left(100))
        print(f"3 VMs booted in {time.monotonic() - started:.1f} s (logs in {workdir})")
        yield c
    finally:
        c.down()
        leftover = [ns for ns in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True)
                    .stdout.split() if ns.startswith(c.prefix)]
        assert not leftover, f"namespaces left behind: {leftover}"


def _client_env(c: harness.Cluster, home: str = "client") -> dict[str, str]:
    env = {**os.environ, "SHOAL_HOME": str(c.workdir / home), "NO_COLOR": "1", "SHOAL_CA_CERT": str(c.api_cert())}
    env.pop("SHOAL_API", None)
    return env


def _bootstrap_addr(c: harness.Cluster) -> str:
    return c.guest_attributes()[c.vms[0].name]["shoal/multiaddr"]


def _readyz(c: harness.Cluster, ns: str, url: str) -> dict | None:
    pin = ["--cacert", str(c.api_cert())] if url.startswith("https://") else []
    r = c.run_in(ns, ["curl", "-fsS", "--max-time", "3", *pin, url], timeout=10)
    return json.loads(r.stdout) if r.returncode == 0 else None


def _connects(c: harness.Cluster, ns: str, host: str, port: int) -> bool:
    code = ("import socket, sys\n"
            "s = socket.socket(); s.settimeout(3)\n"
            "sys.exit(0 if s.connect_ex((sys.argv[1], int(sys.argv[2]))) == 0 else 1)\n")
    return c.run_in(ns, [sys.executable, "-c", code, host, str(port)], timeout=10).returncode == 0


def _serve_pids(c: harness.Cluster, vm: harness.VM) -> list[int]:
    pids = []
    for pid in c.pids(vm.ns):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except FileNotFoundError:
            continue
        if b"serve" in cmdline and any(part.endswith(b"/shoal") for part in cmdline):
            pids.append(pid)
    return pids


def test_bootstrap_publishes_and_compute_nodes_discover_it(cluster: harness.Cluster) -> None:
    c = cluster
    published = c.guest_attributes()
    boot = published[c.vms[0].name]
    m = MULTIADDR.match(boot["shoal/multiaddr"])
    assert m, boot
    assert boot["shoal/peer-id"] == m.group(1)
    assert boot["shoal/external-multiaddr"] == f"/ip4/203.0.113.10/tcp/9700/p2p/{m.group(1)}"
    # the published peer id is the one the node itself reports (its READY line / log)
    assert m.group(1) in (c.vms[0].root / "var/log/shoal/shoal.log").read_text()
    # the key lives in the data dir, i.e. on the bootstrap's persistent disk
    assert (c.vms[0].root / "var/lib/shoal/node/node.key").stat().st_size == 32
    requests = (c.state_dir / "requests.log").read_text()
    for vm in c.vms[1:]:
        env = (vm.root / "etc/shoal/shoal.env").read_text()
        assert f"--peer {boot['shoal/multiaddr']}" in env, env
        assert "--api-host 127.0.0.1" in env
        # found through the Compute API's getGuestAttributes, authorised by a metadata-server token
        assert re.search(rf"^{re.escape(vm.ip)} .*GET /compute/v1/projects/.*/getGuestAttributes\?variableKey="
                         r"shoal%2Fmultiaddr HTTP/1.1\" 200", requests, re.M), requests[-2000:]
        assert re.search(rf"^{re.escape(vm.ip)} .*instance/service-accounts/default/token", requests, re.M)
        assert published[vm.name]["shoal/multiaddr"].startswith(f"/ip4/{vm.ip}/tcp/9700/p2p/12D3KooW")


def test_noop_job_runs_on_all_three_nodes(cluster: harness.Cluster) -> None:
    c = cluster
    deadline = time.monotonic() + _left(30)
    while True:
        ready = _readyz(c, c.lan, f"{c.api()}/readyz")
        if ready and ready.get("peers", 0) >= 2:
            break
        assert time.monotonic() < deadline, f"bootstrap never saw both compute nodes: {ready}"
        time.sleep(1)
    r = c.run_in(c.lan, [str(SHOAL), "--api", c.api(), "run", "noop", "--concurrency", "3", "--json",
                         "--wait-timeout", "60"], timeout=_left(90), env=_client_env(c))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    described = json.loads(r.stdout)
    assert described["job"]["state"] == "completed", described["job"]
    done = {e["node_id"] for e in described["executions"] if e["state"] == "completed"}
    peers = {attrs["shoal/peer-id"] for attrs in c.guest_attributes().values()}
    assert len(peers) == 3
    assert done == peers, f"completed on {done}, cluster is {peers}"


def test_a_python_job_runs_on_the_cluster(cluster: harness.Cluster) -> None:
    """`shoal run python`, the headline command, against the cluster's API: a node's python engine
    (Pyodide in the bubblewrap sandbox) runs it. Offered once a node's snapshot is built, so the wait is long."""
    c = cluster
    r = c.run_in(c.lan, [str(SHOAL), "--api", c.api(), "run", "python", "--no-cache", "--wait-timeout", "150",
                         "-c", "import sys; print(6 * 7, sys.platform)"], timeout=_left(170), env=_client_env(c))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout == "42 emscripten\n"


def _docker_skip_reason(c: harness.Cluster) -> str | None:
    """Why no docker job can run on the cluster, as the nodes' startup scripts saw it (None: it can)."""
    if not DockerExecutor("probe").is_installed():
        return "no Docker daemon answers on this machine (scripts/install-docker starts one; CI's scripts/setup does)"
    logs = [vm.startup_log.read_text() for vm in c.vms]
    for vm, log in zip(c.vms, logs, strict=True):
        assert "local mode: using the Docker daemon that answers" in log, f"{vm.name} did not find the daemon:\n{log}"
    if re.search(r"missing:[^\n]* busybox:latest", logs[0]):
        return "the busybox image is missing (`shoal images build` makes it)"
    return None


def test_a_docker_job_runs_on_the_cluster(cluster: harness.Cluster) -> None:
    """`shoal docker run`, as the module's README shows it, against the cluster's API: a node's docker
    executor, inside its network namespace, runs the container on the Docker daemon it found."""
    c = cluster
    if reason := _docker_skip_reason(c):
        pytest.skip(reason)
    r = c.run_in(c.lan, [str(SHOAL), "--api", c.api(), "docker", "run", "busybox", "--wait-timeout", "60",
                         "--", "echo", "hello from docker"], timeout=_left(75), env=_client_env(c))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout == "hello from docker\n"


def test_a_docker_job_with_an_output_runs_on_every_node(cluster: harness.Cluster, tmp_path: Path) -> None:
    """Each node's docker path works from its namespace: the container writes into the node's
    workspace (bind-mounted from the shared filesystem), the node publishes it, `shoal get` fetches it."""
    c = cluster
    if reason := _docker_skip_reason(c):
        pytest.skip(reason)
    r = c.run_in(c.lan, [str(SHOAL), "--api", c.api(), "docker", "run", "busybox", "--concurrency", "3",
                         "--output", "answer:/outputs", "--json", "--wait-timeout", "60", "--",
                         "sh", "-c", "echo 42 > /outputs/answer.txt; echo written"],
                 timeout=_left(75), env=_client_env(c))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    described = json.loads(r.stdout)
    assert described["job"]["state"] == "completed", described["job"]
    peers = {attrs["shoal/peer-id"] for attrs in c.guest_attributes().values()}
    results = {e["node_id"]: e["result"] for e in described["executions"] if e["state"] == "completed"}
    assert set(results) == peers, f"completed on {set(results)}, cluster is {peers}"
    for result in results.values():
        assert (result["engine"], result["stdout"], result["output_sizes"]) == ("docker", "written\n", {"answer": 3})
    r = subprocess.run(["ip", "netns", "exec", c.lan, str(SHOAL), "--api", c.api(), "get", described["job"]["id"]],
                       cwd=tmp_path, capture_output=True, text=True, timeout=_left(60), env=_client_env(c))
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (answer,) = tmp_path.glob("job-*/outputs/answer/answer.txt")
    assert answer.read_text() == "42\n"


def test_every_node_has_an_ops_agent_config_scraping_its_metrics(cluster: harness.Cluster) -> None:
    import yaml

    c = cluster
    for vm in c.vms:
        config = yaml.safe_load((vm.root / "etc/google-cloud-ops-agent/config.yaml").read_text())
        (scrape,) = config["metrics"]["receivers"]["shoal"]["config"]["scrape_configs"]
        assert config["metrics"]["receivers"]["shoal"]["type"] == "prometheus"
        assert config["metrics"]["service"]["pipelines"]["shoal"]["receivers"] == ["shoal"]
        assert scrape["job_name"] == f"shoal-{vm.role}"  # the bootstrap's is what the autoscaler reads
        (target,) = scrape["static_configs"][0]["targets"]
        url = f"{scrape['scheme']}://{target}{scrape['metrics_path']}"
        pin = ["--cacert", scrape["tls_config"]["ca_file"]] if scrape["scheme"] == "https" else []
        assert bool(pin) == (vm.role == "bootstrap")
        r = c.run_in(vm.ns, ["curl", "-fsS", "--max-time", "5", *pin, url], timeout=_left(15))
        assert r.returncode == 0, r.stderr
        assert "\nshoal_jobs_waiting " in r.stdout and "\nshoal_sweep_indexes_waiting " in r.stdout


def test_every_node_serves_with_the_clusters_network_key(cluster: harness.Cluster) -> None:
    """The metadata's key reaches every node as a file only its user reads, and is never logged.
    (The job above ran over the private network these keys make.)"""
    import stat

    from node.net.admission import load_network_key

    c = cluster
    for vm in c.vms:
        path = vm.root / "etc/shoal/network.key"
        assert load_network_key(path) == bytes.fromhex(c.network_key)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert f"--network-key {path}" in (vm.root / "etc/shoal/shoal.env").read_text()
        for log in (vm.startup_log, vm.root / "var/log/shoal/shoal.log"):
            assert c.network_key not in log.read_text(), f"the key is in {log}"


def test_the_api_takes_only_the_operators_key_over_its_pinned_certificate(cluster: harness.Cluster) -> None:
    c = cluster
    stranger = ClientKey.load_or_create(c.workdir / "stranger" / "client.key").public_key_b64
    r = c.run_in(c.lan, [str(SHOAL), "--api", c.api(), "list"], timeout=_left(30), env=_client_env(c, "stranger"))
    assert r.returncode == 3 and r.stderr == f"Error: client {stranger} is not authorized on this node\n", r.stderr
    unpinned = {k: v for k, v in _client_env(c).items() if k != "SHOAL_CA_CERT"}
    r = c.run_in(c.lan, [str(SHOAL), "--api", c.api(), "list"], timeout=_left(30), env=unpinned)
    assert r.returncode == 3 and "certificate verify failed" in r.stderr, r.stderr
    r = c.run_in(c.lan, [str(SHOAL), "--api", c.api(), "nodes"], timeout=_left(30), env=_client_env(c))
    assert r.returncode == 3 and "lacks the 'admin' capability" in r.stderr, r.stderr  # as the module was told
    assert "--authorized-keys" in (c.vms[0].root / "etc/shoal/shoal.env").read_text()


def test_only_the_bootstrap_api_and_no_kubo_rpc_is_reachable(cluster: harness.Cluster) -> None:
    c = cluster
    assert _connects(c, c.lan, c.vms[0].ip, harness.API_PORT)
    for vm in c.vms:
        assert _connects(c, c.lan, vm.ip, harness.P2P_PORT), f"libp2p port of {vm.name} unreachable"
        assert not _connects(c, c.lan, vm.ip, 5001), f"Kubo's RPC of {vm.name} is reachable from the network"
    for vm in c.vms[1:]:
        assert not _connects(c, c.lan, vm.ip, harness.API_PORT), f"API of compute node {vm.name} is exposed"
    if (c.vms[0].root / "etc/systemd/system/kubo.service").exists():
        for vm in c.vms:  # Kubo runs, on loopback
            assert _connects(c, vm.ns, "127.0.0.1", 5001), f"Kubo's RPC does not answer inside {vm.name}"
    else:
        print("no ipfs binary on this machine: the VMs ran without Kubo (scripts/install-kubo builds it)")


def test_generated_units(cluster: harness.Cluster) -> None:
    c = cluster
    analyze = shutil.which("systemd-analyze")
    for vm in c.vms:
        units = sorted((vm.root / "etc/systemd/system").glob("*.service"))
        assert "shoal.service" in [u.name for u in units]
        for unit in units:
            text = unit.read_text()
            assert "Restart=on-failure" in text and "[Install]" in text and "WantedBy=multi-user.target" in text
            for line in text.splitlines():
                assert not line or line.startswith("[") or re.match(r"^[A-Za-z]+=", line), f"{unit}: {line!r}"
            if unit.name == "shoal.service":  # root fences the network of network jobs before each start
                fenced = vm.attributes["shoal-allow-network"] == "true"
                assert ("\nExecStartPre=-+" in text and " docker fence\n" in text) is fenced, text
                assert "\nDelegate=memory pids\n" in text, text  # its python jobs' cgroups, on cgroup v2
        if analyze:
            r = subprocess.run([analyze, "verify", *map(str, units)], capture_output=True, text=True, timeout=60)
            assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr
    if not analyze:
        print("systemd-analyze not installed: units checked for syntax only")


def test_a_crashed_node_is_restarted(cluster: harness.Cluster) -> None:
    c = cluster
    vm = c.vms[1]
    (old,) = _serve_pids(c, vm)
    os.kill(old, signal.SIGKILL)
    deadline = time.monotonic() + _left(45)
    while True:
        pids = _serve_pids(c, vm)
        if pids and old not in pids and _readyz(c, vm.ns, f"http://127.0.0.1:{harness.API_PORT}/readyz"):
            break
        assert time.monotonic() < deadline, "the killed node was not restarted:\n" + c.tail(
            vm.root / "var/log/shoal/shoal.log")
        time.sleep(0.5)
    assert "restarting in 5 s" in (vm.root / "var/log/shoal/shoal.log").read_text()


def test_rebooted_bootstrap_keeps_its_peer_id(cluster: harness.Cluster) -> None:
    c = cluster
    boot = c.vms[0]
    key = (boot.root / "var/lib/shoal/node/node.key").read_bytes()
    before = _bootstrap_addr(c)
    c.power_off(boot)
    assert not _connects(c, c.lan, boot.ip, harness.API_PORT)
    c.boot(boot)  # GCP runs the startup script again at every boot
    c.wait_booted([boot], timeout=_left(60))
    assert (boot.root / "var/lib/shoal/node/node.key").read_bytes() == key
    assert _bootstrap_addr(c) == before
    assert "initialising the Kubo repo" not in boot.startup_log.read_text().split("startup (install mode")[-1]

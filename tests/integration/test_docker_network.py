"""A docker job given the network reaches the internet, but neither the host nor its cloud.

The cloud is played by a network namespace holding 169.254.169.254 (where GCP's metadata server answers
with the instance's token and the cluster's network key), 10.250.0.2, a neighbour in the VPC, and
198.51.100.2, an address standing for the internet. All serve HTTP on port 80, and the metadata and
neighbour addresses also answer DNS, as GCP's resolver and AWS's (a private address) do.
Needs root (namespaces, iptables) and a Docker daemon (``scripts/install-docker``).
"""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import docker
import pytest
import trio

from executors import docker_network
from executors.base import ExecutorError
from executors.docker import DockerExecutor
from executors.docker_network import BRIDGE, JOBS_NETWORK, RULES, fenced_network
from tests.integration.test_docker_executor import _daemon, make_request

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: network namespaces and iptables"),
    pytest.mark.skipif(_daemon() is None, reason="no Docker daemon answers (scripts/install-docker)"),
]

METADATA = "169.254.169.254"
INTERNET = "198.51.100.2"
NEIGHBOUR = "10.250.0.2"  # another VM of the VPC (an uncommon 10.x, apart from the host's own routes)
IMAGE = "shoal/python:3"

# Serves HTTP on port 80 ("secret" on every path) and answers every DNS A query with INTERNET.
SERVERS = f"""
import socket, threading, http.server
class Secret(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"secret")
    def log_message(self, *a): pass
def dns(address):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((address, 53))
    while True:
        q, peer = s.recvfrom(512)
        end = q.index(0, 12) + 5
        answer = b"\\xc0\\x0c\\x00\\x01\\x00\\x01\\x00\\x00\\x00\\x3c\\x00\\x04" + socket.inet_aton("{INTERNET}")
        s.sendto(q[:2] + b"\\x81\\x80" + q[4:6] + b"\\x00\\x01\\x00\\x00\\x00\\x00" + q[12:end] + answer, peer)
for address in ("{METADATA}", "{NEIGHBOUR}"):
    threading.Thread(target=dns, args=(address,), daemon=True).start()
http.server.ThreadingHTTPServer(("0.0.0.0", 80), Secret).serve_forever()
"""

# What the job tries: each address's HTTP answer, or the error it got.
PROBE = """
import sys, urllib.request
for url in sys.argv[1:]:
    try:
        print(url, urllib.request.urlopen(url, timeout=3).read().decode())
    except Exception as e:
        print(url, "refused", type(e).__name__)
"""


def _run(*args: str) -> None:
    subprocess.run(args, check=True, capture_output=True)


@pytest.fixture(scope="module")
def cloud():
    """The namespace with the metadata server, the VPC neighbour and the internet stand-in, routed from the host."""
    name = f"md{uuid.uuid4().hex[:6]}"
    host_end, ns_end = f"{name}h", f"{name}n"
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "link", "add", host_end, "type", "veth", "peer", "name", ns_end)
        _run("ip", "link", "set", ns_end, "netns", name)
        _run("ip", "addr", "add", "169.254.169.253/30", "dev", host_end)
        _run("ip", "addr", "add", "198.51.100.1/30", "dev", host_end)
        _run("ip", "addr", "add", "10.250.0.1/30", "dev", host_end)
        _run("ip", "link", "set", host_end, "up")
        for cmd in (["addr", "add", f"{METADATA}/30", "dev", ns_end], ["addr", "add", f"{INTERNET}/30", "dev", ns_end],
                    ["addr", "add", f"{NEIGHBOUR}/30", "dev", ns_end], ["link", "set", ns_end, "up"],
                    ["link", "set", "lo", "up"]):
            _run("ip", "netns", "exec", name, "ip", *cmd)
        servers = subprocess.Popen(["ip", "netns", "exec", name, sys.executable, "-c", SERVERS])
        try:
            for _ in range(50):
                with socket.socket() as s:
                    s.settimeout(0.2)
                    if s.connect_ex((METADATA, 80)) == 0:
                        break
            yield
        finally:
            servers.kill()
            servers.wait()
    finally:
        subprocess.run(["ip", "netns", "delete", name], capture_output=True)


@pytest.fixture
def host_service():
    """A service on the host, listening on every address: (port, what it answers)."""
    listener = socket.create_server(("0.0.0.0", 0))
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(2)
                conn.recv(4096)  # the request (closing on it unread would reset the connection)
                conn.sendall(b"HTTP/1.0 200 OK\r\n\r\nhost-secret")
    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    stop.set()
    thread.join()
    listener.close()


def _host_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True, check=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()
            if not line.split()[3].startswith(("127.", "169.254."))]


async def test_a_network_job_reaches_the_internet_but_not_the_metadata_server_or_the_host(
        cloud, host_service, tmp_path):
    node_label = f"test-{uuid.uuid4().hex[:8]}"
    executor = DockerExecutor(node_label, allow_network=True)
    await trio.to_thread.run_sync(fenced_network, docker.from_env().api)  # its bridge is one of the host's addresses
    hosts = [f"http://{address}:{host_service}/" for address in await trio.to_thread.run_sync(_host_addresses)]
    urls = [f"http://{INTERNET}/", f"http://{METADATA}/computeMetadata/v1/", *hosts]
    request = make_request(tmp_path, args=["python3", "-c", PROBE, *urls], engine={"image": IMAGE, "network": True})
    result = await executor.run(request)
    answers = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert answers.pop(f"http://{INTERNET}/") == "secret"  # the job has a network
    assert answers.pop(f"http://{METADATA}/computeMetadata/v1/").startswith("refused")
    assert set(answers) == set(hosts) and len(hosts) >= 2  # the bridge's gateway, at least, and docker0's
    assert all(answer.startswith("refused") for answer in answers.values()), answers


async def test_a_network_job_reaches_no_other_machine_of_the_vpc(cloud, tmp_path):
    """On GCP the host routes to every VM of the VPC: the other nodes' services, the operator's databases."""
    executor = DockerExecutor(f"test-{uuid.uuid4().hex[:8]}", allow_network=True)
    urls = [f"http://{INTERNET}/", f"http://{NEIGHBOUR}/"]
    request = make_request(tmp_path, args=["python3", "-c", PROBE, *urls], engine={"image": IMAGE, "network": True})
    result = await executor.run(request)
    answers = dict(line.split(" ", 1) for line in result.stdout.splitlines())
    assert answers[f"http://{INTERNET}/"] == "secret"  # the job has a network
    assert answers[f"http://{NEIGHBOUR}/"].startswith("refused"), answers


def test_without_the_fence_the_same_container_reads_the_metadata_server(cloud, host_service):
    """The control: on Docker's default bridge, as network jobs ran before, the probe gets both secrets."""
    client = docker.from_env()
    ipam = client.api.inspect_network("bridge")["IPAM"]["Config"][0]
    # some daemons leave the default bridge's gateway out: it is then its subnet's first address (docker0's)
    gateway = ipam.get("Gateway") or str(next(ipaddress.ip_network(ipam["Subnet"]).hosts()))
    out = client.containers.run(IMAGE, ["python3", "-c", PROBE, f"http://{METADATA}/", f"http://{NEIGHBOUR}/",
                                        f"http://{gateway}:{host_service}/"], remove=True).decode()
    assert out.split() == [f"http://{METADATA}/", "secret", f"http://{NEIGHBOUR}/", "secret",
                           f"http://{gateway}:{host_service}/", "host-secret"]


@pytest.mark.parametrize("resolver", [METADATA, NEIGHBOUR])
def test_names_still_resolve_when_the_resolver_is_a_cloud_address(cloud, resolver):
    """As on GCP, where 169.254.169.254 is also the resolver, or AWS, where it is a private address (a home's
    is its router's): DNS passes the fence, HTTP does not."""
    client = docker.from_env()
    fenced_network(client.api)
    probe = "import socket; print(socket.gethostbyname('metadata.google.internal'))"
    out = client.containers.run(IMAGE, ["python3", "-c", probe], network=JOBS_NETWORK, dns=[resolver],
                                remove=True).decode()
    assert out.split() == [INTERNET]


def test_jobs_on_the_network_cannot_reach_each_other(cloud, tmp_path):
    client = docker.from_env()
    fenced_network(client.api)
    server = client.containers.run(IMAGE, ["python3", "-m", "http.server", "8000"], network=JOBS_NETWORK,
                                   detach=True, labels={"shoal.test": "1"})
    try:
        address = client.api.inspect_container(server.id)["NetworkSettings"]["Networks"][JOBS_NETWORK]["IPAddress"]
        out = client.containers.run(IMAGE, ["python3", "-c", PROBE, f"http://{address}:8000/"],
                                    network=JOBS_NETWORK, remove=True).decode()
        assert out.split()[1] == "refused"
    finally:
        server.remove(force=True)


def test_a_rule_removed_by_hand_is_put_back_before_the_next_job(cloud):
    client = docker.from_env()
    fenced_network(client.api)
    chain, rule = RULES[2]  # a REJECT: alone at the top it would shadow the DNS exceptions
    subprocess.run(["iptables", "-w", "-D", chain, *rule], check=True)
    fenced_network(client.api)
    listed = subprocess.run(["iptables", "-w", "-S", chain], capture_output=True, text=True, check=True).stdout
    ours = [_target_and_destination(line.split()) for line in listed.splitlines() if BRIDGE in line]
    rules = [_target_and_destination(list(r)) for c, r in RULES if c == chain]
    assert rules[0] == ("RETURN", None) and rules[2] == ("REJECT", "169.254.0.0/16")
    assert ours[:len(rules)] == rules  # an earlier version's rules may follow, where they change nothing


def _target_and_destination(rule: list[str]) -> tuple[str, str | None]:
    return rule[rule.index("-j") + 1], rule[rule.index("-d") + 1] if "-d" in rule else None



def test_a_node_that_is_not_root_gives_network_only_once_root_has_fenced_it_this_boot(monkeypatch, tmp_path):
    """Such a node cannot read iptables: root's ``shoal docker fence`` leaves the boot's id and the rules' digest
    as its sign. The boot's id alone, the last release's sign, is refused: its rules let jobs reach the VPC."""
    client = docker.from_env()
    fenced_network(client.api)  # the network exists, as root made it
    marker = tmp_path / "docker-fence"
    monkeypatch.setattr(docker_network, "_is_root", lambda: False)
    monkeypatch.setattr(docker_network, "FENCED", marker)
    for sign in (None, "an earlier boot's id", docker_network.BOOT_ID.read_text().strip()):
        if sign is not None:
            marker.write_text(sign)
        with pytest.raises(ExecutorError, match="as root, run `shoal docker fence`") as refused:
            fenced_network(client.api)
        assert refused.value.retryable  # another node may run it
    marker.write_text(docker_network._fence_id())
    assert fenced_network(client.api) == JOBS_NETWORK


def test_shoal_docker_fence_puts_back_what_is_missing_and_signs_the_boot():
    chain, rule = RULES[-1]  # the host's own INPUT
    subprocess.run(["iptables", "-w", "-D", chain, *rule], check=True)
    docker_network.FENCED.unlink(missing_ok=True)
    done = subprocess.run([str(Path(sys.executable).with_name("shoal")), "docker", "fence"], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"network {JOBS_NETWORK} (bridge {BRIDGE}) is fenced" in done.stdout
    assert subprocess.run(["iptables", "-w", "-C", chain, *rule]).returncode == 0
    assert docker_network.FENCED.read_text().split() == [docker_network.BOOT_ID.read_text().strip(),
                                                         docker_network._fence_id().split()[1]]

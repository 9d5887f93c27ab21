"""Run the module's startup script for real on three "VMs": Linux network namespaces on a bridge.

Layout (everything lives in namespaces this harness creates, so nothing touches the host's own
network, and two runs side by side do not collide):

    namespace <prefix>-lan   bridge br0: 10.213.0.1/24, plus 169.254.169.254/32 where the
                             metadata emulator (metadata_emulator.py) listens on port 80
    namespace <prefix>-boot  eth0 10.213.0.10  the bootstrap node (shoal-role=bootstrap)
    namespace <prefix>-c1    eth0 10.213.0.21  compute node (shoal-role=compute)
    namespace <prefix>-c2    eth0 10.213.0.22  compute node

No namespace has a default route: nothing can leave the bridge. Each VM's filesystem is a
directory (SHOAL_ROOT), its /var/lib/shoal standing for the bootstrap's persistent disk. The
script is rendered from templates/startup.sh.tftpl as Terraform's templatefile() would, and run
with SHOAL_INSTALL_MODE=local (Shoal from a local virtualenv, Kubo if an ipfs binary is here,
this machine's Docker daemon if one answers on /var/run/docker.sock: a path-based unix socket is
reachable from every namespace, and the VMs' directories are paths the daemon can bind-mount)
and SHOAL_NO_SYSTEMD=1 (each generated unit's ExecStart runs under the script's own
restart-on-failure supervisor). The instance metadata is what the module sets.

Usage outside pytest (as root):  python terraform/test/harness.py   brings a cluster up, runs a
noop job on it, prints what happened and tears everything down.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
TERRAFORM_DIR = HERE.parent
REPO = TERRAFORM_DIR.parent
TEMPLATE = TERRAFORM_DIR / "modules" / "shoal-cluster" / "templates" / "startup.sh.tftpl"
EMULATOR = HERE / "metadata_emulator.py"

REGISTRY = Path(tempfile.gettempdir()) / "shoal-tf-harness-netns"  # owner pid + namespaces of each live run
SUBNET = "10.213.0"
METADATA_IP = "169.254.169.254"
PROJECT = {"id": "shoal-harness", "number": 123456789012}
ZONE = "us-central1-a"
SERVICE_ACCOUNT = "shoal-nodes@shoal-harness.iam.gserviceaccount.com"
P2P_PORT = 9700
API_PORT = 8700


def render_template(text: str, variables: dict[str, str]) -> str:
    """Terraform's templatefile() for what the startup template uses: ${name} interpolations and
    the $${ and %%{ escapes. Anything else (expressions, %{ directives) is refused, so the
    template cannot drift into syntax this renderer would get wrong (the static test also
    compares it with Terraform's own rendering when terraform is installed)."""
    out: list[str] = []
    i = 0
    pattern = re.compile(r"\$\$\{|%%\{|\$\{([^}]*)\}|%\{")
    for m in pattern.finditer(text):
        out.append(text[i:m.start()])
        token = m.group(0)
        if token == "$${":
            out.append("${")
        elif token == "%%{":
            out.append("%{")
        elif token == "%{":
            raise ValueError(f"template directive at offset {m.start()} is not supported by this renderer")
        else:
            name = m.group(1).strip()
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
                raise ValueError(f"template expression ${{{name}}} is not supported by this renderer")
            if name not in variables:
                raise KeyError(f"template variable {name!r} is not given")
            out.append(str(variables[name]))
        i = m.end()
    out.append(text[i:])
    return "".join(out)


def installed_shoal_version(venv: Path) -> str:
    return subprocess.run([str(venv / "bin" / "python"), "-c",
                           "from importlib.metadata import version; print(version('shoal'))"],
                          check=True, capture_output=True, text=True).stdout.strip()


def netns_permitted() -> tuple[bool, str]:
    """Whether this process may create network namespaces (root with CAP_SYS_ADMIN, iproute2)."""
    if shutil.which("ip") is None:
        return False, "iproute2's `ip` is not installed"
    probe = f"stf-probe-{os.getpid()}"
    r = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    if r.returncode != 0:
        return False, f"`ip netns add` is not permitted here: {r.stderr.strip()}"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return True, ""


@dataclass
class VM:
    name: str  # instance name, as GCP would have it
    short: str  # namespace suffix
    ip: str
    role: str
    root: Path
    attributes: dict[str, str]
    external_ip: str | None = None
    ns: str = ""
    script_proc: subprocess.Popen | None = None

    @property
    def startup_log(self) -> Path:
        return self.root / "startup.log"


@dataclass
class Cluster:
    workdir: Path
    venv: Path
    prefix: str = field(default_factory=lambda: f"stf{os.getpid() % 100000}")
    vms: list[VM] = field(default_factory=list)
    emulator: subprocess.Popen | None = None
    namespaces: list[str] = field(default_factory=list)
    shoal_version: str = ""
    script: Path | None = None
    network_key: str = field(default_factory=lambda: secrets.token_hex(32))  # as the module generates one
    client_keys: list[str] = field(default_factory=list)  # the module's authorized_keys variable

    # -------------------------------------------------------------------------------- setup
    @property
    def lan(self) -> str:
        return f"{self.prefix}-lan"

    @property
    def state_dir(self) -> Path:
        return self.workdir / "metadata"

    def metadata_common(self) -> dict[str, str]:
        """The module's local.common_metadata, less the startup script itself."""
        return {
            "enable-guest-attributes": "TRUE",
            "enable-oslogin": "TRUE",
            "shoal-p2p-port": str(P2P_PORT),
            "shoal-api-port": str(API_PORT),
            "shoal-kubo-swarm-port": "4001",
            "shoal-log-level": "INFO",
            "shoal-extra-peers": "",
            "shoal-network-key": self.network_key,
            "shoal-authorized-keys": "\n".join(self.client_keys),
            "shoal-limit-total-cpu": "2",
            "shoal-limit-total-memory": "2GiB",
            "shoal-limit-job-memory": "512MiB",
            "shoal-allow-network": "false",
            "shoal-ops-agent": "true",  # local mode: its config is written (and checked), nothing installed
            "shoal-cluster-name": "shoal",
        }

    def define_vms(self) -> None:
        common = self.metadata_common()
        boot = f"{self.prefix}-bootstrap"
        self.vms = [
            VM(boot, "boot", f"{SUBNET}.10", "bootstrap", self.workdir / "vm-boot",
               {**common, "shoal-role": "bootstrap", "shoal-api-host": "0.0.0.0", "shoal-data-disk": "shoal-data"},
               external_ip="203.0.113.10"),
        ]
        for i in (1, 2):
            self.vms.append(VM(f"{self.prefix}-compute-{i}", f"c{i}", f"{SUBNET}.2{i}", "compute",
                               self.workdir / f"vm-c{i}",
                               {**common, "shoal-role": "compute", "shoal-api-host": "127.0.0.1",
                                "shoal-gpu-count": "0",
                                # one node gives docker jobs network: its unit fences that network first
                                "shoal-allow-network": "true" if i == 2 else "false",
                                "shoal-bootstrap-instance": f"projects/{PROJECT['id']}/zones/{ZONE}/instances/{boot}"}))
        for vm in self.vms:
            vm.ns = f"{self.prefix}-{vm.short}"

    def render(self) -> Path:
        self.shoal_version = installed_shoal_version(self.venv)
        text = render_template(TEMPLATE.read_text(), {
            "shoal_version": self.shoal_version,
            "shoal_package": f"https://example.invalid/shoal-{self.shoal_version}-py3-none-any.whl",
            "kubo_version": "v0.40.1",
        })
        self.script = self.workdir / "startup.sh"
        self.script.write_text(text)
        self.script.chmod(0o755)
        return self.script

    def _ip(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)

    def _add_ns(self, name: str) -> None:
        self._ip("netns", "add", name)
        self.namespaces.append(name)
        REGISTRY.mkdir(exist_ok=True)
        (REGISTRY / self.prefix).write_text(json.dumps({"pid": os.getpid(), "namespaces": self.namespaces}))
        self._ip("-n", name, "link", "set", "lo", "up")

    @staticmethod
    def sweep_stale() -> list[str]:
        """Delete the namespaces (and their processes) of earlier runs whose process is gone
        (a run killed before its clean-up); another live run's are left alone."""
        swept: list[str] = []
        if not REGISTRY.is_dir():
            return swept
        for entry in REGISTRY.iterdir():
            try:
                record = json.loads(entry.read_text())
                os.kill(record["pid"], 0)
                continue  # its owner still runs
            except ProcessLookupError:
                pass
            except (OSError, ValueError, KeyError):
                continue
            for ns in reversed(record["namespaces"]):
                r = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
                for pid in r.stdout.split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
                if subprocess.run(["ip", "netns", "del", ns], capture_output=True).returncode == 0:
                    swept.append(ns)
            entry.unlink(missing_ok=True)
        return swept

    def up_network(self) -> None:
        self._add_ns(self.lan)
        self._ip("-n", self.lan, "link", "add", "br0", "type", "bridge")
        self._ip("-n", self.lan, "addr", "add", f"{SUBNET}.1/24", "dev", "br0")
        self._ip("-n", self.lan, "addr", "add", f"{METADATA_IP}/32", "dev", "br0")
        self._ip("-n", self.lan, "link", "set", "br0", "up")
        for vm in self.vms:
            self._add_ns(vm.ns)
            port = f"v-{vm.short}"
            self._ip("link", "add", port, "netns", self.lan, "type", "veth", "peer", "name", "eth0", "netns", vm.ns)
            self._ip("-n", self.lan, "link", "set", port, "master", "br0")
            self._ip("-n", self.lan, "link", "set", port, "up")
            self._ip("-n", vm.ns, "addr", "add", f"{vm.ip}/24", "dev", "eth0")
            self._ip("-n", vm.ns, "link", "set", "eth0", "up")
            # GCP: the metadata server is a link-local address reached through the VM's NIC.
            self._ip("-n", vm.ns, "route", "add", f"{METADATA_IP}/32", "dev", "eth0")

    def start_emulator(self, timeout: float = 15.0) -> None:
        config = {
            "listen": {"host": METADATA_IP, "port": 80},
            "project": PROJECT,
            "instances": [
                {"name": vm.name, "zone": ZONE, "ip": vm.ip, "external_ip": vm.external_ip,
                 "service_account": SERVICE_ACCOUNT, "attributes": vm.attributes,
                 # google_compute_instance_iam_member: the nodes' account may read the bootstrap's
                 "guest_attribute_readers": [SERVICE_ACCOUNT] if vm.role == "bootstrap" else []}
                for vm in self.vms
            ],
        }
        self.state_dir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "metadata-config.json"
        config_path.write_text(json.dumps(config, indent=2))
        log = (self.workdir / "metadata-emulator.log").open("ab")
        self.emulator = subprocess.Popen(
            ["ip", "netns", "exec", self.lan, sys.executable, str(EMULATOR), str(config_path), str(self.state_dir)],
            stdout=log, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        deadline = time.monotonic() + timeout
        while not (self.state_dir / "ready").exists():
            if self.emulator.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"metadata emulator did not start; see {self.workdir / 'metadata-emulator.log'}")
            time.sleep(0.1)

    def up(self) -> None:
        self.sweep_stale()
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.define_vms()
        self.render()
        self.up_network()
        self.start_emulator()

    # ------------------------------------------------------------------------------- actions
    def script_env(self, vm: VM) -> dict[str, str]:
        env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": str(vm.root / "root"),
            "LANG": "C.UTF-8",
            "SHOAL_METADATA_URL": f"http://{METADATA_IP}/computeMetadata/v1",
            "SHOAL_COMPUTE_API_URL": f"http://{METADATA_IP}/compute/v1",
            "SHOAL_ROOT": str(vm.root),
            "SHOAL_INSTALL_MODE": "local",
            "SHOAL_LOCAL_VENV": str(self.venv),
            "SHOAL_NO_SYSTEMD": "1",
            "SHOAL_BOOTSTRAP_WAIT": "120",
            "SHOAL_READY_WAIT": "120",
            # Local mode runs the working tree's code: the venv's editable install may predate a
            # package added since (its import map is fixed at install time).
            "PYTHONPATH": str(REPO),
        }
        for key in ("SHOAL_IPFS_BIN", "GOPATH"):
            if os.environ.get(key):
                env[key] = os.environ[key]
        return env

    def boot(self, vm: VM) -> subprocess.Popen:
        """Run the startup script on ``vm``, as GCP does at every boot (in the background)."""
        assert self.script is not None
        (vm.root / "root").mkdir(parents=True, exist_ok=True)
        log = vm.startup_log.open("ab")
        vm.script_proc = subprocess.Popen(["ip", "netns", "exec", vm.ns, "bash", str(self.script)],
                                          env=self.script_env(vm), stdout=log, stderr=log,
                                          stdin=subprocess.DEVNULL, start_new_session=True)
        log.close()
        return vm.script_proc

    def wait_booted(self, vms: list[VM], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for vm in vms:
            assert vm.script_proc is not None
            try:
                rc = vm.script_proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"startup script on {vm.name} still running after {timeout:g} s:\n"
                                     + self.tail(vm.startup_log)) from None
            if rc != 0:
                raise AssertionError(f"startup script on {vm.name} failed ({rc}):\n" + self.tail(vm.startup_log)
                                     + "\n--- shoal.log:\n" + self.tail(vm.root / "var/log/shoal/shoal.log"))

    def power_off(self, vm: VM) -> None:
        """Kill every process in the VM's namespace, like pulling the plug."""
        for pid in self.pids(vm.ns):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while self.pids(vm.ns) and time.monotonic() < deadline:
            time.sleep(0.1)
        # /run is a tmpfs on a real VM: it does not survive a reboot
        shutil.rmtree(vm.root / "run", ignore_errors=True)

    def pids(self, ns: str) -> list[int]:
        r = self._ip("netns", "pids", ns, check=False)
        return [int(p) for p in r.stdout.split()] if r.returncode == 0 else []

    def run_in(self, ns: str, cmd: list[str], timeout: float, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", ns, *cmd], capture_output=True, text=True,
                              timeout=timeout, env=env)

    def guest_attributes(self) -> dict[str, dict[str, str]]:
        return json.loads((self.state_dir / "guest-attributes.json").read_text())

    def api(self) -> str:
        """The bootstrap's API URL, as the module's api_url output gives it (at its internal IP here)."""
        return f"https://{self.vms[0].ip}:{API_PORT}"

    def api_cert(self) -> Path:
        """The certificate the bootstrap published (the module's api_cert output), saved to a file."""
        path = self.workdir / "api-cert.pem"
        path.write_text(self.guest_attributes()[self.vms[0].name]["shoal/api-cert"])
        return path

    @staticmethod
    def tail(path: Path, lines: int = 40) -> str:
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return f"({path} does not exist)"

    # ------------------------------------------------------------------------------ teardown
    def down(self) -> None:
        """Stop every process and delete every namespace this cluster made, whatever state it is in."""
        for vm in self.vms:
            if vm.script_proc is not None and vm.script_proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(vm.script_proc.pid, signal.SIGKILL)
        for ns in self.namespaces:
            for pid in self.pids(ns):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if self.emulator is not None and self.emulator.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.emulator.pid, signal.SIGKILL)
        for proc in [self.emulator, *(vm.script_proc for vm in self.vms)]:
            if proc is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=5)
        deadline = time.monotonic() + 10
        for ns in reversed(self.namespaces):
            while self.pids(ns) and time.monotonic() < deadline:
                time.sleep(0.1)
            self._ip("netns", "del", ns, check=False)
        self.namespaces.clear()
        (REGISTRY / self.prefix).unlink(missing_ok=True)


def demo() -> int:
    ok, why = netns_permitted()
    if not ok:
        print(why, file=sys.stderr)
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="shoal-tf-harness-"))
    env = {**os.environ, "SHOAL_HOME": str(workdir / "client"), "NO_COLOR": "1"}
    key = subprocess.run([str(REPO / ".venv" / "bin" / "shoal"), "key", "show"], env=env, check=True,
                         capture_output=True, text=True).stdout.strip()
    cluster = Cluster(workdir, REPO / ".venv", client_keys=[key])
    try:
        cluster.up()
        for vm in cluster.vms:
            cluster.boot(vm)
        cluster.wait_booted(cluster.vms, 150)
        print(json.dumps(cluster.guest_attributes(), indent=2))
        r = cluster.run_in(cluster.lan, [str(cluster.venv / "bin" / "shoal"), "--api", cluster.api(),
                                         "--ca-cert", str(cluster.api_cert()), "run", "noop",
                                         "--concurrency", "3", "--json"], timeout=90, env=env)
        print(r.stdout[-4000:], r.stderr[-2000:])
        return r.returncode
    finally:
        cluster.down()
        print(f"logs kept in {workdir}")


if __name__ == "__main__":
    sys.exit(demo())

"""One Kubo daemon per devstack node: own repo, own loopback ports, connected only to each other.

``KuboCluster(n, base_dir)`` puts daemon ``i``'s repo (``IPFS_PATH``) at ``base_dir/node-<i>/ipfs``
(next to the Shoal node's own data dir when ``base_dir`` is the devstack's) and its log at
``base_dir/node-<i>/kubo.log``. Nothing dials out of the machine: the repo starts from
``ipfs init --profile=test`` and then

* API, gateway and swarm listen on 127.0.0.1 only, on ports picked free (or ``base_port + k*100 + i``);
* no bootstrap peers, no MDNS, no AutoConf/AutoTLS/NAT port mapping, no relay, no AutoNAT service;
* ``Routing.Type = "none"`` and ``Provide.Enabled = false``: blocks move by bitswap between
  connected peers only, which is all a devstack needs;
* telemetry off (``IPFS_TELEMETRY=off`` and the plugin's config).

Daemons are connected pairwise with ``swarm/connect`` and also list each other in ``Peering.Peers``,
so a restarted daemon reconnects by itself. Readiness is the RPC ``id`` answering (polled, with a
bounded deadline), never a sleep. Stopping sends SIGINT and waits, then kills.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import trio

from jobs.errors import ShoalError
from storage import KuboClient, StorageError

__all__ = ["KuboCluster", "KuboDaemon", "ipfs_binary"]

READY_TIMEOUT = 60.0
STOP_TIMEOUT = 10.0
POLL_INTERVAL = 0.1
_REPO_ROOT = Path(__file__).resolve().parent.parent


def ipfs_binary() -> str | None:
    """The ``ipfs`` to run: ``$SHOAL_IPFS_BIN``, PATH, ``.venv/bin``, ``$GOPATH/bin`` (where install-kubo puts it)."""
    candidates = [os.environ.get("SHOAL_IPFS_BIN"), shutil.which("ipfs"), str(_REPO_ROOT / ".venv" / "bin" / "ipfs")]
    gopath = os.environ.get("GOPATH") or str(Path.home() / "go")
    candidates += [str(Path(p) / "bin" / "ipfs") for p in gopath.split(os.pathsep) if p]
    for candidate in candidates:
        if candidate and os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    return None


class KuboError(ShoalError):
    """A devstack's Kubo daemon could not be set up or started; says why, and where its log is."""


@dataclass
class KuboDaemon:
    index: int
    repo: Path
    api_port: int
    gateway_port: int
    swarm_port: int
    peer_id: str = ""
    process: trio.Process | None = None

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    @property
    def api_multiaddr(self) -> str:
        return f"/ip4/127.0.0.1/tcp/{self.api_port}"

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.gateway_port}"

    @property
    def multiaddrs(self) -> list[str]:
        """Swarm addresses other peers dial, each ending in ``/p2p/<peer id>``."""
        return [f"/ip4/127.0.0.1/tcp/{self.swarm_port}/p2p/{self.peer_id}"]

    @property
    def log_path(self) -> Path:
        return self.repo.parent / "kubo.log"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.returncode is None

    def client(self) -> KuboClient:
        """A new RPC client for this daemon (close it, or use ``async with``)."""
        return KuboClient(self.rpc_url)


def _free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _why(daemon: KuboDaemon) -> str:
    """What a daemon that exited at start said of a port it could not take (another process took one of the
    stack's ports after it was found free: the kernel hands ports of its ephemeral range to outgoing
    connections)."""
    try:
        text = daemon.log_path.read_text(errors="replace")[-4000:]
    except OSError:
        return ""
    if "address already in use" not in text:
        return ""
    return ": one of its ports is taken by another process; choose others with --base-port"


class KuboCluster:
    """``n`` Kubo daemons on loopback, connected to each other. Use ``async with``.

    Args:
        n: number of daemons.
        base_dir: daemon ``i`` lives in ``base_dir/node-<i>`` (repo ``ipfs/``, log ``kubo.log``).
            An existing repo is reused (its content survives restarts of the cluster).
        base_port: fixed ports (API ``base_port + i``, gateway ``+100``, swarm ``+200``), so a restarted
            daemon comes back at the same address; ``None`` picks free ports.
        ipfs_bin: the ``ipfs`` executable; default ``ipfs_binary()``.
        ready_timeout: seconds one daemon may take to answer its RPC after being started.
    """

    def __init__(self, n: int, base_dir: Path, *, base_port: int | None = None, ipfs_bin: str | None = None,
                 ready_timeout: float = READY_TIMEOUT) -> None:
        if n < 1:
            raise ValueError("a Kubo cluster needs at least one daemon")
        binary = ipfs_bin or ipfs_binary()
        if binary is None:
            raise KuboError("Kubo's `ipfs` was not found; run scripts/install-kubo (or set SHOAL_IPFS_BIN)")
        self.ipfs_bin = binary
        self.base_dir = Path(base_dir)
        self.ready_timeout = ready_timeout
        ports = ([base_port + k * 100 + i for k in range(3) for i in range(n)] if base_port is not None
                 else _free_ports(3 * n))
        self.daemons = [
            KuboDaemon(i, self.base_dir / f"node-{i}" / "ipfs", ports[i], ports[n + i], ports[2 * n + i])
            for i in range(n)
        ]

    @property
    def rpc_urls(self) -> list[str]:
        return [d.rpc_url for d in self.daemons]

    def _env(self, daemon: KuboDaemon) -> dict[str, str]:
        return {**os.environ, "IPFS_PATH": str(daemon.repo), "IPFS_TELEMETRY": "off"}

    # -- repos -------------------------------------------------------------------------------------

    async def _init_repo(self, daemon: KuboDaemon) -> None:
        config_path = daemon.repo / "config"
        if not config_path.exists():
            daemon.repo.parent.mkdir(parents=True, exist_ok=True)
            result = await trio.run_process(
                [self.ipfs_bin, "init", "--profile=test", "--empty-repo"], env=self._env(daemon),
                capture_stdout=True, capture_stderr=True, check=False)
            if result.returncode != 0:
                raise KuboError(f"ipfs init failed for {daemon.repo}: {result.stderr.decode(errors='replace')}")
        config = json.loads(config_path.read_text())
        daemon.peer_id = config["Identity"]["PeerID"]

    def _configure(self, daemon: KuboDaemon) -> None:
        config_path = daemon.repo / "config"
        config = json.loads(config_path.read_text())
        config["Addresses"].update({
            "API": [daemon.api_multiaddr],
            "Gateway": [f"/ip4/127.0.0.1/tcp/{daemon.gateway_port}"],
            "Swarm": [f"/ip4/127.0.0.1/tcp/{daemon.swarm_port}"],
            "Announce": [], "AppendAnnounce": [], "NoAnnounce": [],
        })
        config["Bootstrap"] = []
        config.setdefault("Discovery", {}).setdefault("MDNS", {})["Enabled"] = False
        config.setdefault("AutoConf", {})["Enabled"] = False
        config.setdefault("AutoTLS", {})["Enabled"] = False
        config.setdefault("AutoNAT", {})["ServiceMode"] = "disabled"
        config.setdefault("Routing", {}).update({"Type": "none", "DelegatedRouters": []})
        config.setdefault("Ipns", {})["DelegatedPublishers"] = []
        config.setdefault("DNS", {})["Resolvers"] = {}
        config.setdefault("Provide", {})["Enabled"] = False
        config.setdefault("HTTPRetrieval", {})["Enabled"] = False
        swarm = config.setdefault("Swarm", {})
        swarm["DisableNatPortMap"] = True
        swarm.setdefault("RelayClient", {})["Enabled"] = False
        swarm.setdefault("RelayService", {})["Enabled"] = False
        swarm.setdefault("Transports", {}).setdefault("Network", {})["Relay"] = False
        plugins = config.setdefault("Plugins", {}).setdefault("Plugins", None) or {}
        plugins["telemetry"] = {"Config": {"Mode": "off"}}
        config["Plugins"]["Plugins"] = plugins
        config.setdefault("Peering", {})["Peers"] = [
            {"ID": other.peer_id, "Addrs": [f"/ip4/127.0.0.1/tcp/{other.swarm_port}"]}
            for other in self.daemons if other is not daemon and other.peer_id
        ]
        config_path.write_text(json.dumps(config, indent=2))

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        async with trio.open_nursery() as nursery:
            for daemon in self.daemons:
                nursery.start_soon(self._init_repo, daemon)
        for daemon in self.daemons:
            self._configure(daemon)
        async with trio.open_nursery() as nursery:
            for daemon in self.daemons:
                nursery.start_soon(self._start_daemon, daemon)
        await self.connect_all()

    async def _start_daemon(self, daemon: KuboDaemon) -> None:
        log = open(daemon.log_path, "ab")  # noqa: SIM115 - owned by the child process
        try:
            daemon.process = await trio.lowlevel.open_process(
                [self.ipfs_bin, "daemon", "--migrate=false"], env=self._env(daemon),
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            log.close()
        async with daemon.client() as client:
            client.call_timeout = 2.0
            with trio.move_on_after(self.ready_timeout) as waiting:
                while True:
                    if daemon.process.returncode is not None:
                        raise KuboError(f"Kubo daemon {daemon.index} exited during start "
                                        f"(code {daemon.process.returncode}){_why(daemon)}; see {daemon.log_path}")
                    try:
                        ident = await client.id()
                    except StorageError:
                        await trio.sleep(POLL_INTERVAL)
                        continue
                    if ident.get("ID") == daemon.peer_id:
                        break
                    raise KuboError(f"port {daemon.api_port} answers as another Kubo ({ident.get('ID')}); "
                                    f"daemon {daemon.index} could not take it")
        if waiting.cancelled_caught:
            await self._stop_daemon(daemon)
            raise KuboError(f"Kubo daemon {daemon.index} not ready after {self.ready_timeout:g} s; "
                            f"see {daemon.log_path}")

    async def connect_all(self) -> None:
        """Connect every pair of running daemons (idempotent)."""
        running = [d for d in self.daemons if d.running]
        for i, daemon in enumerate(running):
            async with daemon.client() as client:
                for other in running[i + 1:]:
                    await client.swarm_connect(other.multiaddrs[0])

    async def _stop_daemon(self, daemon: KuboDaemon) -> None:
        with trio.CancelScope(shield=True):
            process = daemon.process
            if process is None:
                return
            if process.returncode is None:
                process.send_signal(signal.SIGINT)
                with trio.move_on_after(STOP_TIMEOUT):
                    await process.wait()
                if process.returncode is None:
                    process.kill()
            await process.wait()

    async def stop_daemon(self, index: int) -> None:
        await self._stop_daemon(self.daemons[index])

    async def restart(self, index: int) -> None:
        """Stop daemon ``index`` (if running) and start it again with the same repo and ports."""
        daemon = self.daemons[index]
        await self._stop_daemon(daemon)
        await self._start_daemon(daemon)
        await self.connect_all()

    async def stop(self) -> None:
        with trio.CancelScope(shield=True):
            async with trio.open_nursery() as nursery:
                for daemon in self.daemons:
                    nursery.start_soon(self._stop_daemon, daemon)

    async def __aenter__(self) -> KuboCluster:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

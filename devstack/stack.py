"""Start N node processes on loopback, each with its own data dir and fixed ports, all peered.

Ports are fixed per node index (API ``base_port + i``, libp2p ``base_port + 100 + i``) so a node
restarted by a test or the chaos benchmark comes back at the same address. Readiness is the
node's own ``READY`` line on stdout, never a sleep.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import trio

from devstack.kubo import KuboCluster, ipfs_binary
from jobs.errors import ShoalError
from node.config import shoal_home

READY_TIMEOUT = 60.0
# Where a devstack keeps the Python engine's memory snapshot for its nodes: the same bytes on every node of
# every stack on this machine (the file is named after the runner and Node.js versions it was made by).
SNAPSHOTS = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shoal" / "pyodide"
STOP_TIMEOUT = 5.0


def state_file() -> Path:
    return shoal_home() / "devstack.json"


class DevstackError(ShoalError):
    """A devstack cannot start here (another one runs, a port is taken); says what to do instead."""


def running_stack() -> dict | None:
    """The state of a devstack whose nodes still run (by the state file's pids), or None."""
    try:
        state = json.loads(state_file().read_text())
        pids = [n["pid"] for n in state["nodes"] if n.get("pid")]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return state if any(_alive(pid) for pid in pids) else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def taken_port(ports: list[int]) -> int | None:
    """The first of ``ports`` that something on 127.0.0.1 already listens on, or None."""
    for port in ports:
        with socket.socket() as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                return port
    return None


@dataclass
class NodeProcess:
    index: int
    data_dir: Path
    api_port: int
    p2p_port: int
    args: list[str]
    process: trio.Process | None = None
    peer_id: str = ""
    addrs: list[str] = field(default_factory=list)
    api: str = ""

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None


class Devstack:
    def __init__(self, nodes: int = 3, *, noop: bool = False, base_dir: Path | None = None, base_port: int = 8700,
                 extra_args: list[str] | None = None, node_args: dict[int, list[str]] | None = None,
                 bad_actors: int = 0, kubo: bool = False, write_state: bool = True,
                 network_key: bool = False, authorized_keys: list[str] | None = None,
                 labels: dict[int, dict[str, str]] | None = None) -> None:
        """``network_key``: a private network, one key (``base_dir/network.key``) for all nodes, as
        ``shoal devstack`` runs it; off by default here, so test peers join without it. ``labels``:
        node index → that node's labels (``shoal serve --label``)."""
        if nodes < 1:
            raise ValueError("a devstack needs at least one node")
        if not 0 <= bad_actors < nodes:
            raise ValueError("bad actors must be fewer than the nodes (node 0 stays honest)")
        node_args = dict(node_args or {})
        for i in range(nodes - bad_actors, nodes):  # the last nodes lie about their results
            node_args[i] = [*node_args.get(i, []), "--bad-actor"]
        for i, node_labels in (labels or {}).items():
            if not 0 <= i < nodes:
                raise ValueError(f"labels for node {i}, but the nodes are 0 to {nodes - 1}")
            flags = [arg for key, value in node_labels.items() for arg in ("--label", f"{key}={value}")]
            node_args[i] = [*node_args.get(i, []), *flags]
        self.base_dir = base_dir or shoal_home() / "devstack"
        self.noop = noop
        self.base_port = base_port
        self.kubo: KuboCluster | None = None
        if kubo:  # one Kubo per node, ports after the nodes' (API +200.., gateway +300.., swarm +400..)
            self.kubo = KuboCluster(nodes, self.base_dir / "kubo", base_port=base_port + 200)
        self.write_state = write_state
        self.network_key = self.base_dir / "network.key" if network_key else None
        # Client keys (as `shoal key show` prints them) every node lets in; None: the nodes take any key
        # (their APIs are on loopback). Written to keys_file at start.
        self.authorized_keys = authorized_keys
        self.keys_file = self.base_dir / "authorized_keys"
        self.nodes = [
            NodeProcess(i, self.base_dir / f"node-{i}", base_port + i, base_port + 100 + i,
                        [*(extra_args or []), *(node_args or {}).get(i, [])])
            for i in range(nodes)
        ]

    def _command(self, node: NodeProcess) -> list[str]:
        cmd = [sys.executable, "-m", "cli.main", "serve", "--data-dir", str(node.data_dir),
               "--listen", f"/ip4/127.0.0.1/tcp/{node.p2p_port}", "--api-port", str(node.api_port)]
        earlier = [n for n in self.nodes[: node.index] if n.addrs]
        # a full mesh for small stacks; beyond that the first node and two neighbours (gossip relays the rest)
        peers = earlier if len(earlier) <= 4 else [earlier[0], *earlier[-2:]]
        for p in peers:
            cmd += ["--peer", p.addrs[0]]
        if self.noop:
            cmd.append("--noop")
        cmd += ["--ipfs-api", self.kubo.rpc_urls[node.index] if self.kubo else "none", "--allow-private-urls"]
        if self.network_key is not None:
            cmd += ["--network-key", str(self.network_key)]
        if self.authorized_keys is not None:
            cmd += ["--authorized-keys", str(self.keys_file)]
        return cmd + node.args

    async def start_node(self, node: NodeProcess) -> None:
        self._ensure_network_key()
        node.data_dir.mkdir(parents=True, exist_ok=True)
        log = open(node.data_dir / "node.log", "ab")  # noqa: SIM115 - owned by the child process
        try:
            node.process = await trio.lowlevel.open_process(
                self._command(node), stdout=subprocess.PIPE, stderr=log, start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()
        buffer = b""
        assert node.process.stdout is not None
        try:
            with trio.fail_after(READY_TIMEOUT):
                while b"READY " not in buffer:
                    chunk = await node.process.stdout.receive_some(65536)
                    if not chunk:
                        raise RuntimeError(f"node {node.index} exited during start; see {node.data_dir / 'node.log'}")
                    buffer += chunk
        except trio.TooSlowError:
            raise RuntimeError(f"node {node.index} not ready after {READY_TIMEOUT:g} s; "
                               f"see {node.data_dir / 'node.log'}") from None
        line = buffer[buffer.index(b"READY ") + 6:].split(b"\n", 1)[0]
        ready = json.loads(line)
        node.peer_id, node.addrs, node.api = ready["peer_id"], ready["addrs"], ready["api"]

    def _ensure_network_key(self) -> None:
        if self.network_key is None or self.network_key.exists():
            return  # kept across restarts of the same stack
        from node.net.admission import new_network_key

        self.network_key.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.network_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(new_network_key())

    async def start(self) -> None:
        if self.authorized_keys is not None:
            self.keys_file.parent.mkdir(parents=True, exist_ok=True)
            self.keys_file.write_text("# written by shoal devstack: the client keys its nodes let in\n"
                                      + "".join(f"{key}\n" for key in self.authorized_keys))
        if self.kubo is not None:
            await self.kubo.start()
        await self._share_pyodide_snapshot()
        for node in self.nodes:
            await self.start_node(node)
        if self.write_state:
            self._write_state()

    async def _share_pyodide_snapshot(self) -> None:
        """Give every node the Python engine's memory snapshot, built once: each would build the same bytes as
        it starts (4 s of a core each), and jobs sent at once would wait for it."""
        from executors import ExecutorError
        from executors.pyodide import PyodideExecutor

        if self.noop:
            return
        try:
            snapshot = await PyodideExecutor(SNAPSHOTS, pool_size=0).snapshot()
        except (ExecutorError, OSError):
            return  # each node builds its own, or says why it cannot
        for node in (n for n in self.nodes if "--no-compute" not in n.args):
            target = node.data_dir / "cache" / "pyodide" / snapshot.name
            if target.exists():
                continue
            tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(snapshot, tmp)
                except OSError:  # another file system
                    shutil.copyfile(snapshot, tmp)
                os.replace(tmp, target)  # whole or not at all: a node trusts the file it finds
            except OSError:
                tmp.unlink(missing_ok=True)  # (another checkout replaced the shared file): the node builds its own

    def kill(self, index: int, sig: int = signal.SIGKILL) -> None:
        node = self.nodes[index]
        if node.process is not None and node.process.returncode is None:
            os.kill(node.process.pid, sig)

    async def restart(self, index: int) -> None:
        node = self.nodes[index]
        if node.process is not None:
            if node.process.returncode is None:
                self.kill(index)
            await node.process.wait()
        await self.start_node(node)

    async def stop(self) -> None:
        with trio.CancelScope(shield=True):
            for node in self.nodes:
                if node.process is not None and node.process.returncode is None:
                    node.process.send_signal(signal.SIGINT)
            for node in self.nodes:
                if node.process is None:
                    continue
                with trio.move_on_after(STOP_TIMEOUT):
                    await node.process.wait()
                if node.process.returncode is None:
                    node.process.kill()
                    await node.process.wait()
            if self.kubo is not None:
                await self.kubo.stop()
            if self.write_state and self._owns_state_file():
                state_file().unlink()

    def _owns_state_file(self) -> bool:
        """Whether the state file is this stack's (another stack may have written it since)."""
        try:
            return json.loads(state_file().read_text()).get("base_dir") == str(self.base_dir)
        except (OSError, ValueError, AttributeError):
            return False

    def _write_state(self) -> None:
        path = state_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        kubo = [d.process.pid for d in self.kubo.daemons if d.process is not None] if self.kubo else []
        state = {"base_dir": str(self.base_dir), "noop": self.noop, "pid": os.getpid(), "kubo_pids": kubo, "nodes": [
            {"index": n.index, "api": n.api, "peer_id": n.peer_id, "addrs": n.addrs, "data_dir": str(n.data_dir),
             "pid": n.pid, "ipfs_api": self.kubo.rpc_urls[n.index] if self.kubo else None} for n in self.nodes]}
        path.write_text(json.dumps(state, indent=2))

    async def __aenter__(self) -> Devstack:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


_OWN_FILE = re.compile(r"^(node-\d+|kubo|network\.key|authorized_keys)$")  # what a devstack writes in its folder


def not_a_devstacks(base_dir: Path) -> str | None:
    """The name of something in ``base_dir`` that a devstack did not write there (None: nothing)."""
    if not base_dir.is_dir():
        return None
    return next((repr(entry.name) for entry in sorted(base_dir.iterdir()) if not _OWN_FILE.match(entry.name)), None)


async def _say_if_it_dies(node: NodeProcess) -> None:
    """Wait on a node's process: a node that dies (a crash, kill -9, the OOM killer) is said to have, at once,
    rather than found out from jobs that wait. Cancelled when the stack stops."""
    assert node.process is not None
    status = await node.process.wait()
    how = f"killed by {signal.Signals(-status).name}" if status < 0 else f"exited with status {status}"
    print(f"devstack: node {node.index} {how}; the others run on. Its log: {node.data_dir / 'node.log'}",
          file=sys.stderr, flush=True)


def main(nodes: int = 3, noop: bool = False, base_dir: Path | None = None, base_port: int | None = None,
         fresh: bool = True, bad_actors: int = 0, kubo: bool | None = None,
         extra_args: list[str] | None = None, labels: dict[int, dict[str, str]] | None = None) -> None:
    """``shoal devstack``: start, print how to reach the nodes, run until Ctrl-C, stop everything.

    ``kubo=None``: one Kubo per node when Kubo is installed, else none (results stay in each node).
    ``extra_args``: added to every node's ``shoal serve`` (e.g. ``--ttl 60``).
    The nodes let in the local client key only (``$SHOAL_HOME/client.key``, created if needed); add
    others to the authorized-keys file the stack writes (the nodes re-read it when it changes).
    """
    from jobs.selector import format_labels
    from shoal._auth import ClientKey

    if kubo is None:
        kubo = ipfs_binary() is not None
    stack = Devstack(nodes, noop=noop, base_dir=base_dir, base_port=base_port or 8700, bad_actors=bad_actors,
                     kubo=kubo, extra_args=extra_args, labels=labels, network_key=True,  # one private network
                     authorized_keys=[ClientKey.load_or_create().public_key_b64])
    if (running := running_stack()) is not None:
        api = running["nodes"][0].get("api", "?")
        if running.get("pid") and not _alive(running["pid"]):  # killed (kill -9): its processes outlived it
            left = [n["pid"] for n in running["nodes"] if n.get("pid") and _alive(n["pid"])]
            left += [pid for pid in running.get("kubo_pids", []) if _alive(pid)]
            raise DevstackError(f"the devstack that ran here was killed and left its nodes running (node 0 at {api}): "
                                f"stop them with: kill {' '.join(map(str, left))}")
        raise DevstackError(f"a devstack already runs here (node 0 at {api}, its files under {running['base_dir']}): "
                            f"the CLI finds one stack per SHOAL_HOME ({shoal_home()}); stop it with Ctrl-C where "
                            "it runs, or start this one with another SHOAL_HOME")
    ports = [n.api_port for n in stack.nodes] + [n.p2p_port for n in stack.nodes]
    if (port := taken_port(ports)) is not None:
        raise DevstackError(f"port {port} on 127.0.0.1 is taken (the stack uses {min(ports)}-{max(ports)}); "
                            "choose others with --base-port")
    if stack.base_dir.exists() and not stack.base_dir.is_dir():
        raise DevstackError(f"{stack.base_dir} is a file, not a folder: choose a folder with --base-dir")
    if (foreign := not_a_devstacks(stack.base_dir)) is not None:
        raise DevstackError(f"{stack.base_dir} holds {foreign}, which is not a devstack's: the devstack keeps its "
                            "nodes' files in a folder of its own and deletes them when it starts afresh; choose an "
                            "empty or new folder with --base-dir")
    if fresh and stack.base_dir.exists():
        shutil.rmtree(stack.base_dir)

    async def _run() -> None:
        async with stack:
            print(f"Shoal devstack: {nodes} node(s){' (noop executors)' if noop else ''}"
                  f"{', one Kubo each' if stack.kubo else ', no Kubo (results kept by each node)'}")
            for n in stack.nodes:
                bad = "  (bad actor)" if "--bad-actor" in n.args else ""
                shown = f"  labels {format_labels(labels[n.index])}" if labels and labels.get(n.index) else ""
                ipfs = f"  kubo-api {stack.kubo.rpc_urls[n.index]}" if stack.kubo else ""
                print(f"  node {n.index}  api {n.api}  peer {n.peer_id}  log {n.data_dir / 'node.log'}"
                      f"{ipfs}{shown}{bad}")
            print(f"Network key: {stack.network_key} (another node joins with --network-key and --peer)")
            print(f"State file: {state_file()} (the CLI finds the stack through it)")
            print(f"Authorized keys: {stack.keys_file} (your client key; add others' from 'shoal key show')")
            print(f"Try: shoal run noop    or    SHOAL_API={stack.nodes[0].api} shoal list")
            print("Ctrl-C stops every node.", flush=True)
            async with trio.open_nursery() as nursery:
                for n in stack.nodes:
                    nursery.start_soon(_say_if_it_dies, n)

    try:
        trio.run(_run)
    except* KeyboardInterrupt:  # in a group when it reaches the nursery of the nodes' watchers
        print("devstack stopped", file=sys.stderr)

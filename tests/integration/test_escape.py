"""Escape attempts from python jobs, each run as a real job on a real one-node devstack (with Kubo).

Every test asserts what the job learnt or changed on the host — nothing — not merely that the node lived.
The host holds a canary: a world-readable file with a random token in it, and the same token in the node's
environment. No job output may contain the token, and no file a job tried to write may appear on the host.

Pyodide's ``js`` and ``pyodide_js`` modules are refused to job code (an ImportError), but that is only the
last layer: most attacks here get the modules anyway, through Pyodide's import finder, and then try what
Node.js can do, so that the OS sandbox (bubblewrap) and Node's permission model are what is tested.
"""

from __future__ import annotations

import os
import secrets
import textwrap
from pathlib import Path

import pytest
import trio

from devstack import Devstack
from devstack.kubo import ipfs_binary
from executors.pyodide import PyodideExecutor
from shoal import Client
from tests.integration.rogue import free_base_port

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(ipfs_binary() is None, reason="Kubo is not installed (scripts/install-kubo)"),
    pytest.mark.skipif(not PyodideExecutor(Path("/nonexistent")).is_installed(),
                       reason="the python engine cannot run here (Pyodide or bubblewrap missing)"),
]

# the node's per-job disk limit (--limit-job-disk): what a job stating no disk may write; more than the
# entries a job's outputs may hold there take (512 bytes each), so that limit is met first
JOB_DISK = "32MiB"
OUTPUT_ENTRIES = 5_000  # --max-output-entries (50,000 by default, tested in test_engines_devstack)
TOKEN = secrets.token_hex(16)

# Gets Pyodide's JavaScript bridge the way an attacker would, past the ImportError of `import js`.
BYPASS = textwrap.dedent("""
    import sys, importlib.util
    def _module(name):
        for finder in sys.meta_path:
            spec = getattr(finder, "find_spec", lambda *a: None)(name, None)
            if spec is not None:
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                return module
        raise RuntimeError("no finder for " + name)
    js = _module("js")
    pyodide_js = _module("pyodide_js")
    def attempt(label, action):
        try:
            print(label, "->", repr(action())[:2000])
        except BaseException as e:
            print(label, "!!", type(e).__name__, str(e)[:500])
    def mount_host_root(at="/host"):
        pyodide_js.FS.mkdirTree(at)
        root = js.Object.fromEntries([["root", "/"]])
        pyodide_js.FS.mount(pyodide_js.FS.filesystems.NODEFS, root, at)
""")


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("escape")
    canary = home / "canary.txt"
    canary.write_text(TOKEN)
    canary.chmod(0o644)
    os.environ["SHOAL_HOME"] = str(home / "home")
    os.environ["SHOAL_ESCAPE_CANARY"] = TOKEN  # the nodes inherit it
    devstack = Devstack(1, base_dir=home / "stack", base_port=free_base_port(1), kubo=True, write_state=False,
                        node_args={0: ["--limit-job-disk", JOB_DISK, "--max-output-entries", str(OUTPUT_ENTRIES)]})
    trio.run(devstack.start)
    devstack.canary = canary
    devstack.home = home
    try:
        yield devstack
    finally:
        trio.run(devstack.stop)
        os.environ.pop("SHOAL_ESCAPE_CANARY", None)


def run_python(stack: Devstack, code: str, **spec: object) -> tuple[str, str, str]:
    """Run ``code`` as a python job; returns (state, stdout, stderr)."""
    with Client(stack.nodes[0].api) as client:
        job = client.run({"engine": {"name": "python", "code": code}, "cache": False, **spec}, timeout=180)
        return job.job.state.value, client.logs(job.job.id), client.logs(job.job.id, "stderr")


def assert_nothing_learnt(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text


def add_to_kubo(stack: Devstack, content: bytes | Path) -> str:
    """``content`` (bytes, or a directory) added to the node's Kubo; its CID."""
    from storage import KuboClient

    async def add() -> str:
        async with KuboClient(stack.kubo.rpc_urls[0]) as kubo:
            return await (kubo.add_path(content) if isinstance(content, Path) else kubo.add_bytes(content))

    return trio.run(add)


def host_paths(stack: Devstack) -> dict[str, str]:
    node_dir = stack.nodes[0].data_dir
    return {"canary": str(stack.canary), "node_dir": str(node_dir)}


def test_plain_import_of_js_is_refused(stack):
    state, _out, err = run_python(stack, "import js\nprint(js.process.pid)")
    assert state == "failed"
    assert "ImportError: module 'js' is not available to Shoal jobs" in err
    state, _out, err = run_python(stack, "import pyodide_js")
    assert "ImportError: module 'pyodide_js' is not available to Shoal jobs" in err


def test_host_file_by_absolute_path(stack):
    code = f"print(open({str(stack.canary)!r}).read())"
    state, out, err = run_python(stack, code)
    assert state == "failed"
    assert "FileNotFoundError" in err
    assert_nothing_learnt(out, err)


def test_nodefs_mount_of_host_root_shows_nothing_of_the_host(stack):
    paths = host_paths(stack)
    code = BYPASS + textwrap.dedent(f"""
        import os
        attempt("mount", mount_host_root)
        attempt("listing", lambda: os.listdir("/host"))
        attempt("canary", lambda: open("/host" + {paths['canary']!r}).read())
        attempt("node dir", lambda: os.listdir("/host" + {paths['node_dir']!r}))
        attempt("etc", lambda: open("/host/etc/passwd").read())
        attempt("environ", lambda: open("/host/proc/self/environ").read())
        attempt("parent environ", lambda: open("/host/proc/1/environ").read())
    """)
    _state, out, err = run_python(stack, code)
    assert_nothing_learnt(out, err)
    assert "canary -> ''" in out or "canary !!" in out  # an error or nothing at all
    assert "root:" not in out  # no /etc/passwd of the host


def test_js_process_is_the_sandbox_not_the_node(stack):
    code = BYPASS + textwrap.dedent("""
        attempt("pid", lambda: js.process.pid)
        attempt("cwd", lambda: js.process.cwd())
        attempt("uid", lambda: js.process.getuid())
        attempt("env", lambda: js.JSON.stringify(js.process.env))
        attempt("argv", lambda: js.JSON.stringify(js.process.argv))
    """)
    _state, out, err = run_python(stack, code)
    assert_nothing_learnt(out, err)
    lines = dict(line.split(" -> ", 1) for line in out.splitlines() if " -> " in line)
    assert int(lines["pid"]) < 10  # its own PID namespace: a handful of processes, never the node's
    assert lines["cwd"] == "'/'"
    assert lines["uid"] == "65534"


def test_child_process_and_workers_through_dynamic_import(stack):
    marker = stack.home / f"pwned-{secrets.token_hex(4)}"
    code = BYPASS + textwrap.dedent(f"""
        # The program cannot wait for a promise, so the attack runs in callbacks; whatever they get done
        # would show as the marker file on the host.
        js.eval('''
            import("node:child_process").then(cp => cp.execSync("touch {marker}"))
                .catch(e => console.log("child_process refused: " + e.code));
            import("node:worker_threads").then(w => new w.Worker("1", {{eval: true}}))
                .catch(e => console.log("worker refused: " + e.code));
            undefined;  // a promise handed back to Python would need an event loop
        ''')
        attempt("spawn via process.binding", lambda: js.process.binding("spawn_sync"))
        attempt("dlopen", lambda: js.process.dlopen(js.Object.new(), "/usr/lib/x86_64-linux-gnu/libc.so.6"))
    """)
    _state, out, _err = run_python(stack, code)
    assert not marker.exists()
    assert "spawn via process.binding !!" in out
    assert "dlopen !!" in out


def test_no_network_to_the_node_api_or_kubo(stack):
    api_port = int(stack.nodes[0].api.rsplit(":", 1)[1].split("/")[0])
    kubo_port = int(stack.kubo.rpc_urls[0].rsplit(":", 1)[1].split("/")[0])
    code = BYPASS + textwrap.dedent(f"""
        import socket
        for port in ({api_port}, {kubo_port}):
            def talk(port=port):
                s = socket.create_connection(("127.0.0.1", port), timeout=2)
                s.sendall(b"GET /v1/version HTTP/1.0\\r\\n\\r\\n")
                return s.recv(1000)
            attempt(f"socket {{port}}", talk)
        attempt("fetch", lambda: js.fetch("http://127.0.0.1:{api_port}/v1/version"))
        attempt("pyodide.http", lambda: __import__("pyodide.http"))
        js.eval('''
            import("node:net").then(net => {{
                const s = net.connect({kubo_port}, "127.0.0.1");
                s.on("connect", () => s.write("POST /api/v0/shutdown HTTP/1.0\\\\r\\\\n\\\\r\\\\n"));
            }});
            undefined;
        ''')
    """)
    _state, out, _err = run_python(stack, code)
    assert "HTTP/" not in out  # no answer from either server
    assert f"socket {api_port} !!" in out and f"socket {kubo_port} !!" in out
    assert "fetch ->" not in out or "network access is disabled" in out
    # Kubo is still up and the node still answers: the shutdown never reached it.
    with Client(stack.nodes[0].api) as client:
        assert client.node().peer_id


def test_writes_outside_the_outputs_do_not_reach_the_host(stack, tmp_path):
    target = stack.home / f"written-{secrets.token_hex(4)}"
    runner_file = Path(__file__).resolve().parents[2] / "executors" / "pyodide_runner" / "pwned.txt"
    code = BYPASS + textwrap.dedent(f"""
        attempt("mount", mount_host_root)
        attempt("host file", lambda: open("/host" + {str(target)!r}, "w").write("x"))
        attempt("runner", lambda: open("/host" + {str(runner_file)!r}, "w").write("x"))
        attempt("context", lambda: open("/context/x", "w").write("x"))
        attempt("tmp", lambda: open("/host/tmp/x", "w").write("x"))
    """)
    _state, out, _err = run_python(stack, code)
    assert not target.exists(), out
    assert not runner_file.exists(), out


def test_writing_past_disk_fails_the_job_with_the_reason(stack):
    code = "open('/outputs/big', 'wb').write(b'x' * (8 << 20))\nprint('wrote')"
    state, _out, err = run_python(stack, code, outputs=[{"name": "out", "path": "/outputs"}],
                                 resources={"disk": "1MiB"})
    assert state == "failed"
    assert "disk limit" in err


def test_a_job_stating_no_disk_writes_no_more_than_the_nodes_per_job_limit(stack, docker_ready):
    """``resources.disk`` is 0 unless a job states it, and 0 once meant no limit: a python job wrote 2 GiB
    to the node's disk, and the operator's ``--limit-job-disk`` did not stop it."""
    outputs = [{"name": "out", "path": "/outputs"}]
    code = "f = open('/outputs/big', 'wb')\nfor _ in range(40):\n    f.write(b'x' * (1 << 20))\nf.close()\n" \
           "print('wrote')"
    with Client(stack.nodes[0].api) as client:
        for engine in ({"name": "python", "code": code},
                       {"name": "docker", "image": "busybox",
                        "args": ["sh", "-c", "dd if=/dev/zero of=/outputs/big bs=1M count=40; sleep 5"]}):
            job = client.run({"engine": engine, "outputs": outputs, "cache": False}, timeout=180).job
            # stopped at the node's limit; and since the limit is the node's, below the 1 GiB of a job stating
            # none, it is this node's failure ("try elsewhere"): no result of it is compared with others'
            assert job.state.value == "failed" and job.result is None, job
            assert f"disk limit exceeded: this node's per-job disk is {JOB_DISK.replace('MiB', ' MiB')}, less " \
                   "than the 1 GiB a job stating no resources.disk may use" in job.reason, job.reason
    state, out, _ = run_python(stack, "open('/outputs/small', 'wb').write(b'x' * (1 << 20))\nprint('wrote')",
                               outputs=outputs)
    assert (state, out) == ("completed", "wrote\n")  # within the node's limit, as before


@pytest.mark.parametrize("script", ["truncate -s 4G /outputs/sparse", "cd /outputs && for i in $(seq 5000); do "
                                    "mkdir d$i && touch f$i; done; sleep 5"], ids=["a sparse file", "empty entries"])
def test_docker_writing_what_takes_no_blocks_is_counted_at_what_publishing_it_takes(stack, docker_ready, script):
    """A sparse file takes no blocks until it is copied, and publishing copies every byte (4 GiB reached the
    node's store from a job held to 1 MiB); 40,000 empty directories and files counted as nothing."""
    state, _out, err = run_docker(stack, "sh", "-c", script, outputs=[{"name": "out", "path": "/outputs"}],
                                  resources={"disk": "1MiB"})
    assert state == "failed" and "disk limit exceeded" in err, err


DEEP = "cd /outputs && for i in $(seq 1500); do mkdir a && cd a; done; echo deep"


def test_outputs_nested_1500_deep_fail_their_job_and_the_node_carries_on(stack, docker_ready):
    """Python recurses once per directory to walk or remove a tree: a job that nested 1,500 directories in
    its outputs took the whole node down (RecursionError) as it removed its scratch space."""
    outputs = [{"name": "out", "path": "/outputs"}]
    code = "import os\nos.chdir('/outputs')\nfor _ in range(1500):\n    os.mkdir('a')\n    os.chdir('a')\nprint('deep')"
    with Client(stack.nodes[0].api) as client:
        for engine in ({"name": "docker", "image": "busybox", "args": ["sh", "-c", DEEP]},
                       {"name": "python", "code": code}):
            job = client.run({"engine": engine, "outputs": outputs, "cache": False}, timeout=180).job
            assert job.state.value == "failed"
            assert job.reason.endswith("the job's outputs hold directories nested more than 100 deep"), job.reason
    state, out, _ = run_python(stack, "print(6 * 7)")
    assert (state, out) == ("completed", "42\n")
    log = (stack.nodes[0].data_dir / "node.log").read_text()
    assert "Traceback" not in log and "RecursionError" not in log
    assert not any((stack.nodes[0].data_dir / "work").iterdir())  # the scratch space is gone


def test_a_fifo_in_docker_outputs_fails_the_job_naming_it_as_the_job_knows_it(stack, docker_ready):
    """A FIFO in a job's outputs failed it with the path of the node's scratch folder in the error, which
    every client reads: the node's data dir and its layout, given away."""
    with Client(stack.nodes[0].api) as client:
        job = client.run({"engine": {"name": "docker", "image": "busybox", "args": ["sh", "-c", "mkfifo /outputs/p"]},
                          "outputs": [{"name": "out", "path": "/outputs"}], "cache": False}, timeout=180).job
    assert job.state.value == "failed"
    assert "the job's outputs hold out/p, a FIFO: only files, folders and symlinks are stored" in job.reason, \
        job.reason
    assert not any(str(node.data_dir) in job.reason for node in stack.nodes)


FLOOD_PY = "import itertools\nfor i in itertools.count():\n    open(f'/outputs/f{i}', 'w').close()"
FLOOD_SH = "i=0; while :; do : > /outputs/f$i; i=$((i+1)); done"


def test_a_job_making_empty_files_without_end_is_stopped_while_it_runs(stack, docker_ready):
    """Each empty file costs an inode and no bytes: a job making them for its whole (long) timeout used up
    the inodes of the node's file system, and every other job there failed with ENOSPC. The entries are
    counted as the job runs, so it stops at the cap, long before its timeout, and leaves nothing behind."""
    outputs = [{"name": "out", "path": "/outputs"}]
    with Client(stack.nodes[0].api) as client:
        for engine in ({"name": "python", "code": FLOOD_PY},
                       {"name": "docker", "image": "busybox", "args": ["sh", "-c", FLOOD_SH]}):
            # A container is charged for the inodes and dentries of the files it makes (~1.3 KiB each on ext4):
            # at the default 64 MiB the kernel at times OOM-killed the flood just short of the cap, the node then
            # published its files (~50,000 by default), and that add stalled 60 s (retryable: the job was offered
            # again).
            # A whole core: at the default tenth of one, the flood took half a minute to reach the cap.
            resources = {"resources": {"memory": "256MiB", "cpu": 1}} if engine["name"] == "docker" else {}
            job = client.run({"engine": engine, "outputs": outputs, "cache": False, "timeout": "1h", **resources},
                             timeout=180).job  # without the count, it would run for its hour
            assert job.state.value == "failed", (engine["name"], job.reason)
            assert job.reason.endswith(f"the job's outputs hold more than {OUTPUT_ENTRIES:,} files and folders "
                                       "(this node's limit; the network's is 50,000)"), job.reason
            # the cap is this node's, below the network's: the job was offered again (another node could take
            # it), and the lone node, failing it twice, was done with it (the network's cap fails a job once:
            # test_engines_devstack)
            assert job.attempt == job.first_attempt + 1
    assert not any((stack.nodes[0].data_dir / "work").iterdir())  # the scratch space is gone


def test_an_input_nested_deeper_than_the_limit_is_refused_before_any_engine_sees_it(stack, tmp_path):
    deep = tmp_path / "deep"
    (deep / Path(*["a"] * 150)).mkdir(parents=True)
    (deep / Path(*["a"] * 150) / "f").write_text("x")
    cid = add_to_kubo(stack, deep)
    with Client(stack.nodes[0].api) as client:
        job = client.run({"engine": {"name": "python", "code": "print('ran')"}, "cache": False,
                          "inputs": [{"source": f"ipfs://{cid}", "path": "/data"}]}, timeout=120).job
    assert job.state.value == "failed"
    assert job.reason.endswith("it holds directories nested more than 100 deep"), job.reason


def test_writing_beside_the_outputs_counts_against_the_disk_too(stack):
    """A job that reached Node's file system mounted its sandbox's writable root and wrote 180 MB beside its
    output folder with a 1 MiB disk: only the output folders were measured, and the job completed."""
    code = BYPASS + textwrap.dedent("""
        import os
        pyodide_js.FS.mkdirTree("/rwroot")
        pyodide_js.FS.mount(pyodide_js.FS.filesystems.NODEFS, js.Object.fromEntries([["root", "/job/rw"]]), "/rwroot")
        for i in range(20):
            with open(f"/rwroot/junk{i}", "wb") as f:
                f.write(b"x" * 900_000)
        print("wrote beside the outputs")
    """)
    state, _out, err = run_python(stack, code, outputs=[{"name": "out", "path": "/outputs"}],
                                  resources={"disk": "1MiB"})
    assert state == "failed" and "disk limit exceeded" in err, err


def test_what_a_job_wrote_past_its_disk_is_not_published(stack, docker_ready, tmp_path):
    outputs = [{"name": "out", "path": "/outputs"}]
    with Client(stack.nodes[0].api) as client:
        job = client.run({"engine": {"name": "docker", "image": "busybox", "args": [
            "sh", "-c", "head -c 5000000 /dev/urandom > /outputs/big"]}, "outputs": outputs,
            "resources": {"disk": "1MiB"}}, timeout=180).job
        assert job.state.value == "failed" and job.result is not None and job.result.cid, job
        got = client.download(job.id, tmp_path / "got")
    assert "disk limit exceeded" in (got / "stderr").read_text()
    assert list((got / "outputs").rglob("*")) == []  # none of it published


def test_fork_thread_and_memory_bombs_fail_inside_the_job(stack):
    code = textwrap.dedent("""
        import os, threading
        try:
            os.fork()
            print("forked")
        except OSError as e:
            print("fork refused", e)
        try:
            threading.Thread(target=print).start()
            print("thread started")
        except RuntimeError as e:
            print("thread refused", e)
        hog = []
        while True:
            hog.append(bytearray(16 << 20))
    """)
    state, out, err = run_python(stack, code, resources={"memory": "128MiB"})
    assert state == "failed"
    assert "forked" not in out and "thread started" not in out
    assert "MemoryError" in err or "memory limit" in err
    # The node carries on with its next job.
    state, out, _ = run_python(stack, "print(6 * 7)")
    assert (state, out) == ("completed", "42\n")


# -- docker ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def docker_ready():
    from executors.docker import DockerExecutor

    if not DockerExecutor("probe").is_installed():
        if os.environ.get("SHOAL_REQUIRE_DOCKER") == "1":
            pytest.fail("no Docker daemon answers; run scripts/install-docker")
        pytest.skip("no Docker daemon answers; run scripts/install-docker")


def run_docker(stack: Devstack, *command: str, **spec: object) -> tuple[str, str, str]:
    with Client(stack.nodes[0].api) as client:
        job = client.run({"engine": {"name": "docker", "image": "busybox", "args": list(command)}, **spec},
                         timeout=180)
        return job.job.state.value, client.logs(job.job.id), client.logs(job.job.id, "stderr")


@pytest.mark.parametrize("engine_extra", [{"privileged": True}, {"volumes": ["/:/host"]},
                                          {"cap_add": ["SYS_ADMIN"]}, {"user": "0"}])
def test_docker_spec_cannot_ask_for_mounts_privileges_or_root(stack, engine_extra):
    from shoal import InvalidRequest

    with Client(stack.nodes[0].api) as client, pytest.raises(InvalidRequest) as refused:
        client.submit({"engine": {"name": "docker", "image": "busybox", "args": ["true"], **engine_extra}})
    assert next(iter(engine_extra)) in str(refused.value)


def test_docker_job_is_not_root_and_sees_no_host_path(stack, docker_ready):
    _state, out, err = run_docker(stack, "sh", "-c", f"id -u; cat {stack.canary} || echo no-canary; ls /host 2>&1")
    assert_nothing_learnt(out, err)
    assert out.splitlines()[0] != "0"
    # nor 65534, which python sandboxes share where the node's uid range is not mapped: containers parking
    # 1,000 sleeping processes as that uid once kept every python job from starting (RLIMIT_NPROC)
    assert out.splitlines()[0] != "65534"
    assert "no-canary" in out


def test_docker_writing_past_disk_is_stopped(stack, docker_ready):
    state, _out, err = run_docker(stack, "sh", "-c", "dd if=/dev/zero of=/outputs/big bs=1M count=64; sleep 5",
                                 outputs=[{"name": "out", "path": "/outputs"}], resources={"disk": "4MiB"})
    assert state == "failed"
    assert "disk limit exceeded" in err


def test_docker_job_cannot_reach_the_node_api(stack, docker_ready):
    api = stack.nodes[0].api.rstrip("/")
    _state, out, _err = run_docker(stack, "sh", "-c", f"wget -q -T 3 -O- {api}/v1/version || echo unreachable")
    assert "unreachable" in out
    assert "version" not in out


# -- wasm -----------------------------------------------------------------------------------------------

_WASI = """
  (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
  (import "wasi_snapshot_preview1" "path_open"
    (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
  (memory (export "memory") 20)
  (func $write (param $fd i32) (param $ptr i32) (param $len i32)
    (i32.store (i32.const 0) (local.get $ptr))
    (i32.store (i32.const 4) (local.get $len))
    (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
"""


def _traversal_module(path: str) -> bytes:
    """Opens ``path`` relative to the outputs' preopen (fd 4; fd 3 is /module) and prints what it reads."""
    import wasmtime

    return wasmtime.wat2wasm(f"""(module {_WASI}
      (data (i32.const 128) "{path}")
      (data (i32.const 96) "refused\\n")
      (func (export "_start")
        (if (call $path_open (i32.const 4) (i32.const 1) (i32.const 128) (i32.const {len(path)}) (i32.const 0)
                             (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 16))
          (then (call $write (i32.const 1) (i32.const 96) (i32.const 8)))
          (else
            (i32.store (i32.const 24) (i32.const 1024))
            (i32.store (i32.const 28) (i32.const 4000))
            (drop (call $fd_read (i32.load (i32.const 16)) (i32.const 24) (i32.const 1) (i32.const 32)))
            (call $write (i32.const 1) (i32.const 1024) (i32.load (i32.const 32)))))))""")


# Writes 64 MiB of zeros to /outputs/big (fd 4 is the /outputs preopen), 1 MiB per call.
_DISK_FILLER = f"""(module {_WASI}
  (data (i32.const 128) "big")
  (func (export "_start") (local $i i32)
    (if (call $path_open (i32.const 4) (i32.const 0) (i32.const 128) (i32.const 3) (i32.const 9)
                         (i64.const 64) (i64.const 0) (i32.const 0) (i32.const 16))
      (then unreachable))
    (block $done (loop $next
      (br_if $done (i32.ge_u (local.get $i) (i32.const 64)))
      (call $write (i32.load (i32.const 16)) (i32.const 65536) (i32.const 1048576))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br $next)))))"""


def run_wasm(stack: Devstack, wasm: bytes, **spec: object) -> tuple[str, str, str]:
    cid = add_to_kubo(stack, wasm)
    with Client(stack.nodes[0].api) as client:
        job = client.run({"engine": {"name": "wasm", "module": "/module/m.wasm"}, "cache": False,
                          "inputs": [{"source": f"ipfs://{cid}", "path": "/module/m.wasm"}],
                          "outputs": [{"name": "out", "path": "/outputs"}], **spec}, timeout=180)
        stderr = client.logs(job.job.id, "stderr")
        return job.job.state.value, client.logs(job.job.id), f"{stderr}{job.job.reason or ''}"


@pytest.mark.parametrize("escape", ["../../../../../../../..{canary}", "..", "../outputs/../..{canary}"])
def test_wasm_path_traversal_out_of_the_preopens(stack, escape):
    path = escape.format(canary=stack.canary)
    state, out, err = run_wasm(stack, _traversal_module(path))
    assert_nothing_learnt(out, err)
    assert out == "refused\n", (state, err)


def test_wasm_writing_past_disk_fails_the_job(stack):
    import wasmtime

    state, _out, err = run_wasm(stack, wasmtime.wat2wasm(_DISK_FILLER), resources={"disk": "4MiB"})
    assert state == "failed"
    assert "disk limit exceeded" in err


# -- leftovers ------------------------------------------------------------------------------------------


def _sandboxed_processes_of(node_pid: int) -> list[int]:
    """Processes whose command line names the sandbox folder of node process ``node_pid``."""
    mark = f"shoal-sandbox-{node_pid}-"
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if mark in (proc / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(proc.name))
            except OSError:
                continue
    return found


def test_nothing_survives_a_kill_9_of_the_node(stack, docker_ready):
    import tempfile
    import time

    node = stack.nodes[0]
    old_pid = node.pid
    with Client(node.api) as client:
        python_job = client.submit({"engine": {"name": "python", "code": "while True: pass"}, "cache": False,
                                    "timeout": 600, "outputs": [{"name": "out", "path": "/outputs"}]})
        docker_job = client.submit({"engine": {"name": "docker", "image": "busybox", "args": ["sleep", "600"]},
                                    "outputs": [{"name": "out", "path": "/outputs"}]})
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = [client.describe(j.job.id).job.state.value for j in (python_job, docker_job)]
            if states == ["running", "running"]:
                break
            time.sleep(0.5)
        assert states == ["running", "running"]
    while not _sandboxed_processes_of(old_pid) and time.monotonic() < deadline:
        time.sleep(0.5)  # a fresh node builds its Pyodide snapshot first
    time.sleep(2)  # the interpreter and the container are up
    assert _sandboxed_processes_of(old_pid)
    work = node.data_dir / "work"
    assert any(work.iterdir())

    stack.kill(0)
    deadline = time.monotonic() + 10
    while _sandboxed_processes_of(old_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _sandboxed_processes_of(old_pid) == []  # the interpreters died with the node

    trio.run(stack.restart, 0)
    with Client(node.api) as client:  # the restarted node is up and answering
        assert client.node().peer_id
        for job in (python_job, docker_job):  # nothing of them may run again either
            client.cancel(job.job.id)
    deadline = time.monotonic() + 30
    from executors.docker import _connect

    api = _connect(30)
    try:
        while time.monotonic() < deadline:
            left = api.containers(all=True, filters={"label": f"shoal.node={node.peer_id}"})
            roots = list(Path(tempfile.gettempdir()).glob(f"shoal-sandbox-{old_pid}-*"))
            if not left and not roots and not list(work.iterdir()):
                break
            time.sleep(0.5)
        assert left == []  # no container of the old process
    finally:
        api.close()
    assert list(Path(tempfile.gettempdir()).glob(f"shoal-sandbox-{old_pid}-*")) == []
    assert list(work.iterdir()) == []


def test_docker_private_local_images_are_not_handed_to_jobs(stack, docker_ready):
    from executors.docker import _connect

    api = _connect(30)
    try:
        api.tag("busybox:latest", "shoal-test-private/secret", tag="1")
        with Client(stack.nodes[0].api) as client:
            job = client.run({"engine": {"name": "docker", "image": "shoal-test-private/secret:1",
                                         "args": ["echo", "ran"]}}, timeout=120)
            assert job.job.state.value in ("failed", "pending")
            assert "was not pulled for jobs" in (job.job.reason or "")
            assert client.logs(job.job.id) == ""
    finally:
        api.remove_image("shoal-test-private/secret:1")
        api.close()


def test_staged_inputs_count_against_disk(stack):
    """And they are held to it as they arrive: a 1 MiB job once had its node stage a 2 GiB input (zero-filled,
    next to nothing to publish) before the size counted, as the download's limit was 10 GiB."""
    big = add_to_kubo(stack, secrets.token_bytes(3 << 20))
    with Client(stack.nodes[0].api) as client:
        job = client.run({"engine": {"name": "python", "code": "print('ran')"}, "cache": False,
                          "inputs": [{"source": f"ipfs://{big}", "path": "/data/big"}],
                          "resources": {"disk": "2MiB"}}, timeout=120)
        assert job.job.state.value == "failed"  # refused as it arrives, past the job's 2 MiB
        assert "3145728 bytes is more than the limit of 2097152" in (job.job.reason or ""), job.job.reason
    # 1 MiB of inputs leave 1 MiB of a 2 MiB disk to write: 1.5 MiB is too much
    small = add_to_kubo(stack, secrets.token_bytes(1 << 20))
    code = "open('/outputs/x', 'wb').write(b'y' * (3 << 19))"
    state, _out, err = run_python(stack, code, inputs=[{"source": f"ipfs://{small}", "path": "/data/small"}],
                                  outputs=[{"name": "out", "path": "/outputs"}], resources={"disk": "2MiB"})
    assert state == "failed"
    assert "disk limit exceeded" in err

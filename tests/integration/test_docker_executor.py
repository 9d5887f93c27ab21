"""The Docker executor against the real Docker Engine (start it with ``scripts/install-docker``).

Skipped when no daemon answers, unless ``SHOAL_REQUIRE_DOCKER=1`` (CI sets it after installing
Docker), in which case a missing daemon fails the run instead of hiding it.
"""

from __future__ import annotations

import dataclasses
import io
import os
import time
import uuid
from pathlib import Path

import docker
import docker.errors
import pytest
import trio

from executors.base import ExecutorError, Mount, RunRequest
from executors.docker import LABEL_EXECUTION, LABEL_NODE, DockerExecutor, PullProgress, cleanup_leftovers
from executors.images import build_busybox
from jobs import JobSpec
from jobs.model import MAX_CAPTURE

BUSYBOX = "busybox:latest"


def _daemon() -> docker.DockerClient | None:
    try:
        return docker.from_env(timeout=60)
    except docker.errors.DockerException:
        return None


@pytest.fixture(scope="module")
def client() -> docker.DockerClient:
    c = _daemon()
    if c is None:
        if os.environ.get("SHOAL_REQUIRE_DOCKER") == "1":
            pytest.fail("no Docker daemon answers; run scripts/install-docker")
        pytest.skip("no Docker daemon answers; run scripts/install-docker")
    build_busybox(c, progress=lambda _: None)  # offline, ~1 s, no-op when present
    return c


@pytest.fixture
def node_label():
    label = f"test-{uuid.uuid4().hex[:12]}"
    yield label
    c = _daemon()  # a failed test must not leave a container (or a fork bomb) running
    if c is not None:
        for leftover in c.containers.list(all=True, filters={"label": f"{LABEL_NODE}={label}"}):
            leftover.remove(force=True)


@pytest.fixture
def executor(client, node_label) -> DockerExecutor:
    return DockerExecutor(node_label)


def make_request(tmp_path: Path, *, args: list[str] | None = None, script: str | None = None,
                 inputs: tuple[Mount, ...] = (), **spec) -> RunRequest:
    """A busybox job: ``script`` runs under ``sh -c``; ``spec`` overrides JobSpec fields."""
    engine = {"name": "docker", "image": BUSYBOX, **spec.pop("engine", {})}
    if script is not None:
        engine.update(entrypoint=["sh", "-c"], args=[script])
    elif args is not None:
        engine["args"] = args
    execution_id = f"ex-{uuid.uuid4().hex[:12]}"
    work = tmp_path / execution_id
    return RunRequest(
        job_id=f"job-{execution_id}", execution_id=execution_id, spec=JobSpec(engine=engine, **spec),
        work_dir=work, outputs_dir=work / "outputs", inputs=inputs,
    )


def containers_of(client: docker.DockerClient, request: RunRequest) -> list[dict]:
    """The execution's containers, as the daemon lists them (one call, no per-container inspect)."""
    return client.api.containers(all=True, filters={"label": f"{LABEL_EXECUTION}={request.execution_id}"})


async def wait_until_running(client: docker.DockerClient, request: RunRequest) -> str:
    """Poll the daemon (the only witness) until the execution's container runs; return its id."""
    with trio.fail_after(20):
        while True:
            found = await trio.to_thread.run_sync(containers_of, client, request)
            if found and found[0]["State"] == "running":
                return found[0]["Id"]
            await trio.sleep(0.05)


# -- running jobs ---------------------------------------------------------------------------------------


async def test_hello_world_prints_and_leaves_no_container(executor, client, tmp_path):
    request = make_request(tmp_path, args=["echo", "hello"])
    before = time.time()
    result = await executor.run(request)
    assert (result.exit_code, result.stdout, result.stderr) == (0, "hello\n", "")
    assert not result.stdout_truncated and not result.stderr_truncated
    assert before <= result.started_at <= result.finished_at <= time.time()
    assert containers_of(client, request) == []


async def test_non_zero_exit_code_is_a_result_with_separate_streams(executor, tmp_path):
    result = await executor.run(make_request(tmp_path, script="echo out; echo err >&2; exit 3"))
    assert (result.exit_code, result.stdout, result.stderr) == (3, "out\n", "err\n")


async def test_command_not_found_is_exit_127_not_an_infrastructure_error(executor, tmp_path):
    result = await executor.run(make_request(tmp_path, args=["no-such-command"]))
    assert result.exit_code == 127
    assert "no-such-command" in result.stderr


async def test_entrypoint_args_workdir_and_env(executor, tmp_path):
    request = make_request(
        tmp_path,
        engine={"entrypoint": ["sh", "-c", 'pwd; echo "$0 $1"; echo "$GREETING $HOME"'], "args": ["a", "b"],
                "workdir": "/tmp"},
        env={"GREETING": "hello shoal"},
    )
    result = await executor.run(request)
    assert result.stdout == "/tmp\na b\nhello shoal /tmp\n", result.stderr


async def test_input_read_only_is_transformed_into_an_output(executor, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "words.txt").write_text("hello shoal\n")
    request = make_request(
        tmp_path,
        script="tr a-z A-Z < /inputs/words.txt > /outputs/upper.txt; "
               "if echo x >> /inputs/words.txt; then echo input-writable; else echo input-read-only; fi",
        inputs=(Mount(inputs, "/inputs"),),
        outputs=[{"name": "result", "path": "/outputs"}],
    )
    result = await executor.run(request)
    assert result.exit_code == 0, result.stderr
    assert result.stdout == "input-read-only\n"
    assert (request.outputs_dir / "result" / "upper.txt").read_text() == "HELLO SHOAL\n"
    assert (inputs / "words.txt").read_text() == "hello shoal\n"
    out = request.outputs_dir / "result" / "upper.txt"
    assert (out.stat().st_uid, out.stat().st_gid) == (os.getuid(), os.getgid())  # the node can clean it up


async def test_root_is_read_only_and_tmp_is_writable(executor, tmp_path):
    result = await executor.run(make_request(
        tmp_path, script="touch /rootfile || echo root-read-only; touch /tmp/f && echo tmp-writable"))
    assert result.stdout == "root-read-only\ntmp-writable\n"
    assert "Read-only file system" in result.stderr


async def test_a_volume_the_image_declares_is_held_to_the_jobs_limits_and_gone_with_it(client, node_label,
                                                                                      tmp_path):
    """An image's VOLUME was an anonymous Docker volume: writable despite the read-only root, unseen by the disk
    watch (a 4 MiB job wrote 200 MB there) and left on the host when the container was removed."""
    tag = "shoal-test/declares-a-volume:1"
    dockerfile = b"FROM busybox:latest\nRUN mkdir /data && chmod 1777 /data\nVOLUME /data\n"
    await trio.to_thread.run_sync(lambda: client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True))
    volumes = lambda: {v["Name"] for v in client.api.volumes()["Volumes"] or []}  # noqa: E731
    before = volumes()
    executor = DockerExecutor(node_label, allow_images=(tag,))
    result = await executor.run(make_request(
        tmp_path, engine={"image": tag}, resources={"disk": "4MiB"},
        script="dd if=/dev/zero of=/data/big bs=1M count=64 2>/dev/null; echo dd=$?; du -m /data/big"))
    assert result.stdout.split() == ["dd=1", "4", "/data/big"]  # it stopped at 4 MiB
    assert volumes() == before


async def test_no_capabilities_and_no_new_privileges(executor, tmp_path):
    result = await executor.run(make_request(tmp_path, script="grep -E '^(CapEff|NoNewPrivs)' /proc/self/status"))
    assert result.stdout.split() == ["CapEff:", "0000000000000000", "NoNewPrivs:", "1"]


async def test_no_network_inside_only_loopback(executor, tmp_path):
    result = await executor.run(make_request(tmp_path, script="tail -n +3 /proc/net/dev | cut -d: -f1"))
    assert result.stdout.split() == ["lo"]


async def test_network_job_refused_unless_the_node_allows_it(client, node_label, tmp_path):
    request = make_request(tmp_path, script="tail -n +3 /proc/net/dev | cut -d: -f1", engine={"network": True})
    with pytest.raises(ExecutorError, match="network") as refused:
        await DockerExecutor(node_label).run(request)
    assert refused.value.retryable is False
    with pytest.raises(ExecutorError, match="network"):
        await DockerExecutor(node_label).prepare(request)
    result = await DockerExecutor(node_label, allow_network=True).run(request)
    assert sorted(result.stdout.split()) == ["eth0", "lo"]


async def test_a_peers_job_in_the_kernels_views_is_refused_before_any_container(client, executor, node_label,
                                                                                tmp_path):
    """A requester announcing a job is not checked as a client's submission is: the executor refuses a working
    directory such as ``/proc/self/fd/7`` (CVE-2024-21626's way to the host through an older runc) itself."""
    mine = lambda: client.api.containers(all=True, filters={"label": f"shoal.node={node_label}"})  # noqa: E731
    before = mine()
    with pytest.raises(ExecutorError, match="workdir '/proc/self/fd/7'") as refused:
        await executor.run(make_request(tmp_path, script="ls /", engine={"workdir": "/proc/self/fd/7"}))
    assert refused.value.retryable is False  # the job's fault: no node runs it
    assert mine() == before  # no container was made
    result = await executor.run(make_request(tmp_path, script="pwd", engine={"workdir": "/tmp/work/./x"}))
    assert result.stdout == "/tmp/work/x\n"
    with pytest.raises(ExecutorError, match="image 'BusyBox': not an image reference") as refused:
        await executor.run(make_request(tmp_path, script="true", engine={"image": "BusyBox"}))
    assert refused.value.retryable is False and mine() == before  # nor an image no daemon takes


async def test_stdout_keeps_the_last_max_capture_bytes(executor, tmp_path):
    result = await executor.run(make_request(tmp_path, script="seq 1 400000; echo done >&2"))  # ~2.7 MB
    assert result.exit_code == 0
    assert result.stdout_truncated and not result.stderr_truncated
    assert len(result.stdout.encode()) == MAX_CAPTURE
    assert result.stdout.endswith("\n399999\n400000\n")  # the tail is kept
    assert result.stderr == "done\n"


# -- limits -----------------------------------------------------------------------------------------------


async def test_out_of_memory_is_reported(executor, client, tmp_path):
    """A second in, as a real job's allocations come: Docker missed a container's OOM in its first moments in
    2 of 60 runs beside the other docker tests (no OOMKilled flag, however long it was asked), 0 of 60 so."""
    request = make_request(tmp_path, script="sleep 1; dd if=/dev/zero of=/dev/null bs=64M count=1",
                           resources={"memory": "16MiB"})
    result = await executor.run(request)
    assert result.exit_code == 137
    assert result.stderr.endswith("shoal: out of memory (limit 16 MiB)\n")
    assert containers_of(client, request) == []


# Fills the kernel's buffers of as many loopback TCP connections as it can open and of 100 UDP sockets,
# then prints the connections and the bytes its sockets hold (their send and receive queues, as its
# network namespace lists them).
HOLD_SOCKET_BUFFERS = """
import resource, socket
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
server = socket.socket()
server.bind(("127.0.0.1", 0))
server.listen(4096)
try:
    while len(held) < 40000:
        sender = socket.create_connection(server.getsockname())
        receiver, _ = server.accept()
        sender.setblocking(False)
        try:
            while True:
                sender.send(b"x" * 65536)
        except BlockingIOError:
            pass
        held += [sender, receiver]
except OSError:  # out of open files
    pass
connections = len(held) // 2
del held[-8:]  # room for the UDP sockets and reading /proc
for _ in range(3):
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.bind(("127.0.0.1", 0))
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(100):
        sender.sendto(b"x" * 60000, receiver.getsockname())
    held += [sender, receiver]

def queued(protocol):
    lines = open("/proc/net/" + protocol).read().splitlines()[1:]
    return sum(int(queue, 16) for line in lines for queue in line.split()[4].split(":"))

print(connections, queued("tcp"), queued("udp"))
"""


async def test_socket_buffers_are_held_to_the_jobs_memory(executor, client, tmp_path):
    # cgroup v1 counts them apart from memory: a 64 MiB job held 2.2 GiB, all the host's TCP memory
    request = make_request(tmp_path, engine={"image": "shoal/python:3"}, timeout=300, resources={"memory": "64MiB"},
                           args=["python3", "-c", HOLD_SOCKET_BUFFERS])
    result = await executor.run(request)
    assert result.exit_code == 0, result.stderr
    connections, tcp, udp = map(int, result.stdout.split())
    assert 1000 < connections <= 2048  # its sockets work, as many as its open files allow ...
    assert tcp > 64 * 2**20  # ... and carry data ...
    # ... held to its memory, plus what the kernel lets each connection hold past it: a segment received
    # (at most 64 KiB on loopback) and 4 KiB to send (tcp_wmem's minimum)
    assert tcp + udp <= 64 * 2**20 + connections * 68 * 2**10
    assert containers_of(client, request) == []


# Each kind of socket a job might make, and io_uring (which makes sockets without socket(2)): made, or the
# error it got.
I386_NETLINK = """
import ctypes, struct
libc = ctypes.CDLL(None)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
page = libc.mmap(None, 4096, 7, 0x62, -1, 0)  # read, write, exec; private, anonymous, below 4 GiB
# eax, ebx, ecx = its three arguments; int 0x80; return eax
stub = bytes([0x53, 0x89, 0xF8, 0x89, 0xF3, 0x89, 0xD1, 0xCD, 0x80, 0x5B, 0xC3])
ctypes.memmove(page, stub, len(stub))
ctypes.memmove(page + 1024, struct.pack("<III", 16, 3, 0), 12)
made = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_int)(page)(102, 1, page + 1024)
print("made" if made >= 0 else "refused")
"""
TRY_SOCKETS = """
import ctypes, platform, signal, socket, subprocess, sys
I386_NETLINK = %r
tries = {
    "netlink": lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0),
    "vsock": lambda: socket.socket(socket.AF_VSOCK, socket.SOCK_STREAM),
    "ping": lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM, socket.IPPROTO_ICMP),
    "tcp": lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM),
    "udp6": lambda: socket.socket(socket.AF_INET6, socket.SOCK_DGRAM),
    "unix": lambda: socket.socketpair(),
}
for name, make in tries.items():
    try:
        make()
        print(name, "made")
    except OSError as e:
        print(name, "refused")
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
print("io_uring", "made" if libc.syscall(425, 8, params) >= 0 else "refused")
if platform.machine() == "x86_64":  # a 32-bit call: socketcall(SYS_SOCKET, [AF_NETLINK, SOCK_RAW, 0]), by int 0x80
    done = subprocess.run([sys.executable, "-c", I386_NETLINK], capture_output=True, text=True)
    print("i386-netlink", done.stdout.strip() or ("killed" if done.returncode == -signal.SIGSYS else done.returncode))
"""


async def test_a_job_makes_internet_and_unix_sockets_only(executor, tmp_path):
    # netlink and ping sockets queue what no memory cgroup counts (a 64 MiB job held 977 MiB of netlink
    # replies, 1 GiB in ping sockets); vsock reaches the hypervisor whatever the container's network
    request = make_request(tmp_path, engine={"image": "shoal/python:3"},
                           args=["python3", "-c", TRY_SOCKETS % I386_NETLINK])
    result = await executor.run(request)
    assert result.exit_code == 0, result.stderr
    assert dict(line.split() for line in result.stdout.splitlines()) == {
        "netlink": "refused", "vsock": "refused", "ping": "refused", "io_uring": "refused",
        "tcp": "made", "udp6": "made", "unix": "made",
        **({"i386-netlink": "killed"} if os.uname().machine == "x86_64" else {})}


# Makes inotify instances until the kernel refuses one (it counts them per uid), says how many in
# /outputs/holding, and keeps them.
HOLD_INOTIFY = """
import ctypes, time
libc = ctypes.CDLL(None, use_errno=True)
held = []
while (fd := libc.inotify_init1(0)) >= 0:
    held.append(fd)
open("/outputs/holding", "w").write(str(len(held)))
time.sleep(120)
"""
TRY_INOTIFY = "import ctypes; print('made' if ctypes.CDLL(None).inotify_init1(0) >= 0 else 'refused')"


async def test_a_job_using_up_its_users_kernel_limits_leaves_other_jobs_theirs(executor, tmp_path):
    # the kernel keeps some limits per uid: while every container ran as one uid, a job holding every
    # inotify instance (or pending signal, or pipe page) it could kept other jobs from making one
    hog = make_request(tmp_path, engine={"image": "shoal/python:3"}, args=["python3", "-c", HOLD_INOTIFY],
                       outputs=[{"name": "out", "path": "/outputs"}], timeout=120)
    holding = hog.outputs_dir / "out" / "holding"
    async with trio.open_nursery() as nursery:
        nursery.start_soon(executor.run, hog)
        with trio.fail_after(60):
            while not holding.exists() or not holding.read_text():
                await trio.sleep(0.1)
        other = make_request(tmp_path, engine={"image": "shoal/python:3"}, args=["python3", "-c", TRY_INOTIFY])
        result = await executor.run(other)
        nursery.cancel_scope.cancel()
    assert int(holding.read_text()) >= 100  # the hog held what one uid may hold (128 here) ...
    assert result.stdout == "made\n", result.stderr  # ... and the other job still made its own


async def test_fork_bomb_is_contained_by_the_pids_limit(executor, client, tmp_path):
    # PID 1 watches its own pids cgroup with shell builtins only (it needs no fork) until the kernel
    # has refused a fork for hitting the limit, then exits, which ends the job and the whole bomb. It
    # forks once, to start the bomb, before any bomb process exists: when it ran `bomb` itself, it forked
    # once per side of the pipe, and under load the first side's bomb could fill the limit before the
    # second fork, which then failed and ended PID 1 (exit 2, no line printed: 2 runs in 12). Once a fork
    # was refused, it waits a second or two before it exits: the shell whose fork failed writes its error
    # in two parts, and a bomb ended between them left only "sh: " (once in a CI run).
    script = """
        f=/sys/fs/cgroup/pids/pids; [ -r $f.max ] || f=/sys/fs/cgroup/pids
        read limit < $f.max; refused=0
        read up _ < /proc/uptime; end=$(( ${up%.*} + 30 ))
        bomb() { bomb | bomb & }; bomb &
        while [ $refused -eq 0 ]; do
            read _ refused < $f.events
            read up _ < /proc/uptime; [ ${up%.*} -ge $end ] && break
        done
        read up _ < /proc/uptime; end=$(( ${up%.*} + 2 ))
        while [ ${up%.*} -lt $end ]; do read up _ < /proc/uptime; done
        echo "limit=$limit refused=$refused"
    """
    # Memory is generous so that the pids limit, not the OOM killer, is what stops the bomb.
    request = make_request(tmp_path, script=script, resources={"cpu": 0.5, "memory": "512MiB"})
    with trio.fail_after(60):
        result = await executor.run(request)
    assert result.stdout.startswith("limit="), result
    limit, refused = (int(part.split("=")[1]) for part in result.stdout.split())
    assert limit == executor.pids_limit == 256
    assert refused > 0, result  # forks were refused at the limit: the bomb was stopped there
    assert "can't fork" in result.stderr
    assert containers_of(client, request) == []
    after = await executor.run(make_request(tmp_path, args=["echo", "fine"]))
    assert after.stdout == "fine\n"


async def test_fork_bomb_stopped_by_the_timeout_is_removed(executor, client, tmp_path):
    # PID 1 forks once, before the bomb goes off, then spins: a shell whose own fork fails exits (once, on a
    # busy machine, PID 1 lost that race and the job ended inside the 3 s)
    request = make_request(tmp_path, script="(bomb() { bomb | bomb & }; bomb) & while :; do :; done",
                           resources={"cpu": 0.5})
    with pytest.raises(trio.TooSlowError), trio.fail_after(3):
        await executor.run(request)
    assert containers_of(client, request) == []
    assert (await executor.run(make_request(tmp_path, args=["echo", "fine"]))).stdout == "fine\n"


async def test_timeout_kills_and_removes_the_container(executor, client, tmp_path):
    request = make_request(tmp_path, args=["sleep", "60"])
    started = time.monotonic()
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(1.5):  # what the compute service wraps around run()
            await executor.run(request)
    assert time.monotonic() - started < 10
    assert containers_of(client, request) == []


async def test_cancellation_kills_and_removes_the_container(executor, client, tmp_path):
    request = make_request(tmp_path, args=["sleep", "60"])
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(executor.run, request)
            await wait_until_running(client, request)
            nursery.cancel_scope.cancel()
    assert containers_of(client, request) == []


# -- images, daemon, leftovers ----------------------------------------------------------------------------


async def test_missing_image_without_registry_is_a_clear_retryable_error(executor, tmp_path):
    image = f"shoal/not-built-{uuid.uuid4().hex[:8]}:1"
    request = make_request(tmp_path, args=["true"], engine={"image": image})
    lines: list[str] = []
    with pytest.raises(ExecutorError, match="not found locally") as err:
        await executor.prepare(request, lines.append)
    assert err.value.retryable
    assert lines[0].endswith("image not present on this node")


async def test_a_failed_pull_answers_for_its_image_a_while_without_trying_again(executor, tmp_path, monkeypatch):
    """A sweep naming a missing image had each index try the registry, for seconds, holding its slot: one typo
    in a 150-index sweep held every node for four minutes, and other clients' jobs waited."""
    image = f"shoal/not-built-{uuid.uuid4().hex[:8]}:1"
    request = make_request(tmp_path, args=["true"], engine={"image": image})
    with pytest.raises(ExecutorError, match="not found locally") as first:
        await executor.run(request)
    pulls: list[str] = []
    api = await executor._connected()
    pull = api.pull
    monkeypatch.setattr(api, "pull", lambda repository, tag=None, **kw: pulls.append(repository) or pull(
        repository, tag=tag, **kw))
    lines: list[str] = []
    for _ in range(3):
        with pytest.raises(ExecutorError) as again:
            await executor.prepare(request, lines.append)
        assert str(again.value) == str(first.value) and again.value.retryable
    assert pulls == [] and lines[0].startswith(f"not pulling {image}: its pull failed here")
    monkeypatch.setattr("executors.docker.PULL_FAILURE_TTL", 0.0)  # once it is old, the registry is asked again
    executor._unpullable[image] = (0.0, first.value)
    with pytest.raises(ExecutorError, match="not found locally"):
        await executor.prepare(request, lines.append)
    assert pulls == [image.split(':')[0]]


async def test_prepare_with_the_image_present_reports_nothing(executor, tmp_path):
    lines: list[str] = []
    await executor.prepare(make_request(tmp_path, args=["true"]), lines.append)
    assert lines == []


async def test_cleanup_leftovers_removes_only_this_nodes_containers(client, node_label):
    other = f"{node_label}-other"
    mine = [client.containers.create(BUSYBOX, ["sleep", "300"], labels={LABEL_NODE: node_label}) for _ in range(2)]
    mine[0].start()  # a running one and a stopped one, as a crash leaves them
    theirs = client.containers.create(BUSYBOX, ["sleep", "300"], labels={LABEL_NODE: other})
    try:
        removed = await cleanup_leftovers(node_label)
        assert sorted(removed) == sorted(c.id for c in mine)
        assert client.containers.list(all=True, filters={"label": f"{LABEL_NODE}={node_label}"}) == []
        assert client.containers.get(theirs.id).id == theirs.id
        assert await cleanup_leftovers(node_label) == []
    finally:
        theirs.remove(force=True)


async def test_not_installed_when_the_daemon_socket_is_wrong(monkeypatch, node_label, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/no-docker.sock")
    executor = DockerExecutor(node_label)
    started = time.monotonic()
    assert executor.is_installed() is False
    assert time.monotonic() - started < 2
    with pytest.raises(ExecutorError, match="does not answer") as err:
        await executor.run(make_request(tmp_path, args=["true"]))
    assert err.value.retryable
    assert await cleanup_leftovers(node_label) == []


async def test_the_daemon_going_away_during_a_run_is_a_retryable_daemon_error(monkeypatch, client, executor, tmp_path):
    """A restarted dockerd drops the executor's wait for the exit code. That error came out of the run's
    nursery in an exception group, past the daemon errors' handler, and the job failed "executor crashed"."""
    import requests

    import executors.docker

    def daemon_gone(api, cid):
        raise requests.exceptions.ConnectionError(("Connection aborted.", ConnectionResetError(104, "reset")))

    monkeypatch.setattr(executors.docker, "_wait", daemon_gone)
    request = make_request(tmp_path, args=["echo", "hi"])
    with pytest.raises(ExecutorError, match="Docker daemon error while running the container") as err:
        await executor.run(request)
    assert err.value.retryable
    assert containers_of(client, request) == []


async def test_a_container_the_daemon_could_not_remove_is_removed_before_the_next_run(monkeypatch, client, executor,
                                                                                       tmp_path):
    """The daemon went away mid-run and so could not remove the container then: it stayed (h-deps saw five)
    until the node restarted. It goes before the next run instead."""
    import requests

    import executors.docker

    real_collect, real_remove = executors.docker._collect, executors.docker._remove_all

    def daemon_gone(*args):
        raise requests.exceptions.ConnectionError(("Connection aborted.", ConnectionResetError(104, "reset")))

    monkeypatch.setattr(executors.docker, "_collect", daemon_gone)
    monkeypatch.setattr(executors.docker, "_remove_all", daemon_gone)
    lost = make_request(tmp_path, args=["sleep", "600"])
    with pytest.raises(ExecutorError, match="Docker daemon error"):
        await executor.run(lost)
    (left,) = containers_of(client, lost)  # the daemon "went away" before it could remove it: it runs on
    assert left["State"] == "running"
    monkeypatch.setattr(executors.docker, "_collect", real_collect)
    monkeypatch.setattr(executors.docker, "_remove_all", real_remove)
    result = await executor.run(make_request(tmp_path, args=["echo", "next"]))
    assert result.stdout == "next\n"
    assert containers_of(client, lost) == []


async def test_installed_when_the_daemon_answers(executor):
    assert executor.is_installed() is True


def test_pull_progress_summarises_layers_at_most_once_per_interval():
    now = [0.0]
    progress = PullProgress("python:3-slim", interval=1.0, clock=lambda: now[0])
    events = [
        {"status": "Pulling from library/python", "id": "3-slim"},
        {"status": "Pulling fs layer", "id": "a"},
        {"status": "Pulling fs layer", "id": "b"},
        {"status": "Downloading", "id": "a", "progressDetail": {"current": 1024**2, "total": 4 * 1024**2}},
    ]
    lines = [progress.update(e) for e in events]
    assert lines == [None, "pulling python:3-slim: 0/1 layers", None, None]
    now[0] = 1.5
    assert progress.update({"status": "Pull complete", "id": "a"}) == "pulling python:3-slim: 1/2 layers, 4 MiB/4 MiB"
    assert progress.update({"status": "Downloading", "id": "b", "progressDetail": {"current": 1, "total": 2}}) is None
    assert progress.update({"status": "Status: Downloaded newer image for python:3-slim"}) == (
        "pulling python:3-slim: Downloaded newer image for python:3-slim")


async def test_a_job_making_empty_files_without_end_stops_at_the_entry_cap_however_large_its_disk(executor, tmp_path):
    """1 GiB of disk is two million empty files at 512 bytes each: the bytes alone would let a job use up the
    inodes of the node's file system. Entries are counted as it runs, up to the node's cap (here 5,000; 50,000 by
    default)."""
    # 256 MiB: the kernel charges each file's inode to the container (~1.3 KiB); at the default 64 MiB the
    # memory limit sometimes stopped the flood (exit 137) just short of the cap this test is about
    request = make_request(tmp_path, script="i=0; while :; do : > /outputs/f$i; i=$((i+1)); done",
                           outputs=[{"name": "out", "path": "/outputs"}],
                           resources={"disk": "1GiB", "memory": "256MiB"}, timeout=3600)
    request = dataclasses.replace(request, max_entries=5_000)
    with trio.fail_after(240):  # it would run for its hour
        result = await executor.run(request)
    assert result.exit_code != 0
    assert result.stderr.endswith("disk limit exceeded: the outputs hold more than 5,000 files and folders\n"), \
        result.stderr
    made = sum(1 for _ in (request.outputs_dir / "out").iterdir())
    assert 5_000 < made < 10_000, made  # stopped within a poll of the cap


async def test_a_job_stating_no_disk_is_held_to_the_default_on_a_node_with_more(executor, tmp_path):
    """What a job stating no disk reserves, ``DEFAULT_DISK``, is what it may write, however large the node's
    per-job disk: it used to be that per-job disk, reserved by nothing."""
    from dataclasses import replace

    from jobs import Resources
    from jobs.spec import DEFAULT_DISK

    request = make_request(tmp_path, script="dd if=/dev/zero of=/outputs/big bs=1M count=1100; sleep 30",
                           outputs=[{"name": "out", "path": "/outputs"}])
    request = replace(request, limits=Resources(cpu=2, memory="1GiB", disk="100GiB"))
    with trio.fail_after(120):
        result = await executor.run(request)
    assert result.exit_code != 0
    assert f"disk limit exceeded: wrote more than {DEFAULT_DISK} bytes (" in result.stderr, result.stderr


async def test_one_call_cannot_take_disk_past_the_jobs_limit(executor, tmp_path):
    """The disk watch looks every 0.1 s: one ``fallocate`` took 20 GiB of the node's disk between two looks. Now
    the call says it is not supported, and what the job writes instead is watched as any write."""
    request = make_request(tmp_path, script="fallocate -l 20G /outputs/big; echo fallocate=$?; sleep 30",
                           outputs=[{"name": "out", "path": "/outputs"}], resources={"disk": "10MiB"}, timeout=120)
    with trio.fail_after(120):
        result = await executor.run(request)
    assert result.exit_code != 0 and "fallocate=0" not in result.stdout
    assert "disk limit exceeded" in result.stderr, result.stderr
    big = request.outputs_dir / "out" / "big"
    assert not big.exists() or big.stat().st_blocks * 512 < 4 * 1024**3  # at most a few looks' writing, not 20 GiB


async def test_files_a_job_deleted_but_holds_open_count_against_its_disk(executor, tmp_path):
    """No walk of the job's folders finds a file it deleted while it holds it open: a 10 MiB job held 20 GiB
    so for its whole run, and completed. Five such files of 9 MiB each now end it, as any 45 MiB would."""
    script = ("for i in 3 4 5 6 7; do eval \"exec $i>/outputs/f$i\"; rm /outputs/f$i; "
              "dd if=/dev/zero bs=1M count=9 2>/dev/null >&$i; done; echo held; sleep 600")
    request = make_request(tmp_path, script=script, outputs=[{"name": "out", "path": "/outputs"}],
                           resources={"disk": "10MiB"}, timeout=900)
    with trio.fail_after(120):  # not its ten minutes
        result = await executor.run(request)
    assert result.exit_code != 0
    assert "disk limit exceeded: wrote more than 10485760 bytes (" in result.stderr, result.stderr
    # nothing written is to be found there: it was all held open (the kill may come between a file's creation by
    # exec and its rm, leaving that one empty)
    assert [f.stat().st_size for f in (request.outputs_dir / "out").iterdir()] in ([], [0])


MAPPED = """
import mmap, os
N = 400 << 20
f = open("/outputs/x", "w+b")
os.unlink("/outputs/x")
f.truncate(N)
m = mmap.mmap(f.fileno(), N)
f.close()
for fd in os.listdir("/proc/self/fd"):  # mmap keeps a dup of the descriptor: close that too
    try:
        if "(deleted)" in os.readlink(f"/proc/self/fd/{fd}"):
            os.close(int(fd))
    except OSError:
        pass
chunk = b"\\xa5" * (1 << 20)
for mib in range(N >> 20):
    m[mib << 20:(mib + 1) << 20] = chunk
    print(mib + 1, flush=True)
print("wrote it all", flush=True)
"""


async def test_a_file_a_job_deleted_and_writes_through_a_mapping_counts_against_its_disk(executor, tmp_path):
    """A file deleted and mapped, with every descriptor to it closed, is in no folder and no /proc/PID/fd: a
    10 MiB job wrote 3 GiB to the node's disk through the mapping (the memory cgroup writes its pages back), and
    completed. It is counted as it is written, and the job stopped."""
    request = make_request(tmp_path, outputs=[{"name": "out", "path": "/outputs"}],
                           engine={"image": "shoal/python:3", "entrypoint": ["python3", "-c"], "args": [MAPPED]},
                           resources={"disk": "10MiB", "memory": "64MiB"}, timeout=120)
    with trio.fail_after(120):
        result = await executor.run(request)
    assert result.exit_code != 0 and "wrote it all" not in result.stdout, result.stdout[-200:]
    assert "disk limit exceeded: wrote more than 10485760 bytes (" in result.stderr, result.stderr
    written = int(result.stdout.split()[-1]) if result.stdout.strip() else 0
    assert written < 100, written  # MiB written before it was stopped: a few looks' worth, not 400

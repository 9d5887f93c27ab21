"""A sandbox gets no socket, against real bubblewrap and seccomp.

Its network namespace is empty, but loopback is up in it, and the kernel's socket buffers count in no
memory cgroup: job code that reached Node.js held 760 MiB of loopback TCP buffers from a 64 MiB job.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from executors.sandbox import Limits, Sandbox, filter_descriptor, socket_filter

TRY_SOCKETS = """\
import socket
for name, make in [
    ("tcp", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM)),
    ("udp", lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)),
    ("tcp6", lambda: socket.socket(socket.AF_INET6, socket.SOCK_STREAM)),
    ("unix", lambda: socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)),
    ("pair", lambda: socket.socketpair()),
]:
    try:
        make()
        print(name, "got one")
    except OSError as e:
        print(name, e.strerror)
"""


@pytest.fixture
def sandbox() -> Sandbox:
    sandbox = Sandbox([])  # /usr/bin/python3 is in the /usr every sandbox has
    if sandbox.problem():
        pytest.skip(sandbox.problem())
    if socket_filter() is None:
        pytest.skip(f"no socket filter for {os.uname().machine}")
    return sandbox


def run_inside(sandbox: Sandbox, code: str, *, filtered: bool) -> str:
    """What ``code`` prints, run by python3 in ``sandbox``, with the socket filter or without."""
    program = socket_filter() if filtered else None
    seccomp = filter_descriptor(program) if program else None
    slot = sandbox.new_slot()
    try:
        argv = sandbox.command(["/usr/bin/python3", "-c", code], slot=slot, env={}, limits=Limits(), seccomp=seccomp)
        done = subprocess.run(argv, capture_output=True, text=True, timeout=60, pass_fds=(seccomp,) if seccomp else ())
    finally:
        slot.remove()
        if seccomp is not None:
            os.close(seccomp)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_nothing_in_a_sandbox_gets_a_socket(sandbox: Sandbox) -> None:
    assert run_inside(sandbox, TRY_SOCKETS, filtered=False).count("got one") == 5  # what the filter takes away
    assert run_inside(sandbox, TRY_SOCKETS, filtered=True).splitlines() == [
        f"{name} Permission denied" for name in ("tcp", "udp", "tcp6", "unix", "pair")]


def test_the_filter_lets_every_other_call_through(sandbox: Sandbox) -> None:
    code = ("import os, threading, time; t = threading.Thread(target=time.sleep, args=(0,)); t.start(); t.join(); "
            "r, w = os.pipe(); os.write(w, b'ok'); print(os.read(r, 2).decode(), len(os.listdir('/usr')) > 0)")
    assert run_inside(sandbox, code, filtered=True) == "ok True\n"

"""The seccomp profile of docker jobs, built from Docker's default (the kernel's use of it: the docker tests)."""

from __future__ import annotations

import errno
import http.server
import io
import json
import socket
import threading
import zipfile

import pytest

from executors import docker_seccomp
from executors.docker_seccomp import SOCKET_FAMILIES, job_profile

DEFAULT = {
    "defaultAction": "SCMP_ACT_ERRNO",
    "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
    "syscalls": [
        {"names": ["accept", "io_uring_setup", "read", "socket", "socketcall", "socketpair"],
         "action": "SCMP_ACT_ALLOW"},
        {"names": ["socket"], "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_NET_RAW"]}},
        {"names": ["personality"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 8, "op": "SCMP_CMP_EQ"}]},
    ],
}


def test_sockets_are_allowed_for_the_unix_and_internet_families_only():
    profile = job_profile(DEFAULT)
    allowed = [rule for rule in profile["syscalls"] if "socket" in rule["names"]]
    assert [rule["args"] for rule in allowed] == [[{"index": 0, "value": family, "op": "SCMP_CMP_EQ"}]
                                                  for family in SOCKET_FAMILIES]
    assert SOCKET_FAMILIES == (socket.AF_UNIX, socket.AF_INET, socket.AF_INET6)
    pairs = [rule for rule in profile["syscalls"] if "socketpair" in rule["names"]]
    assert [rule["args"] for rule in pairs] == [[{"index": 0, "value": socket.AF_UNIX, "op": "SCMP_CMP_EQ"}]]


def test_what_makes_sockets_unseen_is_refused_and_everything_else_is_dockers():
    profile = job_profile(DEFAULT)
    names = {name for rule in profile["syscalls"] for name in rule["names"]}
    assert not names & {"socketcall", "io_uring_setup"}
    assert profile["defaultAction"] == "SCMP_ACT_ERRNO"
    assert profile["syscalls"][0] == {"names": ["accept", "read"], "action": "SCMP_ACT_ALLOW"}
    assert profile["syscalls"][1] == DEFAULT["syscalls"][2]  # the rule left with no name is gone


def test_fallocate_says_it_is_not_supported():
    """It took 20 GiB in one call between two looks of the disk watch (with KEEP_SIZE, past RLIMIT_FSIZE too);
    EOPNOTSUPP, not EPERM, makes glibc's posix_fallocate write instead, which the file size limit bounds."""
    rules = [rule for rule in job_profile({**DEFAULT, "syscalls": [*DEFAULT["syscalls"], {
        "names": ["fallocate", "write"], "action": "SCMP_ACT_ALLOW"}]})["syscalls"] if "fallocate" in rule["names"]]
    assert rules == [{"names": ["fallocate"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.EOPNOTSUPP}]


def test_no_32_bit_call_is_allowed():
    # x86's socket calls go through socketcall, whose family seccomp cannot read
    assert job_profile(DEFAULT)["archMap"] == [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": []}]


def test_the_default_profile_is_fetched_once_into_the_first_place_it_can_be_written(tmp_path, monkeypatch):
    (tmp_path / "a-file").write_text("")
    monkeypatch.setattr(docker_seccomp, "PROFILE", tmp_path / "a-file" / "docker-seccomp.json")  # cannot be made
    monkeypatch.setattr(docker_seccomp, "USER_PROFILE", tmp_path / "cache" / "docker-seccomp.json")
    asked = []

    def fetch(version: str, proxy: str) -> bytes:
        asked.append(version)
        if version != docker_seccomp.PINNED_VERSION:
            raise OSError("HTTP Error 404: Not Found")  # a daemon version the proxy does not have
        return b'{"syscalls": []}'

    monkeypatch.setattr(docker_seccomp, "fetch", fetch)
    said = []
    assert docker_seccomp.ensure("27.1.0+dfsg1", said.append) == tmp_path / "cache" / "docker-seccomp.json"
    assert asked == ["27.1.0", docker_seccomp.PINNED_VERSION]
    assert docker_seccomp.USER_PROFILE.read_bytes() == b'{"syscalls": []}'
    assert docker_seccomp.ensure("27.1.0", said.append) == docker_seccomp.USER_PROFILE
    assert len(asked) == 2  # once


def test_a_fetched_profile_that_allows_what_it_does_not_name_is_refused():
    # it comes from a proxy over the network: one allowing every call would leave jobs less bound than Docker's
    for profile in ({**DEFAULT, "defaultAction": "SCMP_ACT_ALLOW"}, {"defaultAction": "SCMP_ACT_ERRNO"}, []):
        with pytest.raises(ValueError):
            job_profile(profile)


def test_a_proxy_serving_a_profile_that_allows_everything_gets_nothing_written(tmp_path, monkeypatch):
    version = docker_seccomp.PINNED_VERSION
    module = io.BytesIO()
    with zipfile.ZipFile(module, "w") as archive:
        archive.writestr(f"github.com/docker/docker@v{version}+incompatible/profiles/seccomp/default.json",
                         json.dumps({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": []}))

    class Proxy(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(module.getvalue())

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Proxy)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("GOPROXY", f"http://127.0.0.1:{server.server_address[1]}")
        monkeypatch.setattr(docker_seccomp, "PROFILE", tmp_path / "docker-seccomp.json")
        monkeypatch.setattr(docker_seccomp, "USER_PROFILE", tmp_path / "cache" / "docker-seccomp.json")
        said = []
        assert docker_seccomp.ensure(version, said.append) is None
        assert "refuses what it does not name" in said[-1]
        assert not docker_seccomp.PROFILE.exists() and not docker_seccomp.USER_PROFILE.exists()
    finally:
        server.shutdown()


def test_nodes_fetching_the_profile_at_once_each_write_it_whole(tmp_path, monkeypatch):
    # three devstack nodes installed from the wheel take their first docker jobs at the same moment
    monkeypatch.setattr(docker_seccomp, "PROFILE", tmp_path / "docker-seccomp.json")
    monkeypatch.setattr(docker_seccomp, "USER_PROFILE", tmp_path / "cache" / "docker-seccomp.json")
    profile = json.dumps({**DEFAULT, "padding": "x" * (8 << 20)}).encode()  # a write long enough to overlap
    writers = 8
    fetched = threading.Barrier(writers)

    def fetch(version: str, proxy: str) -> bytes:
        fetched.wait(timeout=30)
        return profile

    monkeypatch.setattr(docker_seccomp, "fetch", fetch)
    found: list = []
    threads = [threading.Thread(target=lambda: found.append(docker_seccomp.ensure("20.10.24", lambda _: None)))
               for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert found == [docker_seccomp.PROFILE] * writers
    assert docker_seccomp.PROFILE.read_bytes() == profile
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docker-seccomp.json"]  # no partial file left

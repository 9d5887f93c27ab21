"""What the node writes or hands back after a job never goes through a link the job left.

The node runs as root; a job controls what stands in its own folders. An output named '..' once gave a
docker job the node's results folder: it linked ``stdout`` there to a host file, which the node then wrote
as root, and replaced its outputs folder with a link to a host tree, which the node then chowned to root.
Names are refused now (``OutputSpec``); these are the layers beneath.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from compute.runner import _write_new
from executors._common import own_again


@pytest.mark.skipif(os.geteuid() != 0, reason="handing files to another uid takes root")
def test_handing_back_a_jobs_files_never_follows_a_link_left_in_their_place(tmp_path: Path) -> None:
    host = tmp_path / "host"
    (host / "bin").mkdir(parents=True)
    (host / "bin" / "tool").write_text("#!/bin/sh\n")
    tree = [host, host / "bin", host / "bin" / "tool"]
    for path in tree:
        os.chown(path, 1234, 1234)
    outputs = tmp_path / "outputs"
    outputs.symlink_to(host)
    own_again(outputs)
    assert {path.stat().st_uid for path in tree} == {1234}


def test_a_result_file_is_written_new_never_through_a_link(tmp_path: Path) -> None:
    target = tmp_path / "authorized_keys"
    target.write_text("the owner's key\n")
    results = tmp_path / "results"
    results.mkdir()
    (results / "stdout").symlink_to(target)
    _write_new(results / "stdout", "ssh-ed25519 AAAA attacker\n")
    assert target.read_text() == "the owner's key\n"
    assert not (results / "stdout").is_symlink() and (results / "stdout").read_text() == "ssh-ed25519 AAAA attacker\n"

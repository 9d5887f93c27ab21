"""The python engine's memory cgroups on cgroup v2, which most hosts have and this one may not.

``test_cgroups.py`` runs again in a VM with cgroup v2 only (``tests/vm.py``), as a systemd service with
``Delegate=memory pids``: the node's cgroup is its own, and its parent gives it the memory and pids controllers. Skipped
where no VM boots, unless ``SHOAL_REQUIRE_VM=1`` (CI sets it after ``scripts/install-vm``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests import vm

ROOT = Path(__file__).resolve().parents[2]
# What must hold on v2: each of these passed in the VM (the rest of the file is for v1 alone, but for the python
# engine's, which would build Pyodide's snapshot under an emulated CPU: V8 failed to, once)
ON_V2 = [
    "test_a_sandbox_and_what_it_starts_are_held_to_its_cgroups_limit",
    "test_a_limit_below_what_the_processes_hold_is_refused_and_the_old_one_stays",
    "test_the_cgroups_of_a_node_that_died_are_removed_by_the_next",
    "test_a_cgroup_whose_process_is_still_there_is_removed_by_a_later_one",
    "test_on_cgroup_v2_a_node_alone_in_its_cgroup_moves_into_a_leaf_beside_its_sandboxes",
    "test_on_cgroup_v2_a_node_that_is_not_root_holds_its_sandboxes_in_the_cgroup_delegated_to_it",
    "test_on_cgroup_v2_a_node_that_shares_its_cgroup_makes_none_and_says_why",
    "test_on_cgroup_v2_a_sandbox_sharing_the_nodes_uid_is_held_to_its_own_count_of_processes",
    "test_on_cgroup_v2_a_node_takes_the_children_it_started_into_its_leaf",
    "test_job_code_that_reaches_the_os_cannot_raise_its_own_limits",
    "test_on_cgroup_v2_job_code_on_a_node_that_is_not_root_cannot_raise_its_own_limits",
]


@pytest.fixture
def booted() -> None:
    problem = vm.problem()
    if problem:
        if os.environ.get("SHOAL_REQUIRE_VM") == "1":
            pytest.fail(problem)
        pytest.skip(problem)


def test_memory_cgroups_hold_sandboxes_on_cgroup_v2(booted: None) -> None:
    run = vm.run_in_vm([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rA", "--color=no",
                        "-k", "not python_engine", "tests/integration/test_cgroups.py"],
                       cwd=ROOT, env={"PYTHONDONTWRITEBYTECODE": "1"})
    assert run.returncode == 0, run.console[-6000:]
    passed = {line.split("::")[-1].strip() for line in run.console.splitlines() if line.startswith("PASSED ")}
    assert set(ON_V2) <= passed, run.console[-6000:]

"""How ``describe`` and ``shoal id`` word resources: a job that states no disk is not shown to get none."""

from cli.render import fmt_resources
from jobs import Resources


def test_a_job_that_states_no_disk_is_shown_to_get_the_default():
    unstated = Resources(cpu=1, memory=64 * 1024**2)
    assert fmt_resources(unstated, job=True) == ("1 CPU, 64 MiB memory, 1 GiB disk (the default; less on a node "
                                                 "whose per-job limit is less)")
    stated = Resources(cpu=0.5, memory=64 * 1024**2, disk=1024**3)
    assert fmt_resources(stated, job=True) == "0.5 CPU, 64 MiB memory, 1 GiB disk"


def test_a_nodes_capacity_says_what_it_has_even_when_none():
    assert fmt_resources(Resources(cpu=2, memory=1024**3, disk=0)) == "2 CPU, 1 GiB memory, 0 B disk"

"""Several Shoal nodes on one machine, for trying Shoal out, tests and benchmarks."""

from devstack.stack import Devstack, NodeProcess, main, state_file

__all__ = ["Devstack", "NodeProcess", "main", "state_file"]

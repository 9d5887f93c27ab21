"""Executors run one job execution each, behind one small interface."""

from executors._common import tree_size
from executors.base import Executor, ExecutorError, LiveOutput, Mount, RunRequest
from executors.noop import NoopExecutor
from executors.registry import ExecutorRegistry, default_registry

__all__ = [
    "Executor",
    "ExecutorError",
    "ExecutorRegistry",
    "LiveOutput",
    "Mount",
    "NoopExecutor",
    "RunRequest",
    "default_registry",
    "tree_size",
]

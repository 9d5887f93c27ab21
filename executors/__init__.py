"""Executors run one job execution each, behind one small interface."""

from executors.base import Executor, ExecutorError, RunRequest
from executors.noop import NoopExecutor
from executors.registry import ExecutorRegistry, default_registry

__all__ = ["Executor", "ExecutorError", "ExecutorRegistry", "NoopExecutor", "RunRequest", "default_registry"]

"""SQLite persistence for a node: jobs, executions and the append-only event log."""

from node.store.db import Store, StoreClosed, StoreStatistics

__all__ = ["Store", "StoreClosed", "StoreStatistics"]

"""SQLite persistence for a node: jobs, executions and the append-only event log."""

from node.store.db import ExpiredRecords, Store, StoreClosed, StoreStatistics, StoreUnavailable
from node.store.schema import StoreDamaged, StoreTooNew

__all__ = ["ExpiredRecords", "Store", "StoreClosed", "StoreDamaged", "StoreStatistics", "StoreTooNew",
           "StoreUnavailable"]

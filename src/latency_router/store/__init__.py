"""Persistence: the latency table's snapshots in an embedded SQLite file."""

from latency_router.store.snapshot import (
    APPLICATION_ID,
    SCHEMA_VERSION,
    LoadResult,
    PreparedSnapshot,
    SaveResult,
    SnapshotStore,
    StoreError,
)

__all__ = [
    "APPLICATION_ID", "SCHEMA_VERSION", "LoadResult", "PreparedSnapshot", "SaveResult", "SnapshotStore", "StoreError",
]

"""The decider: the latency table and, beside it, the policies that read its snapshots."""

from latency_router.decider.table import (
    HealthState,
    LatencyTable,
    RowKey,
    RowSnapshot,
    TableConfig,
    TableSnapshot,
)

__all__ = ["HealthState", "LatencyTable", "RowKey", "RowSnapshot", "TableConfig", "TableSnapshot"]

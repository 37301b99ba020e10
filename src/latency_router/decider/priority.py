"""Sorter `priority`: the service's `priority` list first, in its order (failover), then the other regions in service order."""

from __future__ import annotations

from latency_router.decider.decision import Candidate
from latency_router.decider.plan import Plan


def apply(candidates: list[Candidate], plan: Plan, now: float) -> list[Candidate]:
    """The candidates ordered by priority."""
    rank, order = plan.priority_rank, plan.order
    last = len(order)
    return sorted(candidates, key=lambda c: (rank.get(c.region, last), order[c.region]))

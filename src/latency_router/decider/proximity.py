"""Sorter `proximity`: nearest first by great-circle distance scaled by each region's bias (Route 53 geoproximity)."""

from __future__ import annotations

from latency_router.decider.decision import Candidate
from latency_router.decider.plan import Plan


def apply(candidates: list[Candidate], plan: Plan, now: float) -> list[Candidate]:
    """The candidates ordered by biased distance; a group with no location keeps the service's region order."""
    distance, order = plan.distance_km, plan.order
    if not distance:
        return sorted(candidates, key=lambda c: order[c.region])
    return sorted(candidates, key=lambda c: (distance[c.region], order[c.region]))

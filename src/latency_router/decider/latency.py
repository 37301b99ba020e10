"""Sorter `latency`: fastest first by the service's metric (EWMA by default); no data last; ties by region order."""

from __future__ import annotations

import math

from latency_router.decider.decision import Candidate
from latency_router.decider.plan import Plan


def apply(candidates: list[Candidate], plan: Plan, now: float) -> list[Candidate]:
    """The candidates ordered by RTT."""
    order = plan.order
    inf = math.inf
    return sorted(candidates, key=lambda c: (inf if c.rtt_ms is None else c.rtt_ms, order[c.region]))

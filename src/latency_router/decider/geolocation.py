"""Filter `geolocation`: the group's mapped region, then the default region ('*'), and nothing else (as Route 53 geolocation)."""

from __future__ import annotations

from latency_router.decider.decision import Candidate
from latency_router.decider.plan import Plan

EXCLUDED = "not mapped"


def apply(candidates: list[Candidate], plan: Plan, now: float) -> list[Candidate]:
    """The mapped region first and the default after it, where they are still candidates."""
    by_region = {c.region: c for c in candidates}
    return [by_region[r] for r in plan.geo_order if r in by_region]

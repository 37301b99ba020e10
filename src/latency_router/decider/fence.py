"""Filter `fence`: keep only the regions that the group's first matching fence (by group, country or CIDR) allows."""

from __future__ import annotations

from latency_router.decider.decision import Candidate
from latency_router.decider.plan import Plan

EXCLUDED = "fenced"


def apply(candidates: list[Candidate], plan: Plan, now: float) -> list[Candidate]:
    """The candidates the fence allows; all of them when no fence matches the group."""
    allowed = plan.allowed
    if allowed is None:
        return candidates
    return [c for c in candidates if c.region in allowed]

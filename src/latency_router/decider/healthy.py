"""Filter `healthy`: drop candidates the table does not take for healthy (down or stale, and unknown if so configured)."""

from __future__ import annotations

from latency_router.decider.decision import Candidate
from latency_router.decider.plan import Plan

EXCLUDED = "unhealthy"


def apply(candidates: list[Candidate], plan: Plan, now: float) -> list[Candidate]:
    """The healthy candidates, in their order."""
    return [c for c in candidates if c.healthy]

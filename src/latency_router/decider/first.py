"""Selector `first`: the first candidate takes every answer."""

from __future__ import annotations

from latency_router.decider.decision import WEIGHT_SCALE, Candidate
from latency_router.decider.plan import Plan


def apply(candidates: list[Candidate], plan: Plan, now: float) -> list[Candidate]:
    """The first candidate, with the whole weight."""
    return [candidates[0]._replace(weight=WEIGHT_SCALE)] if candidates else []

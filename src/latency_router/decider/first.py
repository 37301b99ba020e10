"""Selector `first`: the first candidate takes every answer."""

from __future__ import annotations

from latency_router.decider.decision import WEIGHT_SCALE, Candidate
from latency_router.decider.plan import Plan


def apply(candidates: list[Candidate], plan: Plan, now: float) -> list[Candidate]:
    """The first candidate, with the whole weight."""
    if not candidates:
        return []
    c = candidates[0]
    return [tuple.__new__(Candidate, (*c[:6], WEIGHT_SCALE, *c[7:]))]  # c._replace(weight=...), without its overhead

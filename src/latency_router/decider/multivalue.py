"""Selector `multivalue N`: the first N candidates share the answers equally (Route 53 multivalue gives up to 8)."""

from __future__ import annotations

from latency_router.decider.decision import Candidate, share_weights
from latency_router.decider.plan import Plan


def apply(candidates: list[Candidate], plan: Plan, now: float) -> list[Candidate]:
    """The first `plan.count` candidates, equal weights summing to 255."""
    chosen = candidates[: plan.count]
    return [c._replace(weight=w) for c, w in zip(chosen, share_weights(len(chosen)))]

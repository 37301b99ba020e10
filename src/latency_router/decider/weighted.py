"""Selector `weighted`: every candidate with a configured weight above 0 (all alike when none is set), as Route 53 weighted."""

from __future__ import annotations

from latency_router.decider.decision import Candidate, share_weights
from latency_router.decider.plan import Plan


def apply(candidates: list[Candidate], plan: Plan, now: float) -> list[Candidate]:
    """The weighted candidates, heaviest first, their weights scaled to sum to 255."""
    weights = plan.weights
    chosen = [c for c in candidates if weights[c.region] > 0]
    if not chosen:  # Route 53: when every weight is 0, all records are returned alike
        chosen, raw = list(candidates), None
    else:
        raw = [weights[c.region] for c in chosen]
    shares = share_weights(len(chosen), raw)
    ranked = sorted(zip(chosen, shares), key=lambda cw: -cw[1])  # stable: ties keep the chain's order
    return [c._replace(weight=w) for c, w in ranked]

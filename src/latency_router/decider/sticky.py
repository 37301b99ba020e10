"""Selector `sticky N`: a pool of the first N candidates; each client prefix sticks to one of them by rendezvous hashing."""

from __future__ import annotations

from latency_router.decider.decision import Candidate, share_weights, sticky_pick
from latency_router.decider.plan import Plan


def apply(candidates: list[Candidate], plan: Plan, now: float) -> list[Candidate]:
    """The pool, the group's own pick first (hashed on the group name); a client's pick is made at lookup."""
    pool = candidates[: plan.count]
    if not pool:
        return []
    chosen = sticky_pick(tuple(pool), plan.group)
    ordered = [chosen] + [c for c in pool if c is not chosen]
    return [c._replace(weight=w) for c, w in zip(ordered, share_weights(len(ordered)))]

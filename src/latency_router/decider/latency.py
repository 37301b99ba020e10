"""Sorter `latency`: fastest first by the service's metric (EWMA by default); no data last; ties keep their order."""

from __future__ import annotations

import math
from operator import itemgetter

from latency_router.decider.decision import Candidate
from latency_router.decider.plan import Plan


_RTT = itemgetter(3)  # Candidate.rtt_ms


def _rtt(c: Candidate) -> float:
    return math.inf if c.rtt_ms is None else c.rtt_ms


def apply(candidates: list[Candidate], plan: Plan, now: float) -> list[Candidate]:
    """The candidates ordered by RTT; the sort is stable, so ties keep the order they came in (the service's)."""
    try:
        return sorted(candidates, key=_RTT)  # in C: every RTT measured (a None meets a float and raises)
    except TypeError:
        return sorted(candidates, key=_rtt)

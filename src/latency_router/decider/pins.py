"""Pins: an operator's override of one (service, group) decision, applied over the policy's live decision.

The policy keeps deciding underneath a pin (its state and hysteresis go on), so an unpin returns at once to
what the policy chooses now; the pinned decision says what the policy would have chosen.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

from latency_router.decider.decision import WEIGHT_SCALE, Candidate, Decision
from latency_router.decider.plan import Plan


class Pin(NamedTuple):
    """Where an operator pinned a (service, group): a region over one of its paths."""

    region: str
    path: str


def apply_pin(decision: Decision, pin: Pin, plan: Plan, rows: Mapping[tuple[str, str], Any]) -> Decision:
    """The decision with the pin in force: the pinned answer alone, its candidate first with every weight on it."""
    answer = plan.answers[(pin.region, pin.path)]
    row = rows.get((pin.region, pin.path))
    rtt = None if row is None else plan.metric_of(row)
    pinned = Candidate(pin.region, pin.path, answer, rtt, "none" if row is None else str(row.health),
                       False if row is None else row.healthy, WEIGHT_SCALE)
    others = tuple(c._replace(weight=0) for c in decision.candidates if (c.region, c.path) != pin)
    live = f"{decision.region} via {decision.path}" if decision.region else "no answer"
    return decision._replace(
        region=pin.region,
        path=pin.path,
        answers=(answer,),
        rtt_ms=rtt,
        basis="pinned",
        fallback=None,
        path_margin_ms=None,
        candidates=(pinned, *others),
        sticky_pool=(),
        reason=f"{pin.region} via {pin.path}: pinned by an operator; the policy would choose {live} ({decision.reason})",
    )

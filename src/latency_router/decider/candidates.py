"""Candidates from table rows: one per region, over the path the measured path choice picks for it."""

from __future__ import annotations

from typing import Any, Mapping

from latency_router.decider.decision import Candidate
from latency_router.decider.plan import Plan

Rows = Mapping[tuple[str, str], Any]  # (region, path) -> RowSnapshot


def path_candidate(rows: Rows, plan: Plan, region: str, path: str) -> Candidate:
    """The candidate for one (region, path), with no path comparison."""
    answer = plan.answers[(region, path)]
    row = rows.get((region, path))
    if row is None:
        return Candidate(region, path, answer, None, "none", False)
    return Candidate(region, path, answer, plan.metric_of(row), row.health, row.healthy)


def beats(challenger_ms: float | None, incumbent_ms: float | None, margin_ms: float, ratio: float) -> bool:
    """True when the challenger is faster than the incumbent by at least max(margin_ms, ratio x incumbent)."""
    if challenger_ms is None:
        return False
    if incumbent_ms is None:
        return True  # a measured path beats one with no data
    return incumbent_ms - challenger_ms >= max(margin_ms, ratio * incumbent_ms)


_new = tuple.__new__  # builds a Candidate without NamedTuple's Python-level __new__: this loop runs per region per group


def build_candidates(rows: Rows, plan: Plan) -> tuple[list[Candidate], bool]:
    """One candidate per region of the service, in the service's region order; and whether the picture is incomplete.

    Each region goes over its primary path, unless another healthy path beats it by the path margin, or the
    primary is down and another path is healthy. Incomplete: some healthy row (probed, or set up to be) has no RTT yet.
    """
    metric = plan.metric_of
    margin_ms, ratio = plan.path_margin_ms, plan.path_margin_ratio
    get = rows.get
    # a path with no row is not healthy, unless the group has no rows at all (nothing measured yet: all unknown)
    unmeasured = not rows
    out = []
    append = out.append
    missing = False
    for region in plan.regions:
        name = region.name
        path, answer = region.paths[0]
        row = get(region.primary_key)
        if row is None:
            rtt, health, ok = None, "none", unmeasured
        else:
            rtt, health, ok = metric(row), row.health, row.healthy
            if rtt is None and ok:
                missing = True  # probed (or set up to be) and healthy, but no RTT yet
        best = None
        for other_path, other_answer, other_key in region.others:
            other = get(other_key)
            if other is None or not other.healthy:
                continue
            value = metric(other)
            if value is None:
                missing = True
            elif best is None or value < best[0]:
                best = (value, other_path, other_answer, other.health)
        if best is None:
            append(_new(Candidate, (name, path, answer, rtt, health, ok, 0, None, None)))
            continue
        value, other_path, other_answer, other_health = best
        # the primary stays unless it is down or the other path leads by max(margin, ratio x primary)
        if ok and rtt is not None and rtt - value < (margin_ms if margin_ms > ratio * rtt else ratio * rtt):
            append(_new(Candidate, (name, path, answer, rtt, health, ok, 0, value - rtt, None)))
        else:
            # against a down (or unmeasured) primary there is no margin to speak of: the reason says it is down
            margin = None if rtt is None or not ok else rtt - value
            append(_new(Candidate, (name, other_path, other_answer, value, other_health, True, 0, margin, None)))
    return out, missing

"""Candidates from table rows: one per region, over the path the measured path choice picks for it."""

from __future__ import annotations

from typing import Any, Mapping

from latency_router.decider.decision import Candidate
from latency_router.decider.plan import Plan, RegionPlan

Rows = Mapping[tuple[str, str], Any]  # (region, path) -> RowSnapshot


def path_candidate(rows: Rows, plan: Plan, region: str, path: str, answer: str) -> Candidate:
    """The candidate for one (region, path), with no path comparison."""
    row = rows.get((region, path))
    if row is None:
        return Candidate(region, path, answer, None, "none", True)
    return Candidate(region, path, answer, getattr(row, plan.metric), row.health, row.healthy)


def beats(challenger_ms: float | None, incumbent_ms: float | None, margin_ms: float, ratio: float) -> bool:
    """True when the challenger is faster than the incumbent by at least max(margin_ms, ratio x incumbent)."""
    if challenger_ms is None:
        return False
    if incumbent_ms is None:
        return True  # a measured path beats one with no data
    return incumbent_ms - challenger_ms >= max(margin_ms, ratio * incumbent_ms)


def region_candidate(rows: Rows, plan: Plan, region: RegionPlan) -> Candidate:
    """The region over its primary path, unless another healthy path beats it by the path margin (or the primary is down)."""
    paths = region.paths
    primary = path_candidate(rows, plan, region.name, *paths[0])
    if len(paths) == 1:
        return primary
    others = [path_candidate(rows, plan, region.name, *p) for p in paths[1:]]
    healthy_others = [c for c in others if c.healthy and c.rtt_ms is not None]
    best = min(healthy_others, key=lambda c: c.rtt_ms) if healthy_others else None  # type: ignore[arg-type,return-value]
    if best is None:
        return primary
    if primary.healthy and not beats(best.rtt_ms, primary.rtt_ms, plan.path_margin_ms, plan.path_margin_ratio):
        chosen, other = primary, best
    else:
        chosen, other = best, primary
    margin = None if chosen.rtt_ms is None or other.rtt_ms is None else other.rtt_ms - chosen.rtt_ms
    return chosen._replace(path_margin_ms=margin)


def build_candidates(rows: Rows, plan: Plan) -> list[Candidate]:
    """One candidate per region of the service, in the service's region order."""
    return [region_candidate(rows, plan, r) for r in plan.regions]

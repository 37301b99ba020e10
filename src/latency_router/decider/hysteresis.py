"""Hysteresis: the incumbents stay until a challenger beats one by max(margin, ratio) for N evaluations in a row, past the dwell.

An incumbent that a filter dropped (down, stale, fenced) is replaced at once; so is a missing one (the first evaluation).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from latency_router.decider.candidates import beats
from latency_router.decider.decision import Candidate
from latency_router.decider.plan import Plan

Target = tuple[str, str]  # (region, path)


@dataclass(frozen=True, slots=True)
class Held:
    """The ranking with the held incumbents first, the streaks to carry on, and what happened in words."""

    ranked: list[Candidate]
    incumbents: tuple[Target, ...]
    streaks: tuple[tuple[Target, int], ...]
    moved: bool  # the incumbents changed this evaluation
    note: str  # why an incumbent was kept or replaced, "" when nothing contested it


def _beats(challenger: Candidate, incumbent: Candidate, plan: Plan, position: dict[str, int]) -> bool:
    if plan.latency_ranked or challenger.region == incumbent.region:
        return beats(challenger.rtt_ms, incumbent.rtt_ms, plan.margin_ms, plan.margin_ratio)
    return position[challenger.region] < position[incumbent.region]


def _lead(challenger: Candidate, incumbent: Candidate) -> str:
    if challenger.rtt_ms is None or incumbent.rtt_ms is None:
        return "ranks ahead"
    return f"leads by {incumbent.rtt_ms - challenger.rtt_ms:.1f} ms"


def hold(
    ranked: list[Candidate],
    size: int,
    plan: Plan,
    now: float,
    incumbents: tuple[Target, ...],
    streaks: tuple[tuple[Target, int], ...],
    changed_at: float | None,
    candidate_for: Callable[[str, str], Candidate],
) -> Held:
    """Apply hysteresis to the top `size` of `ranked`; candidate_for(region, path) builds an incumbent's own path."""
    desired = ranked[:size]
    if not incumbents:
        ids = tuple((c.region, c.path) for c in desired)
        return Held(ranked, ids, (), bool(ids), "")
    position = {c.region: i for i, c in enumerate(ranked)}
    held: list[Candidate] = []
    notes: list[str] = []
    vacated = False
    for region, path in incumbents:
        current = ranked[position[region]] if region in position else None
        if current is None:
            vacated = True
            notes.append(f"left {region} at once (no longer a candidate)")
            continue
        if current.path != path:
            own = candidate_for(region, path)
            if not own.healthy or own.rtt_ms is None:
                vacated = True
                notes.append(f"left {region} via {path} at once ({own.health})")
                continue
            margin = None if current.rtt_ms is None else current.rtt_ms - own.rtt_ms
            current = own._replace(path_margin_ms=margin)
        held.append(current)
    # a vacancy is filled at once by the best candidate not already held
    taken = {c.region for c in held}
    for c in ranked:
        if len(held) >= size:
            break
        if c.region not in taken:
            held.append(c)
            taken.add(c.region)
            vacated = True
    old = dict(streaks)
    kept: dict[Target, int] = {}
    moved = vacated
    dwell_left = 0.0 if changed_at is None else plan.dwell_s - (now - changed_at)
    for c in desired:
        if any(h.region == c.region and h.path == c.path for h in held):
            continue
        same_region = [h for h in held if h.region == c.region]
        if same_region:
            rival = same_region[0]
        elif plan.latency_ranked:
            rival = max(held, key=lambda h: (h.rtt_ms is None, h.rtt_ms or 0.0, position.get(h.region, 0)))
        else:
            rival = max(held, key=lambda h: position.get(h.region, len(position)))
        if not _beats(c, rival, plan, position):
            if plan.latency_ranked and rival.rtt_ms is not None:
                need = max(plan.margin_ms, plan.margin_ratio * rival.rtt_ms)
                notes.append(
                    f"holding {rival.region} via {rival.path}: {c.region} via {c.path} {_lead(c, rival)}, under the {need:.1f} ms margin"
                )
            continue
        target = (c.region, c.path)
        run = old.get(target, 0) + 1
        if run >= plan.evaluations and (vacated or dwell_left <= 0):
            held[held.index(rival)] = c
            moved = True
            notes.append(f"moved from {rival.region} via {rival.path}: {c.region} via {c.path} {_lead(c, rival)} for {run} evaluations")
            continue
        kept[target] = run
        wait = f"{run} of {plan.evaluations} evaluations" if run < plan.evaluations else f"dwell for {dwell_left:.0f} s more"
        notes.append(f"holding {rival.region} via {rival.path}: {c.region} via {c.path} {_lead(c, rival)} ({wait})")
    held.sort(key=lambda h: position.get(h.region, len(position)))
    held_regions = {h.region for h in held}
    out = held + [c for c in ranked if c.region not in held_regions]
    return Held(out, tuple((h.region, h.path) for h in held), tuple(kept.items()), moved, "; ".join(notes))

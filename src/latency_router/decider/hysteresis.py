"""Hysteresis: the incumbents stay until challengers beat the weakest by max(margin, ratio) for N evaluations in a row, past the dwell.

A path change within a region is held the same way: the accelerator is chosen only when it beats direct by the path
margin, and once held, direct must beat it by the hysteresis margin to take over again (noise inside that margin
never flips the path, at the price of keeping an accelerator up to that margin slower). An incumbent that a filter dropped (down, stale, fenced) is replaced at once; so is a missing one (the first
evaluation) and one with no measurement while a measured challenger exists. The streak belongs to the decision, not
to one challenger: two challengers that trade first place while both beat the incumbent still win after N evaluations.
Held members keep their order, so a reorder inside a held set (noise) is not a change.
"""

from __future__ import annotations

from typing import NamedTuple

from latency_router.decider.candidates import Rows, beats, path_candidate
from latency_router.decider.decision import Candidate
from latency_router.decider.plan import Plan

Target = tuple[str, str]  # (region, path)


class Held(NamedTuple):
    """The ranking with the held incumbents first, the streak to carry on, and what happened in words."""

    ranked: list[Candidate]
    incumbents: tuple[Target, ...]
    streak: int  # evaluations in a row in which a challenger beat the weakest incumbent
    note: str  # why an incumbent was kept or replaced, "" when nothing contested it


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
    streak: int,
    changed_at: float | None,
    rows: Rows,
) -> Held:
    """Apply hysteresis to the top `size` of `ranked`; `rows` give an incumbent whose path is not its region's pick now."""
    desired = ranked[:size]
    if not incumbents:
        return Held(ranked, tuple((c.region, c.path) for c in desired), 0, "")
    if len(desired) == len(incumbents) and all(c[:2] == t for c, t in zip(desired, incumbents)):  # (region, path)
        return tuple.__new__(Held, (ranked, incumbents, 0, ""))  # the incumbents lead: nothing to contest
    position = {c.region: i for i, c in enumerate(ranked)}
    held: list[Candidate] = []
    notes: list[str] = []
    for region, path in incumbents:
        current = ranked[position[region]] if region in position else None
        if current is None:
            notes.append(f"left {region} at once (no longer a candidate)")
            continue
        if current.path != path:
            own = path_candidate(rows, plan, region, path)
            if not own.healthy or own.rtt_ms is None:
                notes.append(f"left {region} via {path} at once ({own.health})")
                continue
            margin = None if current.rtt_ms is None else current.rtt_ms - own.rtt_ms
            current = own._replace(path_margin_ms=margin)
        held.append(current)
    moved = len(held) < len(incumbents)  # a vacancy: filling it, and a challenger's move, skip the dwell
    # a vacancy (or room to grow) is filled at once by the best candidates not already held
    taken = {c.region for c in held}
    for c in ranked:
        if len(held) >= size:
            break
        if c.region not in taken:
            held.append(c)
            taken.add(c.region)
            moved = True
    held_ids = {(h.region, h.path) for h in held}
    challengers = [c for c in desired if (c.region, c.path) not in held_ids]
    new_streak = 0
    if challengers and held:
        c = challengers[0]  # the best challenger
        same_region = [h for h in held if h.region == c.region]
        if same_region:
            rival = same_region[0]  # a path change within a held region
        elif plan.latency_ranked:
            rival = max(held, key=lambda h: (h.rtt_ms is None, h.rtt_ms or 0.0))
        else:
            rival = max(held, key=lambda h: position.get(h.region, len(position)))
        if plan.latency_ranked or same_region:
            won = beats(c.rtt_ms, rival.rtt_ms, plan.margin_ms, plan.margin_ratio)
        else:
            won = position[c.region] < position.get(rival.region, len(position))
        dwell_left = 0.0 if changed_at is None else plan.dwell_s - (now - changed_at)
        if won and rival.rtt_ms is None and c.rtt_ms is not None:
            held[held.index(rival)] = c  # nothing measured to defend
            moved = True
            notes.append(f"moved from {rival.region} via {rival.path} (no measurement) to {c.region} via {c.path}")
        elif won:
            new_streak = streak + 1
            if new_streak >= plan.evaluations and (moved or dwell_left <= 0):
                held[held.index(rival)] = c
                moved = True
                notes.append(
                    f"moved from {rival.region} via {rival.path}: {c.region} via {c.path} {_lead(c, rival)}, "
                    f"a lead held for {new_streak} evaluations"
                )
                new_streak = 0
            else:
                wait = (
                    f"{new_streak} of {plan.evaluations} evaluations"
                    if new_streak < plan.evaluations
                    else f"dwell for {dwell_left:.0f} s more"
                )
                notes.append(f"holding {rival.region} via {rival.path}: {c.region} via {c.path} {_lead(c, rival)} ({wait})")
        elif plan.latency_ranked and rival.rtt_ms is not None:
            need = max(plan.margin_ms, plan.margin_ratio * rival.rtt_ms)
            notes.append(
                f"holding {rival.region} via {rival.path}: {c.region} via {c.path} {_lead(c, rival)}, "
                f"within the {need:.1f} ms hysteresis margin"
            )
    held_regions = {h.region for h in held}
    out = held + [c for c in ranked if c.region not in held_regions]
    return Held(out, tuple((h.region, h.path) for h in held), new_streak, "; ".join(notes))

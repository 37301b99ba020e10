"""A policy: the pure function (snapshot rows, compiled config, now, state) -> (decision, state) that runs a filter chain."""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple

from latency_router.decider import fence, first, geolocation, healthy, latency, multivalue, priority, proximity, sticky, weighted
from latency_router.decider.candidates import Rows, build_candidates
from latency_router.decider.decision import Candidate, Decision
from latency_router.decider.hysteresis import Target, hold
from latency_router.decider.plan import Plan
from latency_router.decider.steps import FILTERS, SORTERS, Step

StepFn = Callable[[list[Candidate], Plan, float], list[Candidate]]
# the one map from step name to its code; the names themselves live in steps.py
STEPS: dict[str, Any] = {
    "healthy": healthy,
    "fence": fence,
    "geolocation": geolocation,
    "latency": latency,
    "proximity": proximity,
    "priority": priority,
    "first": first,
    "weighted": weighted,
    "multivalue": multivalue,
    "sticky": sticky,
}
HELD_SELECTORS = ("first", "multivalue", "sticky", "weighted")
_new = tuple.__new__
DRAINED = "drained"  # what a drained region's candidate is excluded as: before every step, fail-open included


class PolicyState(NamedTuple):
    """What a policy remembers between evaluations: incumbents, challenger streaks, the last change, the last good decision."""

    incumbents: tuple[Target, ...] = ()
    streak: int = 0  # evaluations in a row in which a challenger beat the weakest incumbent
    changed_at: float | None = None
    last: tuple[str | None, str | None, tuple[str, ...]] | None = None  # (region, path, answers) last handed out
    last_good: Decision | None = None


INITIAL = PolicyState()


@functools.lru_cache(maxsize=256)
def _compile(steps: tuple[Step, ...]) -> tuple[tuple[tuple[str, StepFn, str | None], ...], str | None]:
    """The chain's filters and sorter as (name, apply, label of what a filter drops), and the sorter's name."""
    chain = tuple(
        (s.name, STEPS[s.name].apply, STEPS[s.name].EXCLUDED if s.name in FILTERS else None) for s in steps[:-1]
    )
    return chain, next((s.name for s in steps if s.name in SORTERS), None)


_by_identity: dict[int, tuple[tuple[Step, ...], Any]] = {}


def _compiled(steps: tuple[Step, ...]) -> tuple[tuple[tuple[str, StepFn, str | None], ...], str | None]:
    """_compile(steps), found by the tuple's identity first: a plan's steps are the service's one tuple."""
    hit = _by_identity.get(id(steps))
    if hit is not None and hit[0] is steps:
        return hit[1]
    out = _compile(steps)
    if len(_by_identity) > 1024:
        _by_identity.clear()
    _by_identity[id(steps)] = (steps, out)  # the tuple is kept alive, so its id is not reused while cached
    return out


def _run(cands: list[Candidate], plan: Plan, now: float, skip_healthy: bool) -> tuple[list[Candidate], list[Candidate]]:
    """Run the filters and the sorter; return (ranked, excluded with their reasons)."""
    excluded: list[Candidate] = []
    current = cands
    drained = plan.drained
    if drained:
        excluded = [c._replace(excluded=DRAINED) for c in cands if c.region in drained]
        current = [c for c in cands if c.region not in drained]
    for name, apply, label in _compiled(plan.steps)[0]:
        if skip_healthy and name == "healthy":
            continue
        kept = apply(current, plan, now)
        if label is not None and len(kept) < len(current):
            ids = {id(c) for c in kept}
            excluded += [c._replace(excluded=label) for c in current if id(c) not in ids]
        current = kept
    return current, excluded


def _rank_reason(plan: Plan, ranked: list[Candidate], chosen: Candidate) -> str:
    sorter = _compiled(plan.steps)[1]
    if sorter == "latency":
        if chosen.rtt_ms is None:
            return "no measurements yet: first in the service's order"
        # ranked is in RTT order (held incumbents aside): the next measured region is the runner-up
        nxt = next((c for c in ranked if c.region != chosen.region and c.rtt_ms is not None), None)
        if nxt is None:
            return f"the only candidate left ({chosen.rtt_ms:.1f} ms)"
        return f"{chosen.rtt_ms:.1f} ms; fastest other region {nxt.region} at {nxt.rtt_ms:.1f} ms"
    if sorter == "priority":
        return f"priority {plan.priority_rank.get(chosen.region, len(plan.order)) + 1} of the candidates left"
    if sorter == "proximity":
        km = plan.distance_km.get(chosen.region)
        return "no group location: first in the service's order" if km is None else f"nearest by biased distance ({km:.0f} km)"
    if any(s.name == "geolocation" for s in plan.steps):
        return f"mapped for group {plan.group}" if chosen.region == plan.geo_mapped else "the default ('*') region"
    return "first in the service's order"


def _path_reason(chosen: Candidate, plan: Plan) -> str:
    m = chosen.path_margin_ms
    primary = plan.primary.get(chosen.region)
    if m is None:
        return "" if chosen.path == primary else f"{chosen.path} because {primary} is down or unmeasured"
    if m >= 0:
        return f"{chosen.path} is {m:.1f} ms faster than the other path"
    return f"{chosen.path} kept: the other path is {-m:.1f} ms faster, within the margin"


def _all_down(plan: Plan, now: float, state: PolicyState) -> tuple[str, tuple[str, ...], str | None, str | None, float | None, str, str]:
    """(fallback, answers, region, path, rtt_ms, basis, reason) when no candidate is left."""
    # a drained region is out of every decision: its last good answers are not handed out again
    if plan.all_down == "last-known-good" and state.last_good is not None and state.last_good.region not in plan.drained:
        g = state.last_good
        why = f"every region is down: last known good {g.region} via {g.path}, decided at t={g.evaluated_at:.0f}"
        return "last-known-good", g.answers, g.region, g.path, g.rtt_ms, g.basis, why
    if plan.all_down == "static":
        return "static", plan.fallback, None, None, None, "static", "every region is down: the static fallback answers"
    if plan.all_down == "last-known-good":
        return "last-known-good", (), None, None, None, "none", "every region is down and there is no last known good: no answer"
    return "none", (), None, None, None, "none", "every region is down: no answer (all_down = 'none')"


def decide(rows: Rows, plan: Plan, now: float, state: PolicyState = INITIAL, warming: bool = False,
           candidates: tuple[list[Candidate], bool] | None = None) -> tuple[Decision, PolicyState]:
    """Decide for one (service, group) from its table rows at `now`; returns the decision and the state to pass next time.

    `warming`: the caller knows the picture is partial (not every path has been probed since start, e.g. after a
    restart that restored older rows): the decision is provisional, as when a healthy path has no RTT yet.
    `candidates`: what build_candidates(rows, plan) gives, when the caller has it already (vector.py).
    """
    cands, missing = build_candidates(rows, plan) if candidates is None else candidates
    provisional = missing or warming
    ranked, excluded = _run(cands, plan, now, skip_healthy=False)
    fallback = None
    if not ranked and any(c.excluded == healthy.EXCLUDED for c in excluded) and plan.all_down == "fail-open":
        # Route 53: when every record is unhealthy, answer as if all were healthy
        fallback = "fail-open"
        ranked, excluded = _run(cands, plan, now, skip_healthy=True)
    selector = plan.steps[-1].name
    incumbents, streak, note = state.incumbents, state.streak, ""
    if ranked and selector in HELD_SELECTORS:
        # weighted answers every candidate: hysteresis then damps each region's path choice
        size = 1 if selector == "first" else len(ranked) if selector == "weighted" else plan.count
        held = hold(ranked, size, plan, now, state.incumbents, state.streak, state.changed_at, rows)
        ranked, incumbents, streak, note = held.ranked, held.incumbents, held.streak, held.note
    chosen = STEPS[selector].apply(ranked, plan, now) if ranked else []
    if chosen:
        top = chosen[0]
        region, path, rtt_ms = top.region, top.path, top.rtt_ms
        answers = tuple(c.answer for c in chosen)
        basis = "measured" if rtt_ms is not None else "unknown"
        if provisional:
            # made on part of the picture: not an incumbent to defend, the next evaluation chooses afresh
            basis = "provisional"
            incumbents, streak = (), 0
        parts = [f"{region} via {path}: {_rank_reason(plan, ranked, top)}"]
        if selector != "first":
            parts.append(f"{selector} selector gives {len(chosen)} answer{'s' if len(chosen) != 1 else ''}")
        if fallback:
            parts.insert(0, "every region is down: fail-open, answering as if all were healthy")
        parts += [p for p in (_path_reason(top, plan), note) if p]
        if missing:
            parts.append("provisional: some healthy paths have no measurement yet")
        elif warming:
            parts.append("provisional: not every path has been probed since the start")
        if excluded:
            down = [c.region for c in excluded if c.excluded == healthy.EXCLUDED]
            if down and not fallback:
                parts.append("down: " + ", ".join(down))
            if drained := [c.region for c in excluded if c.excluded == DRAINED]:
                parts.append("drained by an operator: " + ", ".join(drained))
        reason = "; ".join(parts)
        path_margin = top.path_margin_ms
    elif not any(c.excluded == healthy.EXCLUDED for c in excluded):
        # no region is allowed at all (a fence or geolocation map without one): no answer, and no all-down behaviour
        why = sorted({c.excluded for c in excluded if c.excluded})
        region = path = rtt_ms = path_margin = None
        answers, basis, incumbents, streak = (), "none", (), 0
        reason = f"no region is allowed for group {plan.group} ({', '.join(why) or 'no regions'}): no answer"
    else:
        fallback, answers, region, path, rtt_ms, basis, reason = _all_down(plan, now, state)
        path_margin = None
        incumbents, streak = (), 0
    if selector == "first" and chosen:
        rest = ranked[1:]  # first takes ranked[0]
    else:
        chosen_regions = {c.region for c in chosen}
        rest = [c for c in ranked if c.region not in chosen_regions]
    target = (region, path, answers)
    changed = state.last != target
    changed_at = now if changed or state.changed_at is None else state.changed_at
    # positional, in Decision's field order (tuple.__new__ skips NamedTuple's keyword handling: this runs per group)
    decision = _new(Decision, (
        plan.service, plan.group, plan.policy, region, path, answers, rtt_ms, plan.ttl, basis, reason, fallback,
        path_margin, (*chosen, *rest, *excluded), now, changed_at, tuple(chosen) if selector == "sticky" else (),
    ))
    good = decision if fallback is None and answers else state.last_good
    return decision, _new(PolicyState, (incumbents, streak, changed_at, target, good))


def rows_for(snapshot: Any, plan: Plan) -> Mapping[tuple[str, str], Any]:
    """The group's rows in the snapshot: under its own name, else under its vantage's."""
    for name in plan.row_groups:
        rows = snapshot.group_rows(name)
        if rows:
            return rows
    return {}

"""Replay metrics: regret against the truth, flips inside and outside event windows, time to leave and return per outage."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from latency_router.probes.stats import percentile

Choice = tuple[str, str] | None  # (region, path) a policy chose for a group, None for no answer
Key = tuple[str, str, str]  # (group, region, path)

OPTIMAL_FLOOR_MS = 1.0  # DESIGN.md: optimal means regret at most max(1 ms, 2 %) of the optimal truth
OPTIMAL_RATIO = 0.02
WITHIN_MS = (5.0, 10.0, 20.0)

DEFINITIONS = {
    "regret_ms": "truth_ms of the chosen (region, path) at that step minus the minimum truth_ms over the policy's "
    "regions x paths at that step (truth_ms of the rows of the step the decision was evaluated at the end of)",
    "points": "(group, evaluation) pairs where at least one of the policy's (region, path) had a truth; others are not scored",
    "optimal_pct": "share of points with regret <= max(1 ms, 2 % of the optimal truth)",
    "optimal_pct_vs_best_direct": "the same, against the best direct path only (the optimum without accelerators): how "
    "a region choice fares where the accelerator is not an option; the data set's own README quotes this kind of figure",
    "within_Xms_pct": "share of points with regret <= X ms",
    "dead_choices": "points where the chosen (region, path) had no truth at that step (it was down); they count as "
    "neither optimal nor within any bound and are left out of the regret percentiles",
    "no_answer": "points where the policy gave no region; counted like dead choices (not optimal, no regret)",
    "flips": "a group's (region, path) changing between two consecutive evaluations that both gave an answer, "
    "except a move away from a provisional decision (made while some healthy row had no RTT yet, e.g. a lost first "
    "probe): those are counted apart as provisional_moves",
    "flips_per_group_hour": "flips / (groups x evaluated hours)",
    "flips_per_group_hour_outside_events": "flips at evaluations outside every event window / (groups x hours outside them); "
    "windows (start excluded, end included): outage (start, end + settle], step (t, t + settle], oscillation (start, end], and outages seen in the truth like outages",
    "outages.leave_s": "for groups on the region (or path) at the last evaluation at or before the outage start: seconds "
    "from the start to the first later evaluation not on it; max is null when a group never left",
    "outages.return_s": "for groups whose optimal region is the outage's region again at the first step after its end: "
    "seconds from the end to the first later evaluation back on it; null when never",
}


@dataclass(frozen=True)
class OutageSpan:
    """A region (or one of its paths) without truth or reachability from start_s (inclusive) to end_s (exclusive)."""

    region: str
    start_s: float
    end_s: float
    path: str | None = None
    source: str = "events"  # "events" (the sidecar) or "truth" (rows with an empty truth_ms)

    def hits(self, choice: Choice) -> bool:
        """True when the choice sends traffic into this outage."""
        return choice is not None and choice[0] == self.region and (self.path is None or choice[1] == self.path)

    def to_json(self) -> dict[str, Any]:
        return {"region": self.region, "path": self.path, "start_s": self.start_s, "end_s": self.end_s, "source": self.source}


def event_windows(events: Iterable[Mapping[str, Any]], outages: Iterable[OutageSpan], settle_s: float, t_end_s: float) -> list[tuple[float, float]]:
    """Return the merged [from, to] windows in which flips are expected: outages + settle, steps + settle, oscillations."""
    spans: list[tuple[float, float]] = []
    for ev in events:
        kind = ev.get("kind")
        if kind == "outage":
            spans.append((float(ev["t_start_s"]), float(ev["t_end_s"]) + settle_s))
        elif kind == "step":
            spans.append((float(ev["t_s"]), float(ev["t_s"]) + settle_s))
        elif kind == "oscillation":
            end = ev.get("t_end_s")
            spans.append((float(ev.get("t_start_s", 0.0)), float(end) if end is not None else t_end_s))
    spans.extend((o.start_s, o.end_s + settle_s) for o in outages)
    merged: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return merged


def _inside(t: float, windows: Sequence[tuple[float, float]]) -> bool:
    # an evaluation at the very start of a window was made on data from before the event
    return any(a < t <= b for a, b in windows)


def regret_summary(regrets_ms: Sequence[float]) -> dict[str, float | None]:
    """Mean, p50, p95 and p99 of the regrets (None for each when there are none)."""
    if not regrets_ms:
        return {"mean": None, "p50": None, "p95": None, "p99": None}
    ordered = sorted(regrets_ms)
    return {
        "mean": math.fsum(ordered) / len(ordered),
        "p50": percentile(ordered, 50),
        "p95": percentile(ordered, 95),
        "p99": percentile(ordered, 99),
    }


def _spread(values: Sequence[float], never: int) -> dict[str, Any]:
    ordered = sorted(values)
    return {
        "max": ordered[-1] if ordered and not never else None,
        "p50": percentile(ordered, 50) if ordered else None,
        "never": never,
    }


class PolicyScore:
    """What one policy chose for each group at each evaluation, and the running regret counts."""

    def __init__(self, name: str, kind: str, candidates: Sequence[tuple[str, str]], groups: Sequence[str], covered: Sequence[bool] | None = None) -> None:
        self.name = name
        self.kind = kind  # "service" or "baseline"
        self.candidates = tuple(candidates)
        self.groups = tuple(groups)
        self.covered = tuple(covered) if covered is not None else (True,) * len(self.groups)
        self.choices: list[tuple[Choice, ...]] = []
        self.optimal_keys: list[tuple[Choice, ...]] = []  # per evaluation, per group: the optimal (region, path)
        self.points = self.optimal = self.dead = self.no_answer = 0
        self.direct_points = self.optimal_vs_direct = 0
        self.within = [0] * len(WITHIN_MS)
        self.regrets_ms: list[float] = []
        self.flip_times: list[float] = []
        self.provisional_moves = 0
        self._provisional: Sequence[bool] = ()
        self.extra: dict[str, Any] = {}

    def record(
        self,
        now: float,
        choices: Sequence[Choice],
        optima: Sequence[tuple[float, Choice] | None],
        truth: Mapping[Key, float | None],
        provisional: Sequence[bool] = (),
        direct_optima: Sequence[tuple[float, Choice] | None] = (),
    ) -> None:
        """Score one evaluation: choices and optima per group (optimum None where the group has no truth)."""
        previous = self.choices[-1] if self.choices else None
        was_provisional, self._provisional = self._provisional, provisional
        self.choices.append(tuple(choices))
        self.optimal_keys.append(tuple(o[1] if o is not None else None for o in optima))
        for gi, choice in enumerate(choices):
            if not self.covered[gi]:
                continue
            if previous is not None and choice is not None and previous[gi] is not None and previous[gi] != choice:
                if was_provisional and was_provisional[gi]:
                    self.provisional_moves += 1
                else:
                    self.flip_times.append(now)
            best = optima[gi]
            if best is None:
                continue
            self.points += 1
            best_direct = direct_optima[gi] if direct_optima else None
            if best_direct is not None:
                self.direct_points += 1
                chosen_ms = truth.get((self.groups[gi], choice[0], choice[1])) if choice is not None else None
                if chosen_ms is not None and chosen_ms - best_direct[0] <= max(OPTIMAL_FLOOR_MS, OPTIMAL_RATIO * best_direct[0]):
                    self.optimal_vs_direct += 1
            if choice is None:
                self.no_answer += 1
                continue
            truth_ms = truth.get((self.groups[gi], choice[0], choice[1]))
            if truth_ms is None:
                self.dead += 1
                continue
            regret = truth_ms - best[0]
            if regret < 0:
                regret = 0.0  # a choice outside the policy's candidates can beat their optimum; it is no regret
            self.regrets_ms.append(regret)
            if regret <= max(OPTIMAL_FLOOR_MS, OPTIMAL_RATIO * best[0]):
                self.optimal += 1
            for i, bound in enumerate(WITHIN_MS):
                if regret <= bound:
                    self.within[i] += 1

    def _pct(self, count: int) -> float | None:
        return 100.0 * count / self.points if self.points else None

    def outage_report(self, outage: OutageSpan, times: Sequence[float]) -> dict[str, Any]:
        """Who was on the outage's region when it began, how long they took to leave, and to return once it was optimal again."""
        covered = [gi for gi in range(len(self.groups)) if self.covered[gi]]
        before = [i for i, t in enumerate(times) if t <= outage.start_s]
        on_dead = [gi for gi in covered if before and outage.hits(self.choices[before[-1]][gi])]
        leave: list[float] = []
        never_left = 0
        after_start = [i for i, t in enumerate(times) if t > outage.start_s]
        for gi in on_dead:
            left = next((times[i] for i in after_start if not outage.hits(self.choices[i][gi])), None)
            if left is None:
                never_left += 1
            else:
                leave.append(left - outage.start_s)
        after_end = [i for i, t in enumerate(times) if t > outage.end_s]
        comeback: list[float] = []
        never_returned = 0
        returning: list[str] = []
        if after_end:
            first = after_end[0]
            for gi in covered:
                if not outage.hits(self.optimal_keys[first][gi]):
                    continue
                returning.append(self.groups[gi])
                back = next((times[i] for i in after_end if outage.hits(self.choices[i][gi])), None)
                if back is None:
                    never_returned += 1
                else:
                    comeback.append(back - outage.end_s)
        return {
            **outage.to_json(),
            "groups_on_region": [self.groups[gi] for gi in on_dead],
            "leave_s": _spread(leave, never_left),
            "groups_returning": returning,
            "return_s": _spread(comeback, never_returned),
        }

    def report(self, times: Sequence[float], interval_s: float, windows: Sequence[tuple[float, float]], outages: Sequence[OutageSpan], has_truth: bool) -> dict[str, Any]:
        """The policy's metrics as report.json holds them."""
        n_groups = sum(self.covered)
        hours = len(times) * interval_s / 3600.0
        outside_evals = sum(1 for t in times if not _inside(t, windows))
        hours_outside = outside_evals * interval_s / 3600.0
        flips_outside = sum(1 for t in self.flip_times if not _inside(t, windows))
        out: dict[str, Any] = {"kind": self.kind, **self.extra, "groups": n_groups, "evaluations": len(times)}
        if has_truth:
            out.update(
                points=self.points,
                optimal_pct=self._pct(self.optimal),
                optimal_pct_vs_best_direct=100.0 * self.optimal_vs_direct / self.direct_points if self.direct_points else None,
                **{f"within_{int(b)}ms_pct": self._pct(n) for b, n in zip(WITHIN_MS, self.within)},
                regret_ms=regret_summary(self.regrets_ms),
                dead_choices=self.dead,
                no_answer=self.no_answer,
            )
        out.update(
            flips=len(self.flip_times),
            provisional_moves=self.provisional_moves,
            flips_per_group_hour=len(self.flip_times) / (n_groups * hours) if n_groups and hours else None,
            flips_outside_events=flips_outside,
            flips_per_group_hour_outside_events=flips_outside / (n_groups * hours_outside) if n_groups and hours_outside else None,
            outages=[self.outage_report(o, times) for o in outages],
        )
        return out


def detect_outages(down_steps: Mapping[tuple[str, str], Sequence[int]], region_paths: Mapping[str, Sequence[str]], t0_s: float, interval_s: float) -> list[OutageSpan]:
    """Turn the steps at which every row of a (region, path) lacked truth into outages: whole regions where all paths agree."""
    runs: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for key, steps in down_steps.items():
        spans: list[tuple[int, int]] = []
        for k in sorted(steps):
            if spans and k == spans[-1][1]:
                spans[-1] = (spans[-1][0], k + 1)
            else:
                spans.append((k, k + 1))
        runs[key] = spans
    found: list[OutageSpan] = []
    for region, paths in region_paths.items():
        per_path = [set(runs.get((region, p), ())) for p in paths]
        whole = set.intersection(*per_path) if per_path else set()
        for a, b in sorted(whole):
            found.append(OutageSpan(region, t0_s + a * interval_s, t0_s + b * interval_s, None, "truth"))
        for p, spans in zip(paths, per_path):
            for a, b in sorted(spans - whole):
                found.append(OutageSpan(region, t0_s + a * interval_s, t0_s + b * interval_s, p, "truth"))
    return sorted(found, key=lambda o: (o.start_s, o.region, o.path or ""))


def merge_outages(from_events: Sequence[OutageSpan], from_truth: Sequence[OutageSpan]) -> list[OutageSpan]:
    """The sidecar's outages, plus those seen in the truth that no sidecar outage of the same region and path overlaps."""
    kept = list(from_events)
    for o in from_truth:
        if not any(e.region == o.region and e.path == o.path and e.start_s < o.end_s and o.start_s < e.end_s for e in from_events):
            kept.append(o)
    return sorted(kept, key=lambda o: (o.start_s, o.region, o.path or ""))

"""The replay evaluator: feed a LatencyTable from a samples CSV step by step, run every policy on its snapshots, score them."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from latency_router.config.models import Config, GroupConfig, ServiceConfig
from latency_router.decider.table import LatencyTable, TableConfig, TableSnapshot
from latency_router.probes.base import LossReason, Sample
from latency_router.replay.baselines import Nearest, RoundRobin, Route53Like
from latency_router.replay.generate import params_path_for
from latency_router.replay.metrics import (
    DEFINITIONS,
    Choice,
    Key,
    OutageSpan,
    PolicyScore,
    detect_outages,
    event_windows,
    merge_outages,
)
from latency_router.replay.samples import SamplesError, SamplesFile

DEFAULT_SETTLE_S = 60.0
DEFAULT_R53_REFRESH_S = 300.0
DECISIONS_HEADER = ("t_s", "service", "group", "region", "path")


class DeciderLike(Protocol):
    """What replay needs of latency_router.decider.engine.Decider."""

    def evaluate(self, snapshot: TableSnapshot, now: float) -> Mapping[tuple[str, str], Any]: ...


DeciderFactory = Callable[[Config, tuple[ServiceConfig, ...]], DeciderLike]


class Baseline(Protocol):
    name: str
    covered: tuple[bool, ...]

    def choose(self, snapshot: TableSnapshot, now: float) -> tuple[Choice, ...]: ...


def _real_decider(config: Config, services: tuple[ServiceConfig, ...]) -> DeciderLike:
    from latency_router.decider.engine import Decider

    return Decider(config, services=services)


@dataclass(frozen=True)
class ReplayResult:
    """report.json's object, and what the plot needs beside it: each policy's scores, the evaluation times, the event windows."""

    report: dict[str, Any]
    scores: tuple[PolicyScore, ...]
    times: tuple[float, ...]
    windows: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class ReplaySettings:
    """How the replay scores: the settle time after events, the Route 53-like refresh period."""

    settle_s: float = DEFAULT_SETTLE_S
    r53_refresh_s: float = DEFAULT_R53_REFRESH_S


def reference_service(config: Config) -> ServiceConfig:
    """The first latency-policy service of the config, or a default latency service over every region."""
    for service in config.services:
        if service.policy == "latency":
            return service
    return ServiceConfig.model_validate(
        {"name": "latency", "policy": "latency", "regions": [r.name for r in config.regions]}
    )


def _free_name(wanted: str, taken: set[str]) -> str:
    name = wanted
    while name in taken:
        name = f"baseline.{name}"
    taken.add(name)
    return name


def read_sidecar(samples_path: Path) -> dict[str, Any] | None:
    """The `<csv>.params.json` written by `replay generate`, or None when there is none."""
    sidecar = params_path_for(samples_path)
    if not sidecar.is_file():
        return None
    try:
        return json.loads(sidecar.read_text())
    except (OSError, ValueError) as exc:
        raise SamplesError(f"{sidecar.name}: not a readable params JSON ({exc})") from None


class _StepTruth:
    """The truth_ms of one step's rows, and each group's optimum over a candidate set (computed once per set)."""

    __slots__ = ("truth", "any_missing", "_optima")

    def __init__(self) -> None:
        self.truth: dict[Key, float | None] = {}
        self.any_missing = False
        self._optima: dict[int, tuple[tuple[float, Choice] | None, ...]] = {}

    def optima(self, set_id: int, keys_by_group: Sequence[Sequence[Key]]) -> tuple[tuple[float, Choice] | None, ...]:
        found = self._optima.get(set_id)
        if found is not None:
            return found
        truth = self.truth
        out: list[tuple[float, Choice] | None] = []
        for keys in keys_by_group:
            best: tuple[float, Choice] | None = None
            for key in keys:
                t = truth.get(key)
                if t is not None and (best is None or t < best[0]):
                    best = (t, (key[1], key[2]))
            out.append(best)
        found = self._optima[set_id] = tuple(out)
        return found


def replay(
    config: Config,
    samples_path: Path | str,
    *,
    config_name: str = "the config",
    settings: ReplaySettings = ReplaySettings(),
    decisions_csv: Path | str | None = None,
    decider_factory: DeciderFactory | None = None,
) -> ReplayResult:
    """Replay the samples through every service of the config and the baselines, scoring each one."""
    started = time.perf_counter()
    samples_path = Path(samples_path)
    samples = SamplesFile(samples_path)
    sidecar = read_sidecar(samples_path)
    interval_s = config.probing.interval_s
    groups: tuple[GroupConfig, ...] = config.groups
    group_names = tuple(g.name for g in groups)
    group_index = {g: i for i, g in enumerate(group_names)}
    region_paths = {r.name: tuple(p.name for p in r.paths) for r in config.regions}

    ref = reference_service(config)
    services, baselines, notes = _policies(config, ref, settings)
    decider = (decider_factory or _real_decider)(config, services)
    scores, keys_by_set, direct_keys_by_set = _scores(config, ref, services, baselines, group_names, region_paths)
    service_scores = scores[: len(services)]
    baseline_scores = scores[len(services):]

    table = LatencyTable(TableConfig.from_settings(config.probing, config.health, config.table))
    known: dict[Key, tuple[str, int]] = {}  # key -> (probe target text, group index)
    times: list[float] = []
    down_steps: dict[tuple[str, str], list[int]] = {}
    out_fh = open(decisions_csv, "w", newline="") if decisions_csv is not None else None  # noqa: SIM115
    writer = csv.writer(out_fh) if out_fh is not None else None
    if writer is not None:
        writer.writerow(DECISIONS_HEADER)

    def check(key: Key, line: int) -> None:
        group, region, path = key
        where = f"{samples_path} line {line}"
        if group not in group_index:
            raise SamplesError(f"{where}: group {group!r} is not a group of {config_name}")
        if region not in region_paths:
            raise SamplesError(f"{where}: region {region!r} is not a region of {config_name}")
        if path not in region_paths[region]:
            raise SamplesError(f"{where}: path {path!r} is not a path of region {region!r} in {config_name}")
        known[key] = (f"replay://{region}/{path}", group_index[group])

    def finish(step: int, counts: dict[Key, list[int]], truth: _StepTruth, t0: float) -> None:
        now = t0 + (step + 1) * interval_s
        add_round = table.add_round
        down: dict[tuple[str, str], bool] = {}
        for key, (sent, lost) in counts.items():
            add_round(key, lost / sent, now)
        if truth.any_missing and samples.has_truth:  # only steps with an empty truth can hold an outage
            for key, t in truth.truth.items():
                rp = (key[1], key[2])
                down[rp] = down.get(rp, True) and t is None
            for rp, is_down in down.items():
                if is_down:
                    down_steps.setdefault(rp, []).append(step)
        snapshot = table.snapshot(now)
        decisions = decider.evaluate(snapshot, now)
        times.append(now)
        rows: list[tuple[Any, ...]] = []
        t_text = _time_text(now)
        for score, set_id in service_scores:
            choices: list[Choice] = []
            provisional: list[bool] = []
            for g in group_names:
                d = decisions.get((score.name, g))
                region = getattr(d, "region", None)
                path = getattr(d, "path", None)
                choices.append((region, path) if region is not None and path is not None else None)
                provisional.append(getattr(d, "basis", None) == "provisional")
            direct = truth.optima(-1 - set_id, direct_keys_by_set[set_id])
            score.record(now, choices, truth.optima(set_id, keys_by_set[set_id]), truth.truth, provisional, direct)
            if writer is not None:
                rows.extend(_rows(t_text, score.name, group_names, choices))
        for (score, set_id), b in zip(baseline_scores, baselines):
            choices_b = b.choose(snapshot, now)
            direct = truth.optima(-1 - set_id, direct_keys_by_set[set_id])
            score.record(now, choices_b, truth.optima(set_id, keys_by_set[set_id]), truth.truth, (), direct)
            if writer is not None:
                rows.extend(_rows(t_text, score.name, group_names, choices_b))
        if writer is not None:
            writer.writerows(rows)

    t0: float | None = None
    step = 0
    step_start = boundary = -math.inf  # [step_start, boundary): the times of the current step
    counts: dict[Key, list[int]] = {}
    truth = _StepTruth()
    step_truth = truth.truth
    add_sample = table.add_sample
    timeout = LossReason.TIMEOUT
    try:
        for line, t_s, group, region, path, rtt_ms, truth_ms in samples:
            if not step_start <= t_s < boundary:
                if t0 is None:
                    t0 = t_s
                k = int(math.floor((t_s - t0) / interval_s + 1e-9))
                if k < step:
                    raise SamplesError(
                        f"{samples_path} line {line}: t_s: {t_s} is before the step being replayed "
                        f"(from {t0 + step * interval_s:g} s); sort the file by t_s"
                    )
                while k > step:
                    finish(step, counts, truth, t0)
                    step += 1
                    counts, truth = {}, _StepTruth()
                    step_truth = truth.truth
                # the 1e-9 above admits times a rounding error early: keep the fast test consistent with it
                step_start, boundary = min(t_s, t0 + step * interval_s), t0 + (step + 1) * interval_s - 1e-9 * interval_s
            key = (group, region, path)
            info = known.get(key)
            if info is None:
                check(key, line)
                info = known[key]
            c = counts.get(key)
            if c is None:
                c = counts[key] = [0, 0]
            c[0] += 1
            if rtt_ms is None:
                c[1] += 1
                add_sample(key, Sample(info[0], "replay", t_s, None, timeout), t_s)
            else:
                add_sample(key, Sample(info[0], "replay", t_s, rtt_ms), t_s)
            step_truth[key] = truth_ms  # several rows of a key in one step: the last one's truth stands
            if truth_ms is None:
                truth.any_missing = True
        if t0 is None:
            raise SamplesError(f"{samples_path}: no sample rows after the header")
        finish(step, counts, truth, t0)
    finally:
        if out_fh is not None:
            out_fh.close()

    events = list((sidecar or {}).get("params", {}).get("events", []))
    from_events = [
        OutageSpan(e["region"], float(e["t_start_s"]), float(e["t_end_s"]), e.get("path"), "events")
        for e in events
        if e.get("kind") == "outage" and e.get("region") in region_paths
    ]
    outages = merge_outages(from_events, detect_outages(down_steps, region_paths, t0, interval_s))
    windows = event_windows(events, [o for o in outages if o.source == "truth"], settings.settle_s, times[-1])
    policies: dict[str, Any] = {}
    for score, _ in scores:
        policies[score.name] = score.report(times, interval_s, windows, outages, samples.has_truth)
    for name, note in notes.items():
        policies[name] = {"kind": "baseline", "note": note}
    report = {
        "scenario": {
            "samples": samples_path.name,
            "config": config_name,
            "rows": samples.rows_read,
            "lost": samples.lost,
            "truth": samples.has_truth,
            "groups": len(group_names),
            "regions": len(region_paths),
            "paths": sorted({p for ps in region_paths.values() for p in ps}),
            "interval_s": interval_s,
            "steps": len(times),
            "t_first_s": t0,
            "t_last_evaluation_s": times[-1],
            "settle_s": settings.settle_s,
            "r53_refresh_s": settings.r53_refresh_s,
            "reference_service": ref.name,
            "params": (sidecar or {}).get("params"),
            "outages": [o.to_json() for o in outages],
            "event_windows": [list(w) for w in windows],
        },
        "definitions": {
            **DEFINITIONS,
            "evaluation": "per step of [probing] interval: every sample of the step is added at its own time, then one "
            "round per (group, region, path) that had samples (loss ratio = lost / sent), then every policy is evaluated "
            "on the same snapshot at the step's end",
            "baselines": "nearest: region nearest to the group's lat/lon (great circle), direct path, health ignored; "
            "round-robin: the regions in turn per evaluation, offset per group, direct path; always-accelerator / "
            "always-direct: the reference latency service with its path forced; route53-like: lowest EWMA of a table "
            f"snapshot refreshed every {settings.r53_refresh_s:g} s among the regions healthy now, direct path, no hysteresis",
        },
        "policies": policies,
        "wall_s": round(time.perf_counter() - started, 3),
    }
    return ReplayResult(report, tuple(score for score, _ in scores), tuple(times), tuple(windows))


def _policies(config: Config, ref: ServiceConfig, settings: ReplaySettings) -> tuple[tuple[ServiceConfig, ...], list[Baseline], dict[str, str]]:
    """The config's services plus the always-* variants of the reference service, the baselines, and notes on any skipped."""
    region_paths = {r.name: tuple(p.name for p in r.paths) for r in config.regions}
    taken = {s.name for s in config.services}  # baseline names are kept clear of the services'
    variants: list[ServiceConfig] = []
    notes: dict[str, str] = {}
    for wanted, path in (("always-accelerator", "accelerator"), ("always-direct", "direct")):
        name = _free_name(wanted, taken)
        if all(path in region_paths[r] for r in ref.regions):
            variants.append(ref.model_copy(update={"name": name, "path": path}))
        else:
            notes[name] = f"skipped: not every region of the reference service has a '{path}' path"
    baselines: list[Baseline] = [
        Nearest(config, config.groups, ref.regions),
        RoundRobin(config, config.groups, ref.regions),
        Route53Like(config, config.groups, ref.regions, settings.r53_refresh_s),
    ]
    for b in baselines:
        b.name = _free_name(b.name, taken)
    # a config without a latency service still sees the latency policy scored beside its own (as a baseline)
    own = () if ref in config.services else (ref.model_copy(update={"name": _free_name(ref.name, taken)}),)
    return (*config.services, *own, *variants), baselines, notes


def _scores(
    config: Config,
    ref: ServiceConfig,
    services: Sequence[ServiceConfig],
    baselines: Sequence[Baseline],
    group_names: Sequence[str],
    region_paths: Mapping[str, Sequence[str]],
) -> tuple[list[tuple[PolicyScore, int]], list[list[list[Key]]], list[list[list[Key]]]]:
    """A PolicyScore per policy with the id of its candidate set, and each set's keys per group (regret's optimum runs
    over them), all paths and direct paths only."""
    set_ids: dict[tuple[str, ...], int] = {}
    keys_by_set: list[list[list[Key]]] = []
    direct_keys_by_set: list[list[list[Key]]] = []

    def candidate_set(regions: Sequence[str]) -> tuple[int, list[tuple[str, str]]]:
        cands = [(r, p) for r in regions for p in region_paths[r]]
        set_id = set_ids.setdefault(tuple(regions), len(set_ids))
        if set_id == len(keys_by_set):
            keys_by_set.append([[(g, r, p) for r, p in cands] for g in group_names])
            direct_keys_by_set.append([[(g, r, p) for r, p in cands if p == "direct"] for g in group_names])
        return set_id, cands

    scores: list[tuple[PolicyScore, int]] = []
    for i, s in enumerate(services):
        set_id, cands = candidate_set(s.regions)
        score = PolicyScore(s.name, "service" if i < len(config.services) else "baseline", cands, group_names)
        score.extra = {"policy": s.policy or "chain", "path": s.path, "regions": list(s.regions)}
        scores.append((score, set_id))
    ref_set, ref_cands = candidate_set(ref.regions)
    for b in baselines:
        score = PolicyScore(b.name, "baseline", ref_cands, group_names, b.covered)
        score.extra = {"regions": list(ref.regions)}
        if not all(b.covered):
            score.extra["not_covered"] = [g for g, c in zip(group_names, b.covered) if not c]
        scores.append((score, ref_set))
    return scores, keys_by_set, direct_keys_by_set


def _time_text(t: float) -> str:
    text = f"{t:.6f}".rstrip("0")
    return text.rstrip(".")


def _rows(t_text: str, name: str, groups: Sequence[str], choices: Sequence[Choice]) -> list[tuple[str, str, str, str, str]]:
    return [
        (t_text, name, g, c[0], c[1]) if c is not None else (t_text, name, g, "", "")
        for g, c in zip(groups, choices)
    ]

"""Replay evaluator: metrics worked out by hand on tiny CSVs, baselines, failover bound, bad rows."""

from __future__ import annotations

import csv
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from latency_router.config import parse_config
from latency_router.config.models import Config, ServiceConfig
from latency_router.replay.metrics import OutageSpan, PolicyScore, detect_outages, event_windows
from latency_router.replay.run import ReplaySettings, replay
from latency_router.replay.samples import SamplesError

PATHS = ("direct", "accelerator")
A, B = "A", "B"


def make_config(groups: Sequence[dict[str, Any]], regions: Sequence[str] = (A, B), **extra: Any) -> Config:
    """A config of regions at fixed places (A near Europe, B near America), each with direct and accelerator paths."""
    places = {A: (50.0, 8.0), B: (39.0, -77.0), "C": (35.0, 139.0)}
    return parse_config(
        {
            "probing": {"interval": "1s"},
            "regions": [
                {
                    "name": r,
                    "lat": places[r][0],
                    "lon": places[r][1],
                    "paths": [
                        {"name": "direct", "probe": f"udp://192.0.2.{i}:7007", "answer": f"192.0.2.{i}"},
                        {"name": "accelerator", "probe": f"udp://198.51.100.{i}:7007", "answer": f"198.51.100.{i}"},
                    ],
                }
                for i, r in enumerate(regions, start=1)
            ],
            "groups": list(groups),
            "services": [{"name": "api", "policy": "latency"}],
            **extra,
        }
    )


THREE_GROUPS = ({"name": "g1", "lat": 48.0, "lon": 2.0}, {"name": "g2", "lat": 40.0, "lon": -74.0}, {"name": "g3"})


def write_rows(path: Path, rows: Sequence[tuple[Any, ...]], header: str = "t_s,group,region,path,rtt_ms,truth_ms") -> Path:
    with path.open("w", newline="") as fh:
        fh.write(header + "\n")
        csv.writer(fh).writerows(rows)
    return path


def truth_rows(truth: Mapping[tuple[str, str, str], float], steps: int, down: Mapping[str, range] = {}) -> list[tuple[Any, ...]]:
    """One row per key per second; a region in `down` has empty rtt and truth during its range."""
    rows = []
    for t in range(steps):
        for (g, r, p), ms in truth.items():
            if t in down.get(r, ()):
                rows.append((t, g, r, p, "", ""))
            else:
                rows.append((t, g, r, p, ms, ms))
    return rows


class Scripted:
    """A stand-in Decider that answers service 'api' from a script: step index -> group -> (region, path) or None."""

    def __init__(self, script: Sequence[Mapping[str, tuple[str, str] | None]]) -> None:
        self.script = script
        self.calls: list[float] = []

    def __call__(self, config: Config, services: tuple[ServiceConfig, ...]) -> "Scripted":
        self.services = services
        return self

    def evaluate(self, snapshot: Any, now: float) -> dict[tuple[str, str], Any]:
        step = self.script[len(self.calls)]
        self.calls.append(now)
        out = {}
        for g, choice in step.items():
            region, path = choice if choice is not None else (None, None)
            out[("api", g)] = SimpleNamespace(region=region, path=path)
        return out


# truth per (group, region, path): optima g1 10 (A/direct), g2 20 (B/direct), g3 90 (A/accelerator)
TRUTH = {
    ("g1", A, "direct"): 10.0, ("g1", A, "accelerator"): 12.0, ("g1", B, "direct"): 30.0, ("g1", B, "accelerator"): 25.0,
    ("g2", A, "direct"): 50.0, ("g2", A, "accelerator"): 40.0, ("g2", B, "direct"): 20.0, ("g2", B, "accelerator"): 22.0,
    ("g3", A, "direct"): 100.0, ("g3", A, "accelerator"): 90.0, ("g3", B, "direct"): 95.0, ("g3", B, "accelerator"): 101.0,
}
AD, AA, BD, BA = (A, "direct"), (A, "accelerator"), (B, "direct"), (B, "accelerator")
# four steps (t = 0..3, evaluated at 1..4); region A is down during step 3
SCRIPT = [
    {"g1": AD, "g2": BD, "g3": AA},
    {"g1": AD, "g2": BA, "g3": BD},
    {"g1": AA, "g2": None, "g3": AD},
    {"g1": BD, "g2": BD, "g3": AA},
]

# Worked by hand (see TRUTH and SCRIPT): regrets per (group, step); 'dead' = chosen key without truth.
#   api:   g1 0, 0, 2, 5 (step 3: optimum B/accelerator 25) | g2 0, 2, no answer, 0 | g3 0, 5, 10, dead
#          optimal (<= max(1, 2 %)): g1 s0 s1, g2 s0 s3, g3 s0 = 5 of 12; regrets sorted 0 0 0 0 0 2 2 5 5 10
#          flips: g1 s2 s3, g2 s1 (None is no flip either way), g3 s1 s2 s3 = 6; at t=4 (inside the outage window): g1, g3
#   nearest: g1 -> A/direct, g2 -> B/direct, g3 has no lat/lon: 8 points, g1 s3 dead, all others regret 0
#   against the best direct path (g1 10, 10, 10, 30; g2 20; g3 95): api g1 s0 s1 s3, g2 s0 s3, g3 s0 s1 = 7 of 12;
#          nearest g1 s0 s1 s2, g2 s0..s3 = 7 of 8
#   round-robin: g1 A B A B, g2 B A B A, g3 A B A B (direct): regrets g1 0 20 0 5, g2 0 30 0 dead, g3 10 5 10 0
EXPECTED = {
    "api": dict(
        points=12, optimal_pct=100 * 5 / 12, within_5ms_pct=75.0, within_10ms_pct=100 * 10 / 12, within_20ms_pct=100 * 10 / 12,
        optimal_pct_vs_best_direct=100 * 7 / 12, dead_choices=1, no_answer=1, regret_ms={"mean": 2.4, "p50": 1.0, "p95": 7.75, "p99": 9.55},
        flips=6, flips_per_group_hour=6 / (3 * 4 / 3600), flips_per_group_hour_outside_events=4 / (3 * 3 / 3600),
    ),
    "nearest": dict(
        points=8, optimal_pct=87.5, optimal_pct_vs_best_direct=87.5, within_5ms_pct=87.5, dead_choices=1, no_answer=0, flips=0,
        regret_ms={"mean": 0.0, "p50": 0.0, "p95": 0.0, "p99": 0.0}, not_covered=["g3"], groups=2,
    ),
    "round-robin": dict(
        points=12, optimal_pct=100 * 5 / 12, within_5ms_pct=100 * 7 / 12, within_10ms_pct=75.0, within_20ms_pct=100 * 10 / 12,
        dead_choices=1, no_answer=0, flips=9, regret_ms={"mean": 80 / 11, "p50": 5.0, "p95": 25.0, "p99": 29.0},
    ),
}


@pytest.fixture
def hand_report(tmp_path: Path) -> dict[str, Any]:
    samples = write_rows(tmp_path / "s.csv", truth_rows(TRUTH, 4, down={A: range(3, 4)}))
    return replay(make_config(THREE_GROUPS), samples, decider_factory=Scripted(SCRIPT)).report


@pytest.mark.parametrize("policy", list(EXPECTED), ids=list(EXPECTED))
def test_metrics_match_the_hand_worked_numbers(hand_report: dict[str, Any], policy: str) -> None:
    got = hand_report["policies"][policy]
    for field, want in EXPECTED[policy].items():
        if isinstance(want, dict):
            assert got[field] == pytest.approx(want), field
        else:
            assert got[field] == pytest.approx(want) if isinstance(want, float) else got[field] == want, field


def test_outage_seen_in_the_truth_gives_leave_times(hand_report: dict[str, Any]) -> None:
    assert hand_report["scenario"]["outages"] == [
        {"region": A, "path": None, "start_s": 3.0, "end_s": 4.0, "source": "truth"}
    ]
    (outage,) = hand_report["policies"]["api"]["outages"]
    # at t=3 g1 was on A/accelerator and g3 on A/direct; at t=4 g1 had left (1 s) and g3 had not
    assert outage["groups_on_region"] == ["g1", "g3"]
    assert outage["leave_s"] == {"max": None, "p50": 1.0, "never": 1}
    assert outage["groups_returning"] == []


def test_decisions_csv_has_a_row_per_policy_group_and_evaluation(tmp_path: Path) -> None:
    samples = write_rows(tmp_path / "s.csv", truth_rows(TRUTH, 4))
    result = replay(make_config(THREE_GROUPS), samples, decider_factory=Scripted(SCRIPT), decisions_csv=tmp_path / "d.csv")
    with (tmp_path / "d.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    policies = [p for p, v in result.report["policies"].items() if "note" not in v]
    assert len(rows) == len(policies) * 3 * 4
    assert {"t_s": "3", "service": "api", "group": "g3", "region": A, "path": "direct"} in rows
    assert {"t_s": "3", "service": "api", "group": "g2", "region": "", "path": ""} in rows


def test_steps_evaluate_at_interval_ends_and_feed_one_round_per_key(tmp_path: Path) -> None:
    # two samples of a key in one step, one of them lost: one round of loss 0.5 at the step's end
    rows = [(0.0, "g1", A, "direct", 10, 10), (0.5, "g1", A, "direct", "", 10), (2.25, "g1", A, "direct", 11, 10)]
    seen: list[Any] = []

    class Spy(Scripted):
        def evaluate(self, snapshot: Any, now: float) -> dict[tuple[str, str], Any]:
            seen.append((now, snapshot.rows[("g1", A, "direct")]))
            return super().evaluate(snapshot, now)

    cfg = make_config([{"name": "g1"}], regions=(A,))
    replay(cfg, write_rows(tmp_path / "s.csv", rows), decider_factory=Spy([{"g1": AD}] * 3))
    assert [now for now, _ in seen] == [1.0, 2.0, 3.0]  # step 1 has no samples and is still evaluated
    assert [(r.samples, r.lost) for _, r in seen] == [(2, 1), (2, 1), (3, 1)]


@pytest.mark.parametrize(
    ("refresh_s", "expected_after_step"),
    [(300.0, A), (2.0, B)],
    ids=["stale-ranking-keeps-A", "refreshed-ranking-moves-to-B"],
)
def test_route53_like_ranks_on_a_snapshot_refreshed_every_r53_refresh(tmp_path: Path, refresh_s: float, expected_after_step: str) -> None:
    # A is the faster region until t=4, then B by far; health never changes
    rows = []
    for t in range(12):
        rows += [(t, "g1", A, p, 10 if t < 4 else 200, 10 if t < 4 else 200) for p in PATHS]
        rows += [(t, "g1", B, p, 50, 50) for p in PATHS]
    cfg = make_config([{"name": "g1"}])
    result = replay(
        cfg, write_rows(tmp_path / "s.csv", rows), settings=ReplaySettings(r53_refresh_s=refresh_s),
        decider_factory=Scripted([{"g1": AD}] * 12),
    )
    r53 = next(s for s in result.scores if s.name == "route53-like")
    assert r53.choices[0] == ((A, "direct"),)
    assert r53.choices[-1] == ((expected_after_step, "direct"),)


def test_route53_like_leaves_a_region_its_health_check_fails(tmp_path: Path) -> None:
    rows = []
    for t in range(10):
        rows += [(t, "g1", A, p, "" if t >= 3 else 10, "" if t >= 3 else 10) for p in PATHS]
        rows += [(t, "g1", B, p, 50, 50) for p in PATHS]
    cfg = make_config([{"name": "g1"}])
    result = replay(cfg, write_rows(tmp_path / "s.csv", rows), decider_factory=Scripted([{"g1": AD}] * 10))
    r53 = next(s for s in result.scores if s.name == "route53-like")
    regions = [row[0][0] for row in r53.choices]
    # down after fail_after=3 failed rounds (t=3, 4, 5), seen at the evaluation at the end of step 5 (index 5)
    assert regions == [A] * 5 + [B] * 5


def test_dead_region_is_left_within_the_failover_bound(tmp_path: Path) -> None:
    """DESIGN.md: left within fail_after x interval + interval of its last good sample (replay has no timeout)."""
    groups = [{"name": f"g{i}", "lat": 50.0, "lon": 8.0} for i in range(3)]
    truth = {}
    for i in range(3):
        truth |= {(f"g{i}", A, "direct"): 10.0 + i, (f"g{i}", A, "accelerator"): 14.0 + i}
        truth |= {(f"g{i}", B, "direct"): 40.0, (f"g{i}", B, "accelerator"): 45.0}
    outage = range(12, 30)
    samples = write_rows(tmp_path / "s.csv", truth_rows(truth, 40, down={A: outage}))
    cfg = make_config(groups)
    result = replay(cfg, samples)
    interval_s, fail_after = cfg.probing.interval_s, cfg.health.fail_after
    last_good_s = outage.start - 1
    bound_s = last_good_s + fail_after * interval_s + interval_s
    api = next(s for s in result.scores if s.name == "api")
    before = max(i for i, t in enumerate(result.times) if t <= outage.start)
    assert all(c == (A, "direct") for c in api.choices[before]), "every group starts on A"
    left_at = [next(t for t, row in zip(result.times, api.choices) if t > outage.start and row[gi][0] != A) for gi in range(3)]
    assert max(left_at) <= bound_s
    report = result.report["policies"]["api"]["outages"][0]
    assert report["leave_s"]["max"] == pytest.approx(max(left_at) - outage.start)
    assert report["leave_s"]["never"] == 0
    # the baseline that ignores health never leaves, and the report says so
    assert result.report["policies"]["nearest"]["outages"][0]["leave_s"] == {"max": None, "p50": None, "never": 3}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("t_s,group,region,path,rtt_ms\n0,g1,A,direct,abc\n", "s.csv line 2: rtt_ms: expected a number, got 'abc'"),
        ("t_s,group,region,path,rtt_ms\n0,g1,A,direct,10\n1,g1,A,direct,0\n", "s.csv line 3: rtt_ms: must be more than 0"),
        ("t_s,group,region,path,rtt_ms,truth_ms\n0,g1,A,direct,10,-1\n", "s.csv line 2: truth_ms: must not be negative"),
        ("t_s,group,region,path,rtt_ms\n0,g1,A,direct\n", "s.csv line 2: row: expected 5 fields, got 4"),
        ("t_s,group,region,path,rtt_ms\nnan,g1,A,direct,1\n", "s.csv line 2: t_s: expected a finite number"),
        ("t_s,group,region,path,rtt_ms\n0,,A,direct,1\n", "s.csv line 2: group: must not be empty"),
        ("t_s,group,region,rtt_ms\n0,g1,A,1\n", "s.csv line 1: header lacks path"),
        ("", "empty file"),
        ("t_s,group,region,path,rtt_ms\n0,g1,A,direct,1\n0,gX,A,direct,1\n", "s.csv line 3: group 'gX' is not a group of cfg.toml"),
        ("t_s,group,region,path,rtt_ms\n0,g1,Z,direct,1\n", "s.csv line 2: region 'Z' is not a region of cfg.toml"),
        ("t_s,group,region,path,rtt_ms\n0,g1,A,satellite,1\n", "s.csv line 2: path 'satellite' is not a path of region 'A' in cfg.toml"),
        ("t_s,group,region,path,rtt_ms\n0,g1,A,direct,1\n3,g1,A,direct,1\n1,g1,A,direct,1\n", "s.csv line 4: t_s: 1.0 is before the step"),
        ("t_s,group,region,path,rtt_ms\n", "no sample rows"),
    ],
    ids=["rtt-text", "rtt-zero", "truth-negative", "short-row", "t-nan", "group-empty", "header", "empty", "unknown-group",
         "unknown-region", "unknown-path", "time-back", "no-rows"],
)
def test_bad_samples_name_the_line_and_field(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "s.csv"
    path.write_text(content)
    with pytest.raises(SamplesError) as err:
        replay(make_config([{"name": "g1"}]), path, config_name="cfg.toml", decider_factory=Scripted([{"g1": AD}] * 5))
    assert message in str(err.value)


@pytest.mark.parametrize(
    ("events", "truth_outages", "expected"),
    [
        ([{"kind": "outage", "region": "A", "t_start_s": 10, "t_end_s": 20}], [], [(10, 80)]),
        ([{"kind": "step", "region": "A", "path": "direct", "t_s": 100, "delta_ms": 5}], [], [(100, 160)]),
        ([{"kind": "oscillation", "region": "A", "path": "direct", "period_s": 4, "amplitude_ms": 5, "t_start_s": 5, "t_end_s": None}], [], [(5, 500)]),
        ([{"kind": "step", "region": "A", "path": "direct", "t_s": 50, "delta_ms": 5}], [OutageSpan("B", 30, 40)], [(30, 110)]),
        ([], [OutageSpan("B", 30, 40), OutageSpan("A", 200, 210)], [(30, 100), (200, 270)]),
    ],
    ids=["outage-plus-settle", "step-plus-settle", "open-oscillation-to-the-end", "overlapping-merge", "truth-outages"],
)
def test_event_windows(events: list[dict[str, Any]], truth_outages: list[OutageSpan], expected: list[tuple[float, float]]) -> None:
    assert event_windows(events, truth_outages, settle_s=60.0, t_end_s=500.0) == expected


@pytest.mark.parametrize(
    ("down", "expected"),
    [
        ({(A, "direct"): [3, 4, 5], (A, "accelerator"): [3, 4, 5]}, [OutageSpan(A, 3, 6, None, "truth")]),
        ({(A, "direct"): [3, 4], (A, "accelerator"): [3, 4, 9]}, [OutageSpan(A, 3, 5, None, "truth"), OutageSpan(A, 9, 10, "accelerator", "truth")]),
        ({(B, "direct"): [0, 2]}, [OutageSpan(B, 0, 1, "direct", "truth"), OutageSpan(B, 2, 3, "direct", "truth")]),
    ],
    ids=["whole-region", "region-then-one-path", "path-gaps-split"],
)
def test_detect_outages_from_steps_without_truth(down: dict[tuple[str, str], list[int]], expected: list[OutageSpan]) -> None:
    assert detect_outages(down, {A: PATHS, B: PATHS}, t0_s=0.0, interval_s=1.0) == expected


def test_no_truth_column_reports_flips_but_no_regret(tmp_path: Path) -> None:
    rows = [(t, "g1", r, p, 10) for t in range(3) for r in (A, B) for p in PATHS]
    samples = write_rows(tmp_path / "s.csv", rows, header="t_s,group,region,path,rtt_ms")
    report = replay(make_config([{"name": "g1"}]), samples, decider_factory=Scripted([{"g1": AD}, {"g1": BD}, {"g1": BD}])).report
    assert report["scenario"]["truth"] is False
    assert "optimal_pct" not in report["policies"]["api"]
    assert report["policies"]["api"]["flips"] == 1


CANDIDATES = [AD, AA, BD, BA]


@given(
    truths=st.lists(
        st.lists(st.one_of(st.none(), st.floats(min_value=0.0, max_value=500.0)), min_size=4, max_size=4),
        min_size=1, max_size=6,
    ),
    picks=st.lists(st.one_of(st.none(), st.integers(0, 3)), min_size=6, max_size=6),
)
def test_score_counts_are_nested_and_the_argmin_is_always_optimal(truths: list[list[float | None]], picks: list[int | None]) -> None:
    chosen = PolicyScore("p", "service", CANDIDATES, ["g1"])
    oracle = PolicyScore("best", "service", CANDIDATES, ["g1"])
    for step, row in enumerate(truths):
        truth = {("g1", *c): t for c, t in zip(CANDIDATES, row)}
        known = [(t, c) for c, t in zip(CANDIDATES, row) if t is not None]
        best = min(known) if known else None
        pick = picks[step]
        chosen.record(float(step + 1), [CANDIDATES[pick] if pick is not None else None], [best], truth)
        oracle.record(float(step + 1), [best[1] if best else None], [best], truth)
    got = chosen.report([float(i + 1) for i in range(len(truths))], 1.0, [], [], True)
    scored = got["points"] - got["dead_choices"] - got["no_answer"]
    counts = [got[k] * got["points"] / 100 if got["points"] else 0 for k in ("optimal_pct", "within_5ms_pct", "within_10ms_pct", "within_20ms_pct")]
    assert counts[0] <= scored + 1e-9 and counts[1] <= counts[2] + 1e-9 <= counts[3] + 2e-9 <= scored + 3e-9
    assert all(r >= 0 for r in chosen.regrets_ms)
    best_report = oracle.report([float(i + 1) for i in range(len(truths))], 1.0, [], [], True)
    assert best_report["points"] in (0, len([r for r in truths if any(t is not None for t in r)]))
    assert best_report["optimal_pct"] in (None, 100.0)


def test_a_config_without_a_latency_service_still_sees_the_latency_policy_scored(tmp_path: Path) -> None:
    config = make_config([{"name": "g1"}], services=[{"name": "api", "policy": "failover", "priority": [B, A]}])
    samples = write_rows(tmp_path / "s.csv", truth_rows({("g1", A, "direct"): 10.0, ("g1", A, "accelerator"): 12.0,
                                                         ("g1", B, "direct"): 30.0, ("g1", B, "accelerator"): 25.0}, 3))
    policies = replay(config, samples).report["policies"]
    assert policies["api"]["policy"] == "failover" and policies["api"]["optimal_pct"] == 0.0  # B first: 25 ms vs 10
    assert policies["latency"]["kind"] == "baseline" and policies["latency"]["optimal_pct"] == 100.0

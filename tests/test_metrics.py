"""The Prometheus metrics: values read from a real table and decider at scrape time, bounded labels, the RTT histogram,
reload and build info, and the exposition as promtool checks it."""

from __future__ import annotations

import dataclasses
import math
import subprocess
from collections import Counter
from typing import Any

import pytest
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from latency_router.config.models import ALL_DOWN
from latency_router.decider.table import HealthState
from latency_router.exporters.prometheus import FAMILIES, OUTCOMES, RTT_BUCKETS_S, Metrics
from latency_router.probes import KINDS
from latency_router.probes.base import EngineCounters
from latency_router.probes.scheduler import Scheduler
from deploy_support import (
    END_S, GROUPS, REGIONS, TableSource, engine_stats, lab_config, lab_metrics, lab_round, promtool,
)

Labels = tuple[tuple[str, str], ...]


def parse(text: str) -> dict[str, dict[Labels, float]]:
    """Sample name -> sorted label pairs -> value."""
    out: dict[str, dict[Labels, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def scrape(metrics: Metrics) -> dict[str, dict[Labels, float]]:
    body, _ = metrics.render()
    return parse(body.decode())


def value(samples: dict[str, dict[Labels, float]], name: str, **labels: str) -> float | None:
    return samples.get(name, {}).get(tuple(sorted(labels.items())))


@pytest.fixture(scope="module")
def lab() -> tuple[Metrics, TableSource, dict[str, dict[Labels, float]]]:
    metrics, source = lab_metrics()
    return metrics, source, scrape(metrics)


ROW_FIELDS = [
    ("latency_router_table_rtt_ewma_seconds", "ewma_ms", 1e-3),
    ("latency_router_table_rtt_p50_seconds", "p50_ms", 1e-3),
    ("latency_router_table_rtt_p95_seconds", "p95_ms", 1e-3),
    ("latency_router_table_rtt_p99_seconds", "p99_ms", 1e-3),
    ("latency_router_table_rtt_min_seconds", "min_ms", 1e-3),
    ("latency_router_table_jitter_seconds", "jitter_ms", 1e-3),
    ("latency_router_table_loss_ratio", "loss", 1.0),
    ("latency_router_table_samples_total", "samples", 1.0),
    ("latency_router_table_samples_lost_total", "lost", 1.0),
]


@pytest.mark.parametrize(("name", "field", "scale"), ROW_FIELDS, ids=[f for _, f, _ in ROW_FIELDS])
def test_table_values_match_the_snapshot(lab, name, field, scale):
    _, source, samples = lab
    rows = source.table().rows
    assert len(rows) == len(GROUPS) * len(REGIONS) * 2
    for (group, region, path), row in rows.items():
        expected = getattr(row, field)
        got = value(samples, name, group=group, region=region, path=path)
        if expected is None:
            assert got is None, f"{name} for {group}/{region}/{path} has no value, yet is exposed"
        else:
            assert got == pytest.approx(expected * scale, rel=1e-9), (group, region, path)
    assert len(samples.get(name, {})) == sum(getattr(r, field) is not None for r in rows.values())


def test_rows_without_data_are_left_out_and_nothing_is_nan(lab):
    _, source, samples = lab
    row = source.table().get("eu", "ap-southeast-1", "accelerator")
    assert row is not None and row.ewma_ms is None and row.loss is None
    labels = {"group": "eu", "region": "ap-southeast-1", "path": "accelerator"}
    assert value(samples, "latency_router_table_rtt_ewma_seconds", **labels) is None
    assert value(samples, "latency_router_table_loss_ratio", **labels) is None
    assert value(samples, "latency_router_table_row_health", **labels, state="unknown") == 1.0
    assert all(math.isfinite(v) for by_labels in samples.values() for v in by_labels.values())


def test_row_health_shows_the_current_state_once(lab):
    _, source, samples = lab
    states_seen = set()
    for (group, region, path), row in source.table().rows.items():
        by_state = {
            state: value(samples, "latency_router_table_row_health", group=group, region=region, path=path, state=state)
            for state in HealthState
        }
        assert by_state == {state: 1.0 if state is row.health else 0.0 for state in HealthState}
        healthy = value(samples, "latency_router_table_row_healthy", group=group, region=region, path=path)
        assert healthy == (1.0 if row.healthy else 0.0)
        states_seen.add(row.health)
    # the lab has rows in every state, so each mapping above was exercised
    assert states_seen == set(HealthState)


def test_decisions_are_info_gauges_with_their_rtt_and_changes(lab):
    _, source, samples = lab
    decisions = source.decisions()
    info = samples["latency_router_decision_info"]
    assert len(info) == len(decisions) == 3  # eu, us and the default group
    for (service, group), d in decisions.items():
        labels = dict(service=service, group=group, region=d.region or "", path=d.path or "", basis=d.basis,
                      fallback=d.fallback or "")
        assert value(samples, "latency_router_decision_info", **labels) == 1.0
        rtt = value(samples, "latency_router_decision_rtt_seconds", service=service, group=group)
        assert rtt == (None if d.rtt_ms is None else pytest.approx(d.rtt_ms / 1e3))
    # the default group has no measurements: a decision with no RTT, which is left out
    assert decisions[("api", "default")].rtt_ms is None
    # eu and us moved once, from eu-west-1/direct to the accelerator once it got faster
    assert {k: d.path for k, d in decisions.items() if k[1] in GROUPS} == {("api", g): "accelerator" for g in GROUPS}
    changes = {dict(k)["group"]: v for k, v in samples["latency_router_decision_changes_total"].items()}
    assert changes == {"eu": 1.0, "us": 1.0, "default": 0.0}


def test_engine_metrics_come_from_the_engine_stats(lab):
    _, source, samples = lab
    stats = source.engine_stats()
    assert value(samples, "latency_router_engine_loop_lag_p99_seconds") == pytest.approx(stats["loop_lag_ms"]["p99"] / 1e3)
    # the recent window's max, not the all-time one
    assert value(samples, "latency_router_engine_loop_lag_max_seconds") == pytest.approx(31.0e-3)
    assert value(samples, "latency_router_engine_probes_in_flight") == stats["probes_in_flight"]
    assert value(samples, "latency_router_engine_probes_waiting") == stats["probes_waiting_for_slot"]
    assert value(samples, "latency_router_engine_socket_drops_total") == stats["socket_drops"]
    outcomes = {dict(k)["outcome"]: v for k, v in samples["latency_router_engine_samples_total"].items()}
    assert outcomes == {"ok": 180, "timeout": 66, "refused": 4, **{o: 0 for o in OUTCOMES if o not in ("ok", "timeout", "refused")}}
    assert sum(outcomes.values()) == stats["samples_ok"] + stats["samples_lost"]


def test_every_engine_family_reads_a_key_the_scheduler_or_engine_counters_have():
    # the real key names: a renamed key in Scheduler.stats() would silently drop its metric
    stats = {**Scheduler([], interval_s=1.0, timeout_s=0.5).stats(), **dataclasses.asdict(EngineCounters())}
    stats["loop_lag_ms"] = {**stats["loop_lag_ms"], "p50": 1.0, "p99": 2.0, "window_max": 3.0}
    metrics = Metrics(TableSource(lab_config(), stats), version="0", process_metrics=False)
    exposed = {name.removesuffix("_total") for name in scrape(metrics)}
    engine = {name.removesuffix("_total") for name in FAMILIES if name.startswith("latency_router_engine_")}
    assert engine - exposed == set()


def _lab_samples() -> list[tuple[str, str, Any]]:
    """Every (region, path, sample) the lab produced, computed afresh from its rounds."""
    out = []
    for t in range(int(END_S) + 1):
        for region in REGIONS:
            for path in ("direct", "accelerator"):
                rnd = lab_round(region, path, float(t))
                out += [(region, path, s) for s in (rnd.samples if rnd else ())]
    return out


def test_rtt_histogram_has_sub_millisecond_log_spaced_buckets(lab):
    _, _, samples = lab
    bounds = sorted({float(dict(k)["le"]) for k in samples["latency_router_probe_rtt_seconds_bucket"]})
    assert bounds == [*RTT_BUCKETS_S, math.inf]
    assert bounds[0] <= 50e-6 and RTT_BUCKETS_S[-1] >= 10.0
    assert sum(b < 1e-3 for b in bounds) >= 4
    assert 15 <= len(RTT_BUCKETS_S) <= 30
    ratios = [b / a for a, b in zip(RTT_BUCKETS_S, RTT_BUCKETS_S[1:])]
    assert all(1.2 <= r <= 2.5 for r in ratios), ratios


def test_rtt_histogram_counts_every_answered_probe(lab):
    _, _, samples = lab
    for region in REGIONS:
        for path in ("direct", "accelerator"):
            rtts_s = [s.rtt_ms / 1e3 for r, p, s in _lab_samples() if (r, p) == (region, path) and s.ok]
            labels = {"region": region, "path": path, "kind": "udp"}
            count = value(samples, "latency_router_probe_rtt_seconds_count", **labels)
            if not any((r, p) == (region, path) for r, p, _ in _lab_samples()):
                assert count is None  # never probed: no series
                continue
            assert count == len(rtts_s)
            assert value(samples, "latency_router_probe_rtt_seconds_sum", **labels) == pytest.approx(sum(rtts_s))
            for le in (*RTT_BUCKETS_S, math.inf):
                got = value(samples, "latency_router_probe_rtt_seconds_bucket", **labels, le=_le(le))
                assert got == sum(r <= le for r in rtts_s), (region, path, le)
    # the 40 us reply of us-east-1's accelerator lands in the first, 50 us, bucket
    first = value(samples, "latency_router_probe_rtt_seconds_bucket", region="us-east-1", path="accelerator",
                  kind="udp", le=_le(RTT_BUCKETS_S[0]))
    assert first == END_S + 1


def _le(bound: float) -> str:
    from prometheus_client.utils import floatToGoString

    return floatToGoString(bound)


def test_probe_results_count_each_outcome(lab):
    _, _, samples = lab
    expected = Counter((r, p, "ok" if s.ok else str(s.loss)) for r, p, s in _lab_samples())
    got = {
        (d["region"], d["path"], d["outcome"]): v
        for d, v in ((dict(k), v) for k, v in samples["latency_router_probe_results_total"].items())
    }
    assert {k: v for k, v in got.items() if v} == dict(expected)
    # every outcome of a probed path has a series from the first round on, zero until it happens
    probed = {(r, p) for r, p, _ in _lab_samples()}
    assert set(got) == {(r, p, o) for r, p in probed for o in OUTCOMES}


ALLOWED_LABELS = {
    "group": {*GROUPS, "default"},
    "region": {*REGIONS, ""},
    "path": {"direct", "accelerator", ""},
    "service": {"api"},
    "kind": set(KINDS),
    "state": {str(s) for s in HealthState},
    "outcome": set(OUTCOMES),
    "result": {"success", "failure"},
    "basis": {"measured", "unknown", "provisional", "static", "none", "predicted", "pinned"},
    "fallback": {*ALL_DOWN, ""},
    "section": {"table", "decisions", "engine", "exporters"},
    "version": {"1.2.3"},
    "python": None,  # any: the interpreter's version
    "le": None,  # the histogram's bounds, checked above
}


def test_names_units_help_and_bounded_labels(lab):
    metrics, _, _ = lab
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    families = list(text_string_to_metric_families(body.decode()))
    ours = [f for f in families if f.name.startswith("latency_router_")]
    assert {f.name for f in families} - {f.name for f in ours} <= {
        "process_virtual_memory_bytes", "process_resident_memory_bytes", "process_start_time_seconds",
        "process_cpu_seconds", "process_open_fds", "process_max_fds",
    }
    assert {f.name + ("_total" if f.type == "counter" else "") for f in ours} == set(FAMILIES)
    assert not [n for n, f in FAMILIES.items() if "\\" in f.help or "\n" in f.help]  # HELP goes out unescaped
    for family in families:
        assert family.documentation.strip(), f"{family.name} has no HELP"
        if family.type == "counter":
            assert all(s.name.endswith(("_total", "_created")) for s in family.samples), family.name
        if "rtt" in family.name or "lag" in family.name or "jitter" in family.name:
            assert family.name.endswith("_seconds"), family.name
        for s in family.samples:
            for label, v in s.labels.items():
                assert label in ALLOWED_LABELS, f"{s.name} has an unexpected label {label}"
                allowed = ALLOWED_LABELS[label]
                assert allowed is None or v in allowed, f"{s.name}{{{label}={v!r}}}"


def test_reload_counts_results_and_keeps_the_last_good_time():
    metrics, _ = lab_metrics(loaded_at_unix=1000.0)
    s = scrape(metrics)
    assert value(s, "latency_router_config_last_reload_successful") == 1.0
    assert value(s, "latency_router_config_last_reload_success_timestamp_seconds") == 1000.0
    assert value(s, "latency_router_config_reloads_total", result="success") == 0.0
    metrics.reload(False, 2000.0)
    s = scrape(metrics)
    assert value(s, "latency_router_config_last_reload_successful") == 0.0
    assert value(s, "latency_router_config_last_reload_success_timestamp_seconds") == 1000.0
    assert value(s, "latency_router_config_reloads_total", result="failure") == 1.0
    metrics.reload(True, 3000.5)
    s = scrape(metrics)
    assert value(s, "latency_router_config_last_reload_successful") == 1.0
    assert value(s, "latency_router_config_last_reload_success_timestamp_seconds") == 3000.5
    assert value(s, "latency_router_config_reloads_total", result="success") == 1.0
    assert value(s, "latency_router_config_reloads_total", result="failure") == 1.0


@pytest.mark.parametrize("bad", [math.nan, math.inf, -1.0, "now"], ids=["nan", "inf", "negative", "text"])
def test_reload_refuses_a_bad_time_and_names_it(bad):
    metrics, _ = lab_metrics()
    with pytest.raises(ValueError, match="when_unix"):
        metrics.reload(True, bad)
    assert value(scrape(metrics), "latency_router_config_reloads_total", result="success") == 0.0


def test_build_info_and_an_own_registry():
    first, _ = lab_metrics(version="1.2.3")
    second, _ = lab_metrics(version="4.5.6")  # a second instance: no clash, since neither uses the global registry
    import platform

    assert value(scrape(first), "latency_router_build_info", version="1.2.3", python=platform.python_version()) == 1.0
    assert value(scrape(second), "latency_router_build_info", version="4.5.6", python=platform.python_version()) == 1.0
    assert not any(n.startswith("latency_router_") for n in REGISTRY._names_to_collectors)


def test_values_are_read_at_scrape_time():
    metrics, source = lab_metrics()
    key = ("eu", "eu-west-1", "direct")
    before = value(scrape(metrics), "latency_router_table_samples_total", **dict(zip(("group", "region", "path"), key)))
    rnd = lab_round("eu-west-1", "direct", END_S + 1)
    source.latency_table.add_round_result(key, rnd, END_S + 1)
    source.now = END_S + 1
    source.engine["probes_in_flight"] = 42
    after = scrape(metrics)
    assert value(after, "latency_router_table_samples_total", group="eu", region="eu-west-1", path="direct") == before + 5
    assert value(after, "latency_router_engine_probes_in_flight") == 42


class _Broken(TableSource):
    def table(self):
        raise RuntimeError("table went away")


def test_a_failing_section_leaves_the_rest_of_the_scrape():
    source = _Broken(lab_config(), engine_stats())
    metrics = Metrics(source, version="0", process_metrics=False)
    s = scrape(metrics)
    assert "latency_router_table_row_healthy" not in s
    assert value(s, "latency_router_engine_probes_in_flight") == 7
    assert value(s, "latency_router_metrics_collect_errors_total", section="table") == 1.0
    assert value(s, "latency_router_metrics_collect_errors_total", section="engine") == 0.0


def test_missing_and_broken_engine_values_are_left_out():
    stats = {"probes_in_flight": None, "socket_drops": math.nan, "loop_lag_ms": {"p50": None, "p99": None}, "targets": "x"}
    metrics = Metrics(TableSource(lab_config(), stats), version="0", process_metrics=False)
    s = scrape(metrics)
    assert not {n for n in s if n.startswith("latency_router_engine_")}
    assert value(s, "latency_router_metrics_collect_errors_total", section="engine") == 0.0


def test_retain_drops_removed_paths_and_decisions(lab):
    metrics, _ = lab_metrics()
    metrics.retain(paths=[("eu-west-1", "direct")], decisions=[("api", "eu")])
    s = scrape(metrics)
    regions = {(dict(k)["region"], dict(k)["path"]) for k in s["latency_router_probe_rtt_seconds_count"]}
    assert regions == {("eu-west-1", "direct")}
    assert {dict(k)["region"] for k in s["latency_router_probe_results_total"]} == {"eu-west-1"}
    # us's counter restarts from zero; its decision is still current, so it is still exposed
    changes = {dict(k)["group"]: v for k, v in s["latency_router_decision_changes_total"].items()}
    assert changes == {"eu": 1.0, "us": 0.0, "default": 0.0}


def test_the_direct_text_matches_the_registry(lab):
    # render() writes the text itself, for speed; prometheus_client's writer over the registry must read the same
    metrics, _, _ = lab
    body, _ = metrics.render()
    direct = parse(body.decode())
    via_registry = parse(generate_latest(metrics.registry).decode())
    volatile = {n for n in direct if n.startswith("process_")}  # read twice from /proc: CPU time and fds move
    assert {n: s for n, s in direct.items() if n not in volatile} == {
        n: s for n, s in via_registry.items() if n not in volatile
    }
    assert volatile == {n for n in via_registry if n.startswith("process_")} != set()


def test_label_values_are_escaped():
    source = TableSource(lab_config(), {})
    metrics = Metrics(source, version='1.0 "quoted" back\\slash\nnewline', process_metrics=False)
    body, _ = metrics.render()
    (labels,) = parse(body.decode())["latency_router_build_info"]
    assert dict(labels)["version"] == '1.0 "quoted" back\\slash\nnewline'


def test_promtool_check_metrics_passes(lab):
    metrics, _, _ = lab
    body, _ = metrics.render()
    done = subprocess.run([promtool(), "check", "metrics"], input=body, capture_output=True, timeout=30)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), (done.stdout, done.stderr)


def test_promtool_check_metrics_can_fail():
    # the check above means something: promtool flags a counter without _total
    bad = b"# HELP latency_router_x Something.\n# TYPE latency_router_x counter\nlatency_router_x 1\n"
    done = subprocess.run([promtool(), "check", "metrics"], input=bad, capture_output=True, timeout=30)
    assert done.returncode != 0 or done.stdout.strip() or done.stderr.strip()

"""A tiny run of benchmarks/api_throughput.py: one JSON object with both sides, their ratios and the probing figures."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from support import installed

from latency_router.lab import iptables

pytestmark = pytest.mark.root  # the lab's NFQUEUE delayer needs root

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "api_throughput.py"
# A queue pair and addresses of its own (127.246.x.y, 127.247.x.y), so a full benchmark run beside it never collides.
QUEUE, OCTET = 246, 246
ARGS = ["--duration", "2", "--rounds", "1", "--probe-rounds", "1", "--paths", "10",
        "--queue-num", str(QUEUE), "--octet", str(OCTET)]
RUN_TIMEOUT_S = 100
WINDOW_KINDS = {"idle", "loaded", "baseline_loaded"}
CHECKS = {"throughput_ratio_at_least_0.7", "p99_within_10ms", "p99_ratio_at_most_1.5", "no_http_errors",
          "probe_rate_reached", "probe_error_under_load_at_most_2x_idle"}


def wrk() -> str:
    return installed("wrk", "wrk")


def check_load(fig: dict, where: str) -> None:
    """One side's wrk figures: requests served, positive and ordered latencies."""
    assert fig["rps"] > 0, where
    assert 0 < fig["p50_ms"] <= fig["p99_ms"], where
    errors = fig["errors"]  # a count over rounds, or one run's count by kind (connect, read, status, ...)
    assert (sum(errors.values()) if isinstance(errors, dict) else errors) == 0, f"{where}: HTTP errors {fig}"


@pytest.fixture(scope="module")
def out() -> dict:
    proc = subprocess.run([sys.executable, str(SCRIPT), *ARGS, "--wrk", wrk()], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def test_both_sides_are_measured_by_the_same_wrk_run_and_compared(out):
    assert out["benchmark"] == "api_throughput"
    gen = out["load_generator"]
    assert gen["tool"].startswith("wrk") and (gen["connections"], gen["rounds"]) == (64, 1)
    for side in ("baseline", "daemon"):
        check_load(out[side], side)
        assert len(out[side]["rounds"]) == 1 and out[side]["rounds"][0]["requests"] > 0, side
        assert out[side]["body_bytes"] > 0, side
    assert out["daemon"]["decision"]["basis"] == "measured"
    assert out["daemon"]["lab"].startswith("nfqueue mode")
    assert out["daemon"]["rss_mb"] > 0
    assert out["throughput_ratio"] == pytest.approx(out["daemon"]["rps"] / out["baseline"]["rps"], abs=0.001)
    assert out["p99_ratio"] == pytest.approx(out["daemon"]["p99_ms"] / out["baseline"]["p99_ms"], abs=0.001)
    assert set(out["checks"]) == CHECKS
    assert all(v is None or isinstance(v, bool) for v in out["checks"].values()), out["checks"]


def test_probing_figures_cover_every_path_in_every_window(out):
    probing = out["under_probing"]
    assert (probing["paths"], probing["samples"], probing["probes_per_s_target"]) == (10, 5, 50.0)
    assert probing["lab"]["mode"] == "nfqueue" and probing["lab"]["queue_num"] == QUEUE + 1
    assert set(probing["windows"]) == WINDOW_KINDS
    for kind, windows in probing["windows"].items():
        assert len(windows) == 1, kind
        w = windows[0]
        assert w["probes"] > 0 and w["probes_per_s"] > 0, kind
        assert w["paths_without_samples"] == 0, kind
        # a mean error of tens of milliseconds would be a pairing or unit bug, not load
        assert 0 <= w["error_us"]["mean_abs"] < 20_000, (kind, w["error_us"])
        assert 0.0 <= w["share_over_500us"] <= 1.0, kind
        assert w["lab"]["released"] > 0, f"{kind}: the lab delayed nothing"
        assert isinstance(w["valid"], bool), kind
        assert w["cpu_percent"]["daemon"] > 0, kind
        if kind != "idle":
            check_load(w["api"], kind)
    # error figures count valid windows only (the lab on time): on a busy machine a kind may have none
    assert set(probing["valid_windows"]) == WINDOW_KINDS
    idle, loaded = probing["error_us_mean_abs"]["idle"], probing["error_us_mean_abs"]["loaded"]
    if probing["valid_windows"]["idle"] and probing["valid_windows"]["loaded"]:
        assert probing["error_ratio"] == pytest.approx(loaded / idle, abs=0.01)
        assert isinstance(out["checks"]["probe_error_under_load_at_most_2x_idle"], bool)
    else:
        assert probing["error_ratio"] is None and out["checks"]["probe_error_under_load_at_most_2x_idle"] is None
    assert probing["api_while_probing"]["daemon"]["rps"] > 0 and probing["api_while_probing"]["baseline"]["rps"] > 0
    memory = probing["memory"]
    assert 0 < memory["rss_mb"] <= memory["peak_rss_mb"]
    assert memory["process_resident_memory_bytes"] > 0


def test_no_lab_rules_are_left_behind(out):
    assert out["benchmark"] == "api_throughput"  # the run has finished
    mine = [t for t in iptables.list_tags() if t.endswith((f":{QUEUE}", f":{QUEUE + 1}"))]
    assert mine == []

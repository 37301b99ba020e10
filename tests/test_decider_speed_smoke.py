"""A tiny run of benchmarks/decider_speed.py: one JSON object with every figure, each of the right kind."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "decider_speed.py"


def test_decider_speed_prints_its_figures_beside_the_baselines():
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--groups", "40", "--regions", "4", "--samples", "2", "--recomputes", "2", "--lookups", "2000"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert (out["groups"], out["regions"], out["rows"]) == (40, 4, 40 * 4 * 2)
    assert out["decisions"] == 41  # every group and the implicit default group
    recompute = out["recompute_s"]
    assert 0 < recompute["snapshot_median"] <= recompute["median"] and 0 < recompute["decide_median"] <= recompute["median"]
    assert recompute["runs"] == 2
    assert out["baseline_recompute_s"] > 0 and out["recompute_ratio_to_baseline"] > 0
    lookups = out["lookup_us"]
    assert lookups["decider_lookup"] > 0 and lookups["dict_baseline"] > 0 and lookups["client_ip_lookup"] > 0
    assert out["memory"]["peak_traced_mb"] > 0
    assert set(out["checks"]) == {"recompute_within_1s", "decide_only_within_1s", "lookup_within_10us", "client_ip_lookup_within_10us"}
    assert all(isinstance(v, bool) for v in out["checks"].values())

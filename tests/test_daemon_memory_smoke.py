"""benchmarks/daemon_memory.py in a tiny run: it prints one JSON object with both daemons' RSS and probe rates."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_daemon_memory_benchmark_reports_rss_and_probe_rate_of_both_daemons():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "daemon_memory.py"), "--targets", "20", "--baseline-targets", "4",
         "--settle", "5"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout)
    assert (out["daemon"]["targets"], out["baseline"]["targets"]) == (20, 4)
    for side in ("daemon", "baseline"):
        assert out[side]["rss_mb"] > 10 and out[side]["probes_per_s"] > 0 and out[side]["samples_ok"] > 0
    assert out["rss_ratio_to_baseline"] == round(out["daemon"]["rss_mb"] / out["baseline"]["rss_mb"], 2)
    assert set(out["checks"]) == {"probe_rate_reached"}

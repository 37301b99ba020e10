"""benchmarks/dns_exporter.py in a tiny run: one JSON object with every part's figures and its checks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.root


def test_dns_exporter_benchmark_reports_every_part():
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "dns_exporter.py"), "--cycles", "1", "--outages", "1", "--quiet", "3"],
                          capture_output=True, text=True, timeout=240, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout)
    follow, quiet, outage = out["follow"], out["quiet"], out["outage"]
    assert follow["changes"] == 2 and 0 <= follow["served"] <= 2
    assert follow["baseline_api_patch_to_dns_s"]["p50"] > 0 and follow["exporter_writes"] >= 1
    assert outage["runs"] == 1 and 0 < outage["decision_to_dns_s"]["p50"] <= outage["decision_to_dns_s"]["max"]
    assert quiet["duration_s"] == 3 and quiet["writes_after_the_first"] >= 0
    assert set(out["checks"]) == {"every_change_served", "decision_to_dns_within_interval_plus_1s",
                                 "outage_to_dns_within_interval_plus_1s", "no_write_after_the_first"}
    assert out["checks"]["no_write_after_the_first"] == (quiet["writes_after_the_first"] == 0)

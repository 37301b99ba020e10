"""A quick run of each benchmark with tiny settings: it prints one JSON object with its keys and sane values."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.root  # the lab's NFQUEUE delayer (and blackbox_exporter's ICMP) need root

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
RUN_TIMEOUT_S = 50

# Lab addresses and queue numbers of their own, so a full benchmark run beside the tests never collides.
ACCURACY_ARGS = ["--kinds", "udp,tcp,http", "--in-flight", "1,8", "--rounds", "3", "--min-probes", "12",
                 "--delay-ms", "5", "--reference-probes", "10",
                 "--queue-num", "234", "--address-prefix", "127.0.234"]
BLACKBOX_ARGS = ["--kinds", "tcp,http,icmp,dns,udp", "--delay-ms", "5", "--concurrency", "4",
                 "--best-concurrency", "8", "--blackbox-concurrency", "", "--probes", "24", "--udp-probes", "48",
                 "--max-seconds", "5", "--queue-num", "235", "--address-prefix", "127.0.235"]

# Sane bounds for an error (measured minus injected) on loopback with a 5 ms delay: never far below the
# injected delay (a clock or pairing bug shows up as a large negative error), never tens of milliseconds above it.
ERROR_FLOOR_US, ERROR_CEIL_US = -1000.0, 20000.0


def run_benchmark(name: str, args: list[str]) -> dict:
    """Run one benchmark script; it must exit 0 and print exactly one JSON object on stdout."""
    proc = subprocess.run([sys.executable, str(BENCHMARKS / name), *args], capture_output=True, text=True,
                          timeout=RUN_TIMEOUT_S)
    assert proc.returncode == 0, f"{name} exited {proc.returncode}: {proc.stderr[-2000:]}"
    return json.loads(proc.stdout)


def check_figure(fig: dict, where: str) -> None:
    assert fig["n"] > 0 and "kernel" in fig and "lab" in fig, where
    assert fig["rate"] > 0, where
    loss = fig["loss"]
    assert loss is not None and 0.0 <= loss <= 0.2, f"{where}: loss {loss} ({fig.get('loss_reasons')})"
    p50, p99 = fig["error_us"]["p50"], fig["error_us"]["p99"]
    assert ERROR_FLOOR_US <= p50 <= ERROR_CEIL_US, f"{where}: error p50 {p50} us"
    assert p99 >= p50, where


def test_accuracy_prints_every_figure_with_the_labs_lateness():
    out = run_benchmark("accuracy.py", ACCURACY_ARGS)
    assert out["benchmark"] == "accuracy"
    assert out["lab"]["mode"] == "nfqueue"
    assert set(out["results"]) == {"udp", "tcp", "http"}
    for kind, by_in_flight in out["results"].items():
        assert set(by_in_flight) == {"1", "8"}, kind
        for n, fig in by_in_flight.items():
            where = f"{kind}@{n}"
            check_figure(fig, where)
            assert fig["in_flight"] == int(n) and fig["delay_ms"] == 5.0, where
            assert isinstance(fig["valid"], bool), where
            lateness = fig["lab"]["lateness_us"]
            assert lateness["p50"] is not None and lateness["p99"] >= lateness["p50"] >= 0, where
            assert fig["lab"]["released"] > 0, f"{where}: the lab delayed nothing"
    plain = out["http_plain_client"]
    assert plain["n"] > 0 and plain["error_us"]["p50"] >= ERROR_FLOOR_US, plain
    assert set(out["checks"]) >= {"udp_1000_p50_within_50us", "udp_1000_p99_within_500us", "tcp_p50_within_100us"}
    # No 1,000-in-flight figure was asked for, so the UDP check has nothing to say.
    assert out["checks"]["udp_1000_p50_within_50us"] is None


def test_blackbox_compare_prints_both_sides_and_their_ratios():
    out = run_benchmark("blackbox_compare.py", BLACKBOX_ARGS)
    assert out["benchmark"] == "blackbox_compare"
    assert out["blackbox_exporter"].startswith("blackbox_exporter")
    assert set(out["kinds"]) == {"tcp", "http", "icmp", "dns"}
    for kind, entry in out["kinds"].items():
        check_figure(entry["ours"], f"ours {kind}")
        check_figure(entry["blackbox"], f"blackbox {kind}")
        assert entry["ours"]["concurrency"] == entry["blackbox"]["concurrency"] == 4, kind
        assert entry["rate_ratio"] == pytest.approx(entry["ours"]["rate"] / entry["blackbox"]["rate"], rel=0.01), kind
        assert entry["error_ratio"] is not None and entry["error_ratio"] >= 0, kind
        assert set(entry["ours_sweep"]) == {"4", "8"}, kind
        assert entry["ours_best"]["rate"] == max(f["rate"] for f in entry["ours_sweep"].values()), kind
        assert kind in out["figures"]["blackbox"], kind
    udp = out["udp"]
    check_figure(udp["ours"], "ours udp")
    check_figure(udp["ours_bulk_best"], "ours udp, callback path")
    assert udp["blackbox_best"]["kind"] in out["kinds"]
    assert udp["rate_ratio_vs_blackbox_best"] == pytest.approx(
        udp["ours_best"]["rate"] / udp["blackbox_best"]["rate"], rel=0.01)
    expected_checks = {"tcp_rate_at_least_blackbox", "dns_error_smaller", "udp_rate_at_least_10x_blackbox_best"}
    assert set(out["checks"]) >= expected_checks


def test_udp_throughput_counts_every_probe_and_the_kernels_drops():
    out = run_benchmark("udp_throughput.py", ["--seconds", "2", "--rate", "5000"])
    assert out["benchmark"] == "udp_throughput"
    assert out["sent"] > 0 and out["replies"] + out["lost"] == out["sent"], out
    assert 0 < out["achieved_rate"] <= out["offered_rate"] * 1.05, out
    assert set(out["udp_snmp"]["delta"]) >= {"RcvbufErrors", "InErrors"}
    assert out["socket_drops"] >= 0 and out["rtt_ms"]["p50"] > 0

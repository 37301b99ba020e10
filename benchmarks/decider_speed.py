"""Decider speed: a full recompute (snapshot + every decision) and one decision lookup, beside plain-dict baselines.

A full recompute here is what the daemon does after a probing interval in which every row got a sample: take a
table snapshot (every row changed) and decide every (service, group). Its baseline is the least any recompute does:
for each group, the smaller of two floats per region from a dict, then the smallest region. A lookup is
`Decider.lookup(service, group)`, and the whole client path (client IP -> group by longest prefix, lookup,
the client's sticky refinement); their baseline is a plain `dict.get`. Peak memory (tracemalloc) of the table
with its snapshot and decisions is reported beside the process's maximum RSS.

    .venv/bin/python benchmarks/decider_speed.py            # 10,000 groups x 20 regions x 2 paths
"""

from __future__ import annotations

import argparse
import gc
import random
import resource
import statistics
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, loadavg, log, ratio  # noqa: E402

from latency_router.config.models import Config  # noqa: E402
from latency_router.decider.engine import Decider  # noqa: E402
from latency_router.decider.groups import GroupIndex  # noqa: E402
from latency_router.decider.table import LatencyTable, TableConfig  # noqa: E402
from latency_router.probes.base import Sample  # noqa: E402

NAME = "decider_speed"
PATHS = ("direct", "accelerator")


def build_config(n_groups: int, n_regions: int, rng: random.Random) -> Config:
    """n_regions regions with a direct and an accelerator path, n_groups groups with a /24 and a location each."""
    regions = [
        {
            "name": f"r{i:02d}",
            "lat": rng.uniform(-60, 60),
            "lon": rng.uniform(-180, 180),
            "paths": [
                {"name": "direct", "probe": f"udp://10.255.{i}.1:7007", "answer": f"10.255.{i}.1"},
                {"name": "accelerator", "probe": f"udp://10.254.{i}.1:7007", "answer": f"10.254.{i}.1"},
            ],
        }
        for i in range(n_regions)
    ]
    groups = [
        {"name": f"g{i}", "cidrs": [f"10.{i >> 8 & 255}.{i & 255}.0/24"], "lat": rng.uniform(-60, 60), "lon": rng.uniform(-180, 180)}
        for i in range(n_groups)
    ]
    return Config.model_validate({"agent": {"name": "bench"}, "regions": regions, "groups": groups,
                                  "services": [{"name": "api", "policy": "latency"}]})


def fill(table: LatencyTable, truth: dict, rng: random.Random, samples: int, t0: float) -> float:
    """`samples` rounds of one sample per row (3 % noise); returns the clock after the last round."""
    now = t0
    gauss = rng.gauss
    for k in range(samples):
        now = t0 + k
        for key, ms in truth.items():
            table.add_sample(key, Sample(target="bench", kind="udp", sent_at=now, rtt_ms=ms * (1 + 0.03 * gauss(0, 1))), now)
            table.add_round(key, 0.0, now)
    return now


def time_per_call_us(fn, keys: list, repeats: int) -> float:
    """The best of `repeats` passes over keys, in microseconds per call."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter_ns()
        for k in keys:
            fn(k)
        best = min(best, (time.perf_counter_ns() - start) / len(keys) / 1000.0)
    return best


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--groups", type=int, default=10_000)
    p.add_argument("--regions", type=int, default=20)
    p.add_argument("--samples", type=int, default=8, help="rounds of samples per row before timing")
    p.add_argument("--recomputes", type=int, default=5, help="timed full recomputes (median reported)")
    p.add_argument("--lookups", type=int, default=200_000)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    config = build_config(args.groups, args.regions, rng)
    rows = args.groups * args.regions * len(PATHS)
    log(NAME, f"{args.groups} groups x {args.regions} regions x {len(PATHS)} paths = {rows} rows")
    truth = {
        (g.name, r.name, path): rng.uniform(5, 300) * (0.9 if path == "accelerator" else 1.0)
        for g in config.groups for r in config.regions for path in PATHS
    }

    gc.collect()
    tracemalloc.start()
    table = LatencyTable(TableConfig.from_settings(config.probing, config.health, config.table))
    decider = Decider(config)
    now = fill(table, truth, rng, args.samples, 0.0)
    decisions = decider.evaluate(table.snapshot(now), now)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(decisions) == len(decider.plans)

    # timed: every row gets one more sample, then snapshot + every decision
    snap_s, decide_s, total_s, ingest_s = [], [], [], []
    for _ in range(args.recomputes):
        now += 1.0
        gc.collect()
        t0 = time.perf_counter()
        fill(table, truth, rng, 1, now)
        ingest_s.append(time.perf_counter() - t0)
        gc.collect()
        t0 = time.perf_counter()
        snapshot = table.snapshot(now)
        t1 = time.perf_counter()
        decider.evaluate(snapshot, now)
        t2 = time.perf_counter()
        snap_s.append(t1 - t0)
        decide_s.append(t2 - t1)
        total_s.append(t2 - t0)
    # an evaluation of an unchanged table: the snapshot is reused
    t0 = time.perf_counter()
    decider.evaluate(table.snapshot(now), now)
    unchanged_s = time.perf_counter() - t0

    # baseline recompute: the plain-dict minimum per group
    flat = {k: v for k, v in truth.items()}
    region_names = [r.name for r in config.regions]
    group_names = [g.name for g in config.groups]
    t0 = time.perf_counter()
    best = {}
    for g in group_names:
        best[g] = min(min(flat[(g, r, "direct")], flat[(g, r, "accelerator")]) for r in region_names)
    baseline_recompute_s = time.perf_counter() - t0

    # lookups
    keys = [rng.choice(group_names) for _ in range(args.lookups)]
    plain = {("api", g): decider.lookup("api", g) for g in group_names}
    lookup_us = time_per_call_us(lambda g: decider.lookup("api", g), keys, 3)
    dict_us = time_per_call_us(lambda g: plain.get(("api", g)), keys, 3)
    index = GroupIndex.from_config(config)
    ips = [f"10.{i >> 8 & 255}.{i & 255}.{rng.randrange(1, 255)}" for i in (int(k[1:]) for k in keys)]

    def client_lookup(ip: str):
        return decider.lookup("api", index.lookup(ip)).for_client(ip)  # type: ignore[union-attr]

    assert client_lookup(ips[0]).group == keys[0]
    client_us = time_per_call_us(client_lookup, ips, 3)

    recompute = statistics.median(total_s)
    out = {
        "benchmark": NAME,
        "groups": args.groups,
        "regions": args.regions,
        "paths": len(PATHS),
        "rows": rows,
        "decisions": len(decisions),
        "recompute_s": {
            "median": round(recompute, 4),
            "max": round(max(total_s), 4),
            "snapshot_median": round(statistics.median(snap_s), 4),
            "decide_median": round(statistics.median(decide_s), 4),
            "unchanged_table": round(unchanged_s, 4),
            "ingest_round_median": round(statistics.median(ingest_s), 4),
            "interval_cpu_median": round(statistics.median([a + b for a, b in zip(ingest_s, total_s)]), 4),
            "runs": args.recomputes,
        },
        "baseline_recompute_s": round(baseline_recompute_s, 4),
        "recompute_ratio_to_baseline": ratio(recompute, baseline_recompute_s, 1),
        "lookup_us": {
            "decider_lookup": round(lookup_us, 3),
            "dict_baseline": round(dict_us, 3),
            "ratio_to_baseline": ratio(lookup_us, dict_us, 2),
            "client_ip_lookup": round(client_us, 3),
        },
        "memory": {
            "peak_traced_mb": round(peak / 2**20, 1),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        },
        "loadavg": loadavg(),
        "python": sys.version.split()[0],
    }
    out["checks"] = {
        "recompute_within_1s": recompute <= 1.0,
        "decide_only_within_1s": statistics.median(decide_s) <= 1.0,
        "lookup_within_10us": lookup_us <= 10.0,
        "client_ip_lookup_within_10us": client_us <= 10.0,
    }
    emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

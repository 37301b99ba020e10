"""DNS exporter: how soon a decision change is served by a real PowerDNS, and how quiet DNS stays while the lab is noisy.

Part 1 (follow): the daemon on a lab of three regions keeps `api.example.com` in a real PowerDNS. Each cycle pins every
group to another region (admin API) and times, polling DNS every 5 ms, from the last pin's answer to the first DNS
answer that is the new one; then unpins and times the way back. Baseline in the same run: a PATCH straight to
PowerDNS's API, timed the same way to its first DNS answer. Target: at most one probe interval plus 1 s.

Part 1b (outage): the daemon on the lab, where eu-west-1 goes dark (both paths) a few seconds after start; from the
moment the decision changed (its changed_at) to the first DNS answer that is the new region, once per run.

Part 2 (quiet): the same daemon on a noisy lab (every path's jitter twice the hysteresis margin of 2 ms) for
--quiet seconds; the exporter's writes after the first are counted (target: none), beside the evaluations made.

    .venv/bin/python benchmarks/dns_exporter.py             # as root (the lab's nfqueue mode); about 11 minutes
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))  # the test suite's PowerDNS and daemon runners, reused as they are

import dns.message  # noqa: E402
import dns.query  # noqa: E402
import dns.rdatatype  # noqa: E402

from _common import emit, loadavg, log, ratio  # noqa: E402
from daemon_support import Daemon, free_port, lab_config, outages  # noqa: E402
from pdns_support import PowerDNS, dns_toml  # noqa: E402

NAME = "dns_exporter"
ZONE, RECORD = "example.com.", "api.example.com."
TOKEN = "bench-admin-token"
API_KEY = "bench-pdns-api-key"
GROUPS = ("eu", "us", "apac", "default")
EU, US = "198.51.100.1", "198.51.100.2"


def served(server: tuple[str, int]) -> set[str]:
    try:
        reply = dns.query.udp(dns.message.make_query(RECORD, "A"), server[0], port=server[1], timeout=0.5)
    except Exception:  # noqa: BLE001 - any failure is "not served yet"
        return set()
    return {rr.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset}


def until_served(server: tuple[str, int], want: set[str], timeout_s: float = 10.0) -> float | None:
    """Seconds (perf_counter) until DNS serves exactly `want`, polling every 5 ms; None on timeout."""
    start = time.perf_counter()
    while time.perf_counter() - start < timeout_s:
        if served(server) == want:
            return time.perf_counter() - start
        time.sleep(0.005)
    return None


def config(pdns: PowerDNS, port: int, noisy: bool) -> str:
    text = lab_config(port, token_env="LR_TOKEN")
    if noisy:  # jitter of 4 ms on every path: twice the hysteresis margin (2 ms)
        for old in ('jitter = "1ms"', 'jitter = "500us"', 'jitter = "2ms"', 'jitter = "5ms"'):
            text = text.replace(old, 'jitter = "4ms"')
    return text + dns_toml(pdns, ZONE, RECORD)


def exporter(d: Daemon) -> dict:
    return d.request("/v1/exporters")[1]["exporters"][0]


def follow(cycles: int, work: Path) -> dict:
    pdns = PowerDNS(work / "pdns1", API_KEY)
    (work / "pdns1").mkdir()
    pdns.start()
    d = None
    try:
        pdns.create_zone(ZONE)
        (work / "d1").mkdir()
        d = Daemon(work / "d1", config(pdns, free_port(), noisy=False), env={"LR_PDNS_KEY": API_KEY, "LR_TOKEN": TOKEN})
        d.wait_serving()
        assert until_served(pdns.dns_server, {EU}, 20.0) is not None, "PowerDNS never served eu-west-1"
        to_dns, baseline = [], []
        for _ in range(cycles):
            for group in GROUPS:
                d.request("/v1/admin/pin", method="POST", token=TOKEN,
                          body={"service": "api", "group": group, "region": "us-east-1", "path": "accelerator"})
            to_dns.append(until_served(pdns.dns_server, {US}))
            for group in GROUPS:
                d.request("/v1/admin/unpin", method="POST", token=TOKEN, body={"service": "api", "group": group})
            to_dns.append(until_served(pdns.dns_server, {EU}))
        status = exporter(d)
        d.stop()  # the exporter is PowerDNS's other writer: its SQLite backend would refuse concurrent writes (500)
        # baseline: a change written straight to PowerDNS's API (another name), timed the same way
        for i in range(cycles * 2):
            value = f"192.0.2.{i % 200 + 1}"
            start = time.perf_counter()
            pdns.patch(ZONE, [{"name": f"base.{ZONE}", "type": "A", "ttl": 60, "changetype": "REPLACE",
                               "records": [{"content": value, "disabled": False}]}])
            while time.perf_counter() - start < 10:
                reply = dns.query.udp(dns.message.make_query(f"base.{ZONE}", "A"), "127.0.0.1", port=pdns.dns_port, timeout=0.5)
                if {rr.address for rrset in reply.answer for rr in rrset} == {value}:
                    break
                time.sleep(0.005)
            baseline.append(time.perf_counter() - start)
        ok = [x for x in to_dns if x is not None]
        return {
            "changes": len(to_dns),
            "served": len(ok),
            "decision_to_dns_s": {"p50": round(statistics.median(ok), 4), "max": round(max(ok), 4)} if ok else None,
            "baseline_api_patch_to_dns_s": {"p50": round(statistics.median(baseline), 4), "max": round(max(baseline), 4)},
            "ratio_p50_to_baseline": ratio(statistics.median(ok), statistics.median(baseline), 2) if ok else None,
            "exporter_writes": status["writes_total"],
            "exporter_failures": status["failures_total"],
        }
    finally:
        if d is not None:
            d.close()
        pdns.stop()


OUTAGE_AT_S = 6.0


def outage(runs: int, work: Path) -> dict:
    lags = []
    for i in range(runs):
        pdns = PowerDNS(work / f"pdns-o{i}", API_KEY)
        (work / f"pdns-o{i}").mkdir()
        pdns.start()
        d = None
        try:
            pdns.create_zone(ZONE)
            events = outages([("eu-west-1", "direct"), ("eu-west-1", "accelerator")], OUTAGE_AT_S)
            text = lab_config(free_port(), events=events, token_env="LR_TOKEN") + dns_toml(pdns, ZONE, RECORD)
            (work / f"d-o{i}").mkdir()
            d = Daemon(work / f"d-o{i}", text, env={"LR_PDNS_KEY": API_KEY, "LR_TOKEN": TOKEN})
            d.wait_serving()
            assert until_served(pdns.dns_server, {EU}, 20.0) is not None, "PowerDNS never served eu-west-1"

            def moved() -> dict | None:
                status, body = d.request("/v1/decision?service=api&group=eu")
                return body if status == 200 and body["region"] == "us-east-1" else None

            decision = d.wait_until(moved, OUTAGE_AT_S + 20.0, "the decision to leave eu-west-1", poll_s=0.01)
            assert until_served(pdns.dns_server, {US}) is not None, "PowerDNS never served us-east-1"
            lags.append(time.time() - decision["changed_at"])  # an upper bound: when this loop saw it
        finally:
            if d is not None:
                d.stop()
                d.close()
            pdns.stop()
    return {"runs": runs, "decision_to_dns_s": {"p50": round(statistics.median(lags), 4), "max": round(max(lags), 4)},
            "bound_s": 2.0}


def quiet(duration_s: float, work: Path) -> dict:
    pdns = PowerDNS(work / "pdns2", API_KEY)
    (work / "pdns2").mkdir()
    pdns.start()
    d = None
    try:
        pdns.create_zone(ZONE)
        (work / "d2").mkdir()
        d = Daemon(work / "d2", config(pdns, free_port(), noisy=True), env={"LR_PDNS_KEY": API_KEY, "LR_TOKEN": TOKEN})
        d.wait_serving()
        d.wait_until(lambda: exporter(d)["writes_total"] >= 1 and exporter(d)["state"] == "ok", 30.0, "a first write")
        first = exporter(d)["writes_total"]
        t0 = time.monotonic()
        while time.monotonic() - t0 < duration_s:
            time.sleep(min(10.0, duration_s))
        status = exporter(d)
        metrics = d.request("/metrics")[1]
        changes = sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
                      if line.startswith("latency_router_decision_changes_total{"))
        return {
            "duration_s": duration_s,
            "jitter_ms": 4.0,
            "hysteresis_margin_ms": 2.0,
            "writes_after_the_first": status["writes_total"] - first,
            "evaluations_about": int(duration_s),  # one per probing interval of 1 s
            "decision_changes": changes,
            "exporter_state": status["state"],
        }
    finally:
        if d is not None:
            d.stop()
            d.close()
        pdns.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cycles", type=int, default=10, help="pin/unpin cycles in part 1 (two changes each)")
    p.add_argument("--outages", type=int, default=3, help="lab outages in part 1b (one daemon each)")
    p.add_argument("--quiet", type=float, default=600.0, help="seconds of the noisy run in part 2 (default 600)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        log(NAME, f"follow: {args.cycles} cycles")
        one = follow(args.cycles, work)
        log(NAME, f"outage: {args.outages} runs")
        dark = outage(args.outages, work)
        log(NAME, f"quiet: {args.quiet:g} s on a noisy lab")
        two = quiet(args.quiet, work)
    out = {"benchmark": NAME, "follow": one, "outage": dark, "quiet": two, "loadavg": loadavg(), "python": sys.version.split()[0]}
    out["checks"] = {
        "every_change_served": one["served"] == one["changes"],
        "decision_to_dns_within_interval_plus_1s": bool(one["decision_to_dns_s"]) and one["decision_to_dns_s"]["max"] <= 2.0,
        "outage_to_dns_within_interval_plus_1s": dark["decision_to_dns_s"]["max"] <= dark["bound_s"],
        "no_write_after_the_first": two["writes_after_the_first"] == 0,
    }
    emit(out)
    return 0


if __name__ == "__main__":
    if os.geteuid() != 0:
        print(f"{NAME}: run as root (the lab's nfqueue mode); user-space mode works but times differ", file=sys.stderr)
    sys.exit(main())

"""API throughput: GET /v1/decision under wrk at 64 connections beside a minimal aiohttp app, then probe error and RSS
while the daemon probes 1,000 targets per second.

Prints one JSON object (progress on stderr). Needs root (the lab injects its delay with NFQUEUE) and wrk.

1. Side by side, interleaved in rounds (baseline, daemon, baseline, daemon, ...; medians reported): a minimal aiohttp
   app (one handler, web.json_response, no access log, uvloop through latency_router.aio.run_async, one process) and
   `latency-router run` on examples/lab.toml (its lab in nfqueue mode, on addresses and a queue of its own), both
   loaded by the same wrk command. Throughput and p99 come from wrk's own histogram, written as JSON by a Lua
   `done()` callback.
2. Under probing: a generated config of `--paths` lab paths probed `--samples` times per `--interval` (200 x 5 per 1 s:
   1,000 probes per second), the lab run by this script so that its release lateness is known for every window.
   Probe error is the daemon's mean RTT per path over a window (from the exact `_sum` and `_count` of its
   latency_router_probe_rtt_seconds histogram, scraped before and after) less the lab's injected delay. Windows
   alternate: idle, the daemon's API under the same wrk load, and the baseline app under that load while the daemon
   probes (the machine as busy, the daemon's loop not). Every path's delay sits 0.5 ms under a histogram bucket
   bound, so the bucket counts also give the share of probes off by more than 0.5 ms. The CPU share of the daemon and
   the lab's processes is read per window, the daemon's RSS at the end, from /proc.

    sudo .venv/bin/python benchmarks/api_throughput.py                    # about 2.5 minutes
    sudo .venv/bin/python benchmarks/api_throughput.py --duration 2 --rounds 1 --probe-rounds 1 --paths 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402 - the benchmarks directory is put on the path just above
    counters_delta,
    emit,
    kernel_counters,
    lab_window,
    loadavg,
    log,
    percentile,
    raise_nofile,
    ratio,
    require_root,
)

NAME = "api_throughput"
ROOT = Path(__file__).resolve().parents[1]
LAB_EXAMPLE = ROOT / "examples" / "lab.toml"
DECISION_PATH = "/v1/decision?service=api&client=192.0.2.10"
BASELINE_PATH = "/hello"
BASELINE_JSON = {"message": "hello"}

# Targets (issue 4 and DESIGN.md's clarifications).
THROUGHPUT_RATIO_MIN = 0.7
P99_RATIO_MAX = 1.5
P99_MAX_MS = 10.0
ERROR_RATIO_MAX = 2.0

# Path delays 0.5 ms under bounds of the daemon's RTT histogram (RTT_BUCKETS_S): a probe in the bucket of
# (delay + 0.5 ms) is off by at most 0.5 ms.
DELAYS_MS = (9.5, 19.5, 29.5, 49.5, 99.5)
EDGE_MARGIN_MS = 0.5
PATHS_PER_REGION = 10
SENT = "latency_router_engine_probes_sent_total"
SERVER_START_S = 30.0  # a daemon with its lab calibrates first
DECISION_WAIT_S = 30.0
STOP_WAIT_S = 20.0

# wrk's done() callback: the summary and its latency histogram (microseconds) as one JSON object in a file.
WRK_LUA = r"""
local out = os.getenv("WRK_JSON_OUT")
done = function(summary, latency, requests)
  local e = summary.errors
  local f = assert(io.open(out, "w"))
  f:write(string.format(
    '{"requests":%.0f,"duration_us":%.0f,"bytes":%.0f,' ..
    '"errors":{"connect":%.0f,"read":%.0f,"write":%.0f,"status":%.0f,"timeout":%.0f},' ..
    '"latency_us":{"min":%.0f,"mean":%.3f,"stdev":%.3f,"p50":%.0f,"p90":%.0f,"p99":%.0f,"p999":%.0f,"max":%.0f}}',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency:percentile(99.9), latency.max))
  f:close()
end
"""


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the baseline app (run in its own process with --serve-baseline PORT) -----------------------------------------


async def serve_baseline(port: int) -> None:
    """The hello-world app: one GET handler returning a small JSON body, until SIGTERM or SIGINT."""
    from aiohttp import web

    async def hello(request: web.Request) -> web.Response:
        return web.json_response(BASELINE_JSON)

    app = web.Application()
    app.router.add_get(BASELINE_PATH, hello)
    runner = web.AppRunner(app, access_log=None)  # as the daemon runs its API: no access log
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port, reuse_address=True).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


# ---- servers in subprocesses ----------------------------------------------------------------------------------------


class Server:
    """An HTTP server in a subprocess (its own session, so a hung one is killed with its helpers); output in files."""

    def __init__(self, name: str, argv: list[str], port: int, workdir: Path) -> None:
        self.name = name
        self.port = port
        self.out = (workdir / f"{name}.stdout").open("w+")
        self.err = (workdir / f"{name}.stderr").open("w+")
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=self.err, cwd=workdir, start_new_session=True)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def get(self, path: str, timeout_s: float = 5.0) -> tuple[int, bytes]:
        """(status, body) of one GET."""
        try:
            with urllib.request.urlopen(self.url(path), timeout=timeout_s) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def get_json(self, path: str) -> Any:
        status, body = self.get(path)
        if status != 200:
            raise RuntimeError(f"{self.name}: GET {path}: HTTP {status}: {body[:200]!r}")
        return json.loads(body)

    def wait_until(self, check: Callable[[], Any], timeout_s: float, what: str) -> Any:
        """Poll check() (falsy or a connection error: not yet) every 0.1 s until it returns something truthy."""
        deadline = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}) while waiting for {what}: "
                                   f"{self.tail()}")
            try:
                last = check()
            except (OSError, ValueError) as exc:
                last = exc
            else:
                if last:
                    return last
            time.sleep(0.1)
        raise RuntimeError(f"{self.name}: no {what} within {timeout_s:g} s (last: {last!r}); {self.tail()}")

    def tail(self) -> str:
        self.err.flush()
        return Path(self.err.name).read_text()[-2000:]

    def stdout(self) -> str:
        self.out.flush()
        return Path(self.out.name).read_text()

    def memory_mb(self) -> dict[str, float]:
        """VmRSS and VmHWM (the peak) of the server process, in MiB."""
        out = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = round(int(value.split()[0]) / 1024, 1)
        return {"rss_mb": out["VmRSS"], "peak_rss_mb": out["VmHWM"]}

    def stop(self) -> bool:
        """SIGTERM, then SIGKILL to its whole session if it does not exit in time; True when it stopped by itself."""
        clean = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_WAIT_S)
            except subprocess.TimeoutExpired:
                clean = False
        if not clean or self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.proc.wait(timeout=10)
        self.out.close()
        self.err.close()
        return clean


class Fleet:
    """Every server this run started and the lab rules it owns: all stopped and removed at the end, even on failure."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.servers: list[Server] = []
        self.tags: list[str] = []

    def start(self, name: str, argv: list[str], port: int) -> Server:
        server = Server(name, argv, port, self.workdir)
        self.servers.append(server)
        return server

    def stop(self, server: Server) -> None:
        if not server.stop():
            log(NAME, f"{server.name} did not stop within {STOP_WAIT_S:g} s of SIGTERM; killed")
        self.servers.remove(server)

    def close(self) -> None:
        """Stop every server; remove lab rules left behind (a daemon that had to be killed leaves its lab's)."""
        for server in list(self.servers):
            try:
                self.stop(server)
            except Exception as exc:  # noqa: BLE001 - keep stopping the rest
                log(NAME, f"stopping {server.name}: {exc}")
        try:
            from latency_router.lab import iptables

            if self.tags and iptables.available() is None:
                for tag in self.tags:
                    iptables.remove_rules(tag)
        except Exception as exc:  # noqa: BLE001 - cleanup must not hide the result
            log(NAME, f"removing lab rules: {exc}")


def start_baseline(fleet: Fleet) -> Server:
    port = free_tcp_port()
    server = fleet.start("baseline", [sys.executable, str(Path(__file__).resolve()), "--serve-baseline", str(port)],
                         port)
    server.wait_until(lambda: server.get(BASELINE_PATH, 1.0)[0] == 200, SERVER_START_S, "answer")
    return server


def start_daemon(fleet: Fleet, name: str, config: str, port: int, lab_queue: int | None = None) -> Server:
    """`latency-router run -c` on the config; returns once its decision for the benchmark's client is measured."""
    from latency_router.config import load_config
    from latency_router.lab import iptables

    path = fleet.workdir / f"{name}.toml"
    path.write_text(config)
    load_config(path)  # a config mistake here is this script's: say so before starting anything
    server = fleet.start(name, [sys.executable, "-m", "latency_router", "run", "-c", str(path)], port)
    if lab_queue is not None:
        fleet.tags.append(iptables.tag_for(server.proc.pid, lab_queue))  # the rules of the lab it runs
    server.wait_until(lambda: server.get("/healthz", 1.0)[0] == 200, SERVER_START_S, "/healthz")

    def measured() -> bool:
        status, body = server.get(DECISION_PATH, 1.0)
        return status == 200 and json.loads(body).get("basis") == "measured"

    server.wait_until(measured, DECISION_WAIT_S, "measured decision")
    return server


# ---- wrk ------------------------------------------------------------------------------------------------------------


def run_wrk(url: str, args: argparse.Namespace, workdir: Path, duration_s: float | None = None) -> dict[str, Any]:
    """One bounded wrk run; throughput and latency figures from its done() callback."""
    duration = args.duration if duration_s is None else duration_s
    script = workdir / "report.lua"
    if not script.exists():
        script.write_text(WRK_LUA)
    out = workdir / "wrk.json"
    out.unlink(missing_ok=True)
    cmd = [args.wrk, "-t", str(args.threads), "-c", str(args.connections), "-d", f"{duration:g}s",
           "--latency", "--timeout", "2s", "-s", str(script), url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 30,
                          env={**os.environ, "WRK_JSON_OUT": str(out)})
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    raw = json.loads(out.read_text())
    seconds = raw["duration_us"] / 1e6
    lat = raw["latency_us"]
    errors = {k: int(v) for k, v in raw["errors"].items() if v}
    return {
        "requests": int(raw["requests"]),
        "rps": round(raw["requests"] / seconds, 1) if seconds > 0 else 0.0,
        "p50_ms": round(lat["p50"] / 1000, 3),
        "p90_ms": round(lat["p90"] / 1000, 3),
        "p99_ms": round(lat["p99"] / 1000, 3),
        "p999_ms": round(lat["p999"] / 1000, 3),
        "max_ms": round(lat["max"] / 1000, 3),
        "mean_ms": round(lat["mean"] / 1000, 3),
        "errors": errors,
        "duration_s": round(seconds, 3),
    }


def medians(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each figure over rounds, beside every round."""
    out: dict[str, Any] = {k: round(statistics.median(r[k] for r in runs), 3)
                           for k in ("rps", "p50_ms", "p99_ms", "p999_ms", "max_ms")}
    out["errors"] = sum(sum(r["errors"].values()) for r in runs)
    out["rounds"] = runs
    return out


# ---- part 1: side by side -------------------------------------------------------------------------------------------


def lab_example_config(port: int, octet: int, queue_num: int) -> str:
    """examples/lab.toml on `port`, its lab in nfqueue mode on `queue_num`, addresses 127.<octet>.x.y, no events."""
    text = LAB_EXAMPLE.read_text()
    steps = [
        (r'listen = "127\.0\.0\.1:9180"', f'listen = "127.0.0.1:{port}"'),
        (r'(?m)^mode = "auto".*$', f'mode = "nfqueue"\nqueue_num = {queue_num}'),
        (r"\[\[lab\.events\]\]\n(?:(?!\[).*\n)*", ""),  # scheduled outages would move the decision mid-round
        (r"(udp|tcp|https?)://127\.0\.(\d+)\.(\d+)", rf"\1://127.{octet}.\2.\3"),
    ]
    for pattern, replacement in steps:
        text, n = re.subn(pattern, replacement, text)
        if n == 0:
            raise RuntimeError(f"examples/lab.toml changed: no match for {pattern!r}")
    return text


def side_by_side(args: argparse.Namespace, fleet: Fleet, baseline: Server) -> dict[str, Any]:
    workdir = fleet.workdir
    port = free_tcp_port()
    log(NAME, "starting the daemon on the lab example")
    daemon = start_daemon(fleet, "daemon-lab", lab_example_config(port, args.octet, args.queue_num), port,
                          lab_queue=args.queue_num)
    decision = daemon.get_json(DECISION_PATH)
    urls = {"baseline": baseline.url(BASELINE_PATH), "daemon": daemon.url(DECISION_PATH)}
    body_bytes = {"baseline": len(baseline.get(BASELINE_PATH)[1]), "daemon": len(daemon.get(DECISION_PATH)[1])}
    for url in urls.values():  # warm both (connections, caches), not counted
        run_wrk(url, args, workdir, duration_s=min(2.0, args.duration))
    runs: dict[str, list[dict[str, Any]]] = {"baseline": [], "daemon": []}
    for r in range(args.rounds):
        for who in ("baseline", "daemon"):
            result = run_wrk(urls[who], args, workdir)
            runs[who].append(result)
            log(NAME, f"round {r + 1}/{args.rounds} {who}: {result['rps']:.0f} req/s, p50 {result['p50_ms']} ms, "
                      f"p99 {result['p99_ms']} ms, errors {result['errors'] or 0}")
    memory = daemon.memory_mb()
    lab_line = next((line for line in daemon.stdout().splitlines() if line.startswith("lab:")), "")
    out = {
        "baseline": {"is": "aiohttp hello-world: one handler returning web.json_response, no access log, uvloop, "
                           "one process", "url": urls["baseline"], "body_bytes": body_bytes["baseline"],
                     **medians(runs["baseline"])},
        "daemon": {"is": "latency-router run on examples/lab.toml (3 regions x 2 paths, its lab in nfqueue mode)",
                   "url": urls["daemon"], "body_bytes": body_bytes["daemon"], "decision": {
                       k: decision.get(k) for k in ("group", "region", "path", "rtt_ms", "basis")},
                   "lab": lab_line.removeprefix("lab: "), **memory, **medians(runs["daemon"])},
    }
    out["throughput_ratio"] = ratio(out["daemon"]["rps"], out["baseline"]["rps"])
    out["p99_ratio"] = ratio(out["daemon"]["p99_ms"], out["baseline"]["p99_ms"])
    fleet.stop(daemon)
    return out


# ---- part 2: probe error while probing 1,000 targets per second -----------------------------------------------------


def many_paths(n: int, octet: int) -> list[Any]:
    """n lab paths, PATHS_PER_REGION to a region, delays cycling through DELAYS_MS, jitter and loss none."""
    from latency_router.lab import LabPathSpec

    names = ("direct", "accelerator") + tuple(f"p{i}" for i in range(2, PATHS_PER_REGION))
    return [
        LabPathSpec(region=f"r{i // PATHS_PER_REGION:02d}", path=names[i % PATHS_PER_REGION],
                    address=f"127.{octet}.{i // 250}.{i % 250 + 1}", delay_s=DELAYS_MS[i % len(DELAYS_MS)] / 1000)
        for i in range(n)
    ]


def many_paths_config(paths: list[Any], port: int, args: argparse.Namespace) -> str:
    """A daemon config probing every lab path over UDP (the lab itself runs in this script)."""
    lines = ['[agent]', 'name = "bench"', '', '[api]', f'listen = "127.0.0.1:{port}"', '',
             '[probing]', f'interval = "{args.interval:g}s"', f'timeout = "{args.timeout_ms:g}ms"',
             f'samples = {args.samples}', '']
    region = None
    for i, p in enumerate(paths):
        if p.region != region:
            region = p.region
            r = int(region[1:])
            lines += ['[[regions]]', f'name = "{region}"', f'lat = {(r * 7) % 120 - 60:.1f}',
                      f'lon = {(r * 37) % 360 - 180:.1f}', '']
        lines += ['[[regions.paths]]', f'name = "{p.path}"', f'probe = "udp://{p.address}:{p.udp_port}"',
                  f'answer = "198.18.{i // 250}.{i % 250 + 1}"', '']
    lines += ['[[groups]]', 'name = "eu"', 'cidrs = ["192.0.2.0/24"]', 'lat = 50.1', 'lon = 8.7', '',
              '[[services]]', 'name = "api"', 'policy = "latency"', '']
    return "\n".join(lines)


def scrape(daemon: Server) -> dict[str, Any]:
    """The figures of one /metrics scrape: the RTT histogram per (region, path), probe outcomes, engine health, RSS."""
    from prometheus_client.parser import text_string_to_metric_families

    status, body = daemon.get("/metrics", 10.0)
    if status != 200:
        raise RuntimeError(f"GET /metrics: HTTP {status}")
    hist: dict[tuple[str, str], dict[str, Any]] = {}
    outcomes: dict[str, float] = {}
    engine: dict[str, float] = {}
    for family in text_string_to_metric_families(body.decode()):
        for s in family.samples:
            if family.name == "latency_router_probe_rtt_seconds":
                h = hist.setdefault((s.labels["region"], s.labels["path"]), {"sum": 0.0, "count": 0.0, "le": {}})
                if s.name.endswith("_bucket"):
                    h["le"][float(s.labels["le"])] = s.value
                elif s.name.endswith("_sum"):
                    h["sum"] = s.value
                elif s.name.endswith("_count"):
                    h["count"] = s.value
            elif family.name == "latency_router_probe_results":
                outcomes[s.labels["outcome"]] = outcomes.get(s.labels["outcome"], 0.0) + s.value
            elif family.name.startswith("latency_router_engine_") or family.name == "process_resident_memory_bytes":
                engine[s.name] = s.value
    return {"t": time.perf_counter(), "hist": hist, "outcomes": outcomes, "engine": engine}


def probe_error(before: dict[str, Any], after: dict[str, Any], truth_s: dict[tuple[str, str], float]) -> dict[str, Any]:
    """Each path's mean RTT over the window less its injected delay, and the share of probes off by more than 0.5 ms."""
    errors_us: list[float] = []
    weighted = n_total = over = 0.0
    missing = 0
    for key, truth in truth_s.items():
        a, b = before["hist"].get(key), after["hist"].get(key)
        count = (b["count"] - a["count"]) if a and b else 0.0
        if count <= 0:
            missing += 1
            continue
        error = ((b["sum"] - a["sum"]) / count - truth) * 1e6
        errors_us.append(error)
        weighted += abs(error) * count
        n_total += count
        edge = min(b["le"], key=lambda le: abs(le - (truth + EDGE_MARGIN_MS / 1000)))
        over += count - (b["le"][edge] - a["le"].get(edge, 0.0))
    wall = after["t"] - before["t"]
    lost = sum(v - before["outcomes"].get(k, 0.0) for k, v in after["outcomes"].items() if k != "ok")
    # counted when sent: a round's samples reach the histogram together, so its counts move in steps of a round
    sent = after["engine"].get(SENT, 0.0) - before["engine"].get(SENT, 0.0)
    return {
        "probes": int(n_total),
        "probes_per_s": round(sent / wall, 1) if wall > 0 else 0.0,
        "lost": int(lost),
        "paths_without_samples": missing,
        "error_us": {
            "mean_abs": round(weighted / n_total, 1) if n_total else None,
            "path_p50": None if not errors_us else round(percentile(errors_us, 50) or 0.0, 1),
            "path_p99": None if not errors_us else round(percentile(errors_us, 99) or 0.0, 1),
            "path_max": None if not errors_us else round(max(errors_us), 1),
        },
        "share_over_500us": round(over / n_total, 5) if n_total else None,
    }


def engine_window(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    e0, e1 = before["engine"], after["engine"]

    def delta(name: str) -> int:
        return int(e1.get(name, 0.0) - e0.get(name, 0.0))

    lag = e1.get("latency_router_engine_loop_lag_p99_seconds")
    return {
        # the engine's own gauge: over its sliding window (the last 60 s), not this window alone
        "loop_lag_p99_ms_last_60s": None if lag is None or math.isnan(lag) else round(lag * 1000, 3),
        "late_probes": delta("latency_router_engine_late_probes_total"),
        "skipped_probes": delta("latency_router_engine_skipped_probes_total"),
        "late_replies": delta("latency_router_engine_late_replies_total"),
        "socket_drops": delta("latency_router_engine_socket_drops_total"),
    }


def cpu_seconds(pid: int | None) -> float | None:
    """User plus system CPU time of a process so far (None when it is gone)."""
    if pid is None:
        return None
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    # after the command name: state is field 3, utime and stime are fields 14 and 15 (man 5 proc)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def probe_window(kind: str, daemon: Server, lab: Any, truth_s: dict[tuple[str, str], float],
                 load: Callable[[], dict[str, Any]] | None, args: argparse.Namespace,
                 others: dict[str, int | None]) -> dict[str, Any]:
    """One window, idle (a sleep) or under load (one wrk run): probe error, the lab's lateness, engine health, CPU."""
    pids = {"daemon": daemon.proc.pid, **others}
    lab_before = lab.stats(reset=True)
    kernel_before = kernel_counters()
    before = scrape(daemon)
    cpu_before = {k: cpu_seconds(pid) for k, pid in pids.items()}
    api = load() if load is not None else time.sleep(args.duration)
    cpu_after = {k: cpu_seconds(pid) for k, pid in pids.items()}
    after = scrape(daemon)
    kernel = counters_delta(kernel_counters(), kernel_before)
    window = lab_window(lab.stats(), lab_before)
    wall = after["t"] - before["t"]
    cpu = {k: round(100 * (cpu_after[k] - v) / wall, 1)  # type: ignore[operator]
           for k, v in cpu_before.items() if v is not None and cpu_after[k] is not None}
    figure: dict[str, Any] = {"kind": kind, "wall_s": round(wall, 3),
                              **probe_error(before, after, truth_s),
                              "engine": engine_window(before, after), "lab": window,
                              "cpu_percent": cpu,
                              "udp_rcvbuf_errors": kernel.get("udp_rcvbuf_errors", 0)}
    figure["valid"] = bool(window["on_time"] and figure["udp_rcvbuf_errors"] == 0 and figure["probes"] > 0)
    if api is not None:
        figure["api"] = api
    log(NAME, f"{kind}: {figure['probes_per_s']:.0f} probes/s, error mean {figure['error_us']['mean_abs']} us, "
              f"over 0.5 ms {figure['share_over_500us']}, lab lateness p99 {window['lateness_us']['p99']} us, "
              f"cpu % {cpu}"
              + (f", api {api['rps']:.0f} req/s p99 {api['p99_ms']} ms" if api else ""))
    return figure


def under_probing(args: argparse.Namespace, fleet: Fleet, baseline: Server) -> dict[str, Any]:
    from latency_router.lab import Lab

    workdir = fleet.workdir
    paths = many_paths(args.paths, args.octet + 1)
    truth_s = {(p.region, p.path): p.delay_s for p in paths}
    queue = args.queue_num + 1
    lab = Lab(paths, mode="nfqueue", queue_num=queue)
    log(NAME, f"starting a lab of {len(paths)} paths (queue {queue})")
    asyncio.run(lab.start())
    try:
        lab_info = lab.stats()
        port = free_tcp_port()
        log(NAME, f"starting the daemon: {len(paths)} paths x {args.samples} samples per {args.interval:g} s")
        daemon = start_daemon(fleet, "daemon-many", many_paths_config(paths, port, args), port)
        daemon.wait_until(lambda: daemon.get("/readyz", 1.0)[0] == 200, DECISION_WAIT_S, "/readyz")
        time.sleep(min(3.0, args.duration))  # a few rounds of every path before the first window
        urls = {"loaded": daemon.url(DECISION_PATH), "baseline_loaded": baseline.url(BASELINE_PATH)}
        others = {"lab_delayer": lab.engine_pid, "lab_listeners": lab.servers_pid, "baseline": baseline.proc.pid}
        windows: dict[str, list[dict[str, Any]]] = {"idle": [], "loaded": [], "baseline_loaded": []}
        for _ in range(args.probe_rounds):
            for kind in windows:
                url = urls.get(kind)
                load = None if url is None else (lambda u=url: run_wrk(u, args, workdir))
                windows[kind].append(probe_window(kind, daemon, lab, truth_s, load, args, others))
        memory = daemon.memory_mb()
        rss_metric = scrape(daemon)["engine"].get("process_resident_memory_bytes")
        fleet.stop(daemon)
    finally:
        fleet.close()  # the daemon first: its probes would otherwise count as lost while the lab stops
        asyncio.run(lab.stop())

    def med(kind: str, pick: Callable[[dict[str, Any]], float | None], valid_only: bool = False) -> float | None:
        values = [v for v in (pick(w) for w in windows[kind] if w["valid"] or not valid_only) if v is not None]
        return round(statistics.median(values), 3) if values else None

    # error figures from valid windows only: one taken while the lab ran late does not count (DESIGN.md)
    idle_err = med("idle", lambda w: w["error_us"]["mean_abs"], valid_only=True)
    loaded_err = med("loaded", lambda w: w["error_us"]["mean_abs"], valid_only=True)
    api = {who: {"rps": med(kind, lambda w: w["api"]["rps"]), "p99_ms": med(kind, lambda w: w["api"]["p99_ms"])}
           for who, kind in (("daemon", "loaded"), ("baseline", "baseline_loaded"))}
    return {
        "paths": len(paths),
        "regions": len({p.region for p in paths}),
        "samples": args.samples,
        "interval_s": args.interval,
        "probes_per_s_target": round(len(paths) * args.samples / args.interval, 1),
        "delays_ms": list(DELAYS_MS),
        "lab": {"mode": lab_info["mode"], "queue_num": lab_info["queue_num"], "calibration": lab_info["calibration"]},
        "error_is": "per path: mean probe RTT over the window (histogram _sum/_count deltas) less the injected delay; "
                    "mean_abs weights paths by their probes",
        "valid_rule": "the lab on time in the window (release lateness p99 at most 500 us, no queue drops) and no "
                      "UDP receive-buffer error; error figures are medians over valid windows only",
        "windows": windows,
        "probes_per_s": {k: med(k, lambda w: w["probes_per_s"]) for k in windows},
        "valid_windows": {k: sum(w["valid"] for w in ws) for k, ws in windows.items()},
        "error_us_mean_abs": {k: med(k, lambda w: w["error_us"]["mean_abs"], True) for k in windows},
        "share_over_500us": {k: med(k, lambda w: w["share_over_500us"], True) for k in windows},
        "error_ratio": ratio(loaded_err, idle_err, 2),
        # the daemon's API while it probes, beside the baseline app loaded the same way while the daemon probes
        "api_while_probing": {
            **api,
            "throughput_ratio": ratio(api["daemon"]["rps"], api["baseline"]["rps"]),
            "p99_ratio": ratio(api["daemon"]["p99_ms"], api["baseline"]["p99_ms"]),
        },
        "cpu_percent_median": {k: {who: med(k, lambda w, who=who: w["cpu_percent"].get(who))
                                   for who in ("daemon", "lab_delayer", "lab_listeners", "baseline")}
                               for k in windows},
        "memory": {**memory, "process_resident_memory_bytes": rss_metric},
    }


# ---- the run --------------------------------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> dict[str, Any]:
    started = time.perf_counter()
    load_before = loadavg()
    workdir = Path(tempfile.mkdtemp(prefix="api-bench-"))
    fleet = Fleet(workdir)
    try:
        log(NAME, "starting the baseline app")
        baseline = start_baseline(fleet)
        first = side_by_side(args, fleet, baseline)
        second = under_probing(args, fleet, baseline)
    finally:
        fleet.close()
        shutil.rmtree(workdir, ignore_errors=True)
    version = subprocess.run([args.wrk, "--version"], capture_output=True, text=True, timeout=10)
    # per kind of window, the median: one window's count moves with the rounds that straddle its edges
    rate_ok = all(rate is not None and rate >= 0.95 * second["probes_per_s_target"]
                  for rate in second["probes_per_s"].values())
    d = first["daemon"]
    return {
        "benchmark": NAME,
        "load_generator": {"tool": (version.stdout + version.stderr).split("[")[0].strip(), "threads": args.threads,
                           "connections": args.connections, "duration_s": args.duration, "rounds": args.rounds,
                           "order": "interleaved: baseline, daemon, baseline, daemon, ... (medians)"},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": loadavg()},
        **first,
        "under_probing": second,
        "checks": {
            "throughput_ratio_at_least_0.7": first["throughput_ratio"] is not None
            and first["throughput_ratio"] >= THROUGHPUT_RATIO_MIN,
            "p99_within_10ms": d["p99_ms"] <= P99_MAX_MS,
            "p99_ratio_at_most_1.5": first["p99_ratio"] is not None and first["p99_ratio"] <= P99_RATIO_MAX,
            "no_http_errors": d["errors"] == 0 and first["baseline"]["errors"] == 0,
            "probe_rate_reached": rate_ok,
            # from valid windows only: null when no idle or no loaded window was valid
            "probe_error_under_load_at_most_2x_idle": None if second["error_ratio"] is None
            else second["error_ratio"] <= ERROR_RATIO_MAX,
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds of each wrk run and idle window (default 10)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved baseline/daemon rounds (default 3)")
    p.add_argument("--probe-rounds", type=int, default=2, help="idle/loaded window pairs under probing (default 2)")
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--paths", type=int, default=200, help="lab paths probed in the second part (default 200)")
    p.add_argument("--samples", type=int, default=5, help="samples per path per interval (default 5)")
    p.add_argument("--interval", type=float, default=1.0, help="probing interval in seconds (default 1)")
    p.add_argument("--timeout-ms", type=float, default=500.0, help="probe timeout (default 500 ms)")
    p.add_argument("--queue-num", type=int, default=240,
                   help="NFQUEUE of the first lab; the second uses the next one (default 240)")
    p.add_argument("--octet", type=int, default=240,
                   help="lab addresses are 127.OCTET.x.y, then 127.OCTET+1.x.y (default 240)")
    p.add_argument("--wrk", default=shutil.which("wrk") or "wrk")
    p.add_argument("--serve-baseline", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    for name in ("duration", "rounds", "probe_rounds", "connections", "threads", "paths", "samples", "interval"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')}: must be positive")
    if not 1 <= args.octet <= 253:
        p.error("--octet: must be within 1..253")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.serve_baseline is not None:
        from latency_router.aio import run_async

        run_async(serve_baseline(args.serve_baseline))
        return 0
    require_root(NAME)
    if shutil.which(args.wrk) is None:
        print(f"{NAME}: wrk not found (apt-get install wrk)", file=sys.stderr)
        return 2
    raise_nofile()
    emit(run(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Daemon memory: RSS of `latency-router run` probing 1,000 UDP targets (1,000 probes/s), beside the same daemon with 10.

Each target is one path of a region, answered by an RFC 862 echo responder of this project on its own loopback port
(one helper process holds them all); no lab, so nothing but the daemon's own memory is measured. Both daemons run
`--settle` seconds, then their RSS (VmRSS, and the process_resident_memory_bytes metric) and probe rate are read.

    .venv/bin/python benchmarks/daemon_memory.py            # 1,000 targets against 10, 30 s each
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, free_port, loadavg, log, ratio  # noqa: E402

NAME = "daemon_memory"


async def _echo_ports(n: int) -> None:
    """The helper process: n echo responders on 127.0.0.1, their ports printed as one JSON line, until SIGTERM."""
    from latency_router.probes.responder import serve_echo

    ports: list[int] = []
    tasks = [asyncio.create_task(serve_echo("127.0.0.1", 0, on_listening=lambda a: ports.append(a[1]))) for _ in range(n)]
    for _ in range(200):
        if len(ports) == n:
            break
        await asyncio.sleep(0.05)
    print(json.dumps(ports), flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    for t in tasks:
        t.cancel()


def config(ports: list[int], api_port: int) -> str:
    """Regions of two paths each (direct, accelerator), one target per port; 10 groups, one latency service."""
    out = [f'[api]\nlisten = "127.0.0.1:{api_port}"\nready_grace = "5s"\n',
           '[probing]\ninterval = "1s"\ntimeout = "500ms"\nsamples = 1\nmax_in_flight = 2000\n']
    for i in range(0, len(ports), 2):
        out.append(f'[[regions]]\nname = "r{i // 2}"\nlat = 0.0\nlon = 0.0\n')
        for name, port in zip(("direct", "accelerator"), ports[i:i + 2]):
            out.append(f'[[regions.paths]]\nname = "{name}"\nprobe = "udp://127.0.0.1:{port}"\nanswer = "192.0.2.{i % 250 + 1}"\n')
    for g in range(10):
        out.append(f'[[groups]]\nname = "g{g}"\ncidrs = ["10.{g}.0.0/16"]\n')
    out.append('[[services]]\nname = "api"\npolicy = "latency"\n')
    return "\n".join(out)


def metric(text: str, name: str) -> float | None:
    m = re.search(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M)
    return float(m.group(1)) if m else None


def measure(targets: int, settle_s: float, workdir: Path) -> dict:
    """Run a daemon over `targets` echo ports for settle_s; its RSS and probe rate."""
    echo = subprocess.Popen([sys.executable, __file__, "--serve-echo", str(targets)], stdout=subprocess.PIPE, text=True)
    daemon = None
    try:
        ports = json.loads(echo.stdout.readline())  # type: ignore[union-attr]
        assert len(ports) == targets, f"{len(ports)} of {targets} echo ports"
        api_port = free_port("127.0.0.1", kind=__import__("socket").SOCK_STREAM)
        path = workdir / f"t{targets}.toml"
        path.write_text(config(ports, api_port))
        daemon = subprocess.Popen([sys.executable, "-m", "latency_router", "run", "-c", str(path)],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{api_port}/metrics"
        sent_at: list[tuple[float, float]] = []
        deadline = time.monotonic() + settle_s
        text = ""
        while time.monotonic() < deadline:
            time.sleep(1.0)
            try:
                with urllib.request.urlopen(url, timeout=5) as resp:
                    text = resp.read().decode()
            except OSError:
                continue
            sent = metric(text, "latency_router_engine_probes_sent_total")
            if sent is not None:
                sent_at.append((time.monotonic(), sent))
        assert daemon.poll() is None, "the daemon exited"
        with open(f"/proc/{daemon.pid}/status") as f:
            rss_kb = int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1))  # type: ignore[union-attr]
        half = sent_at[len(sent_at) // 2:]  # the second half: start-up is over
        rate = (half[-1][1] - half[0][1]) / (half[-1][0] - half[0][0]) if len(half) > 1 else None
        return {
            "targets": targets,
            "rss_mb": round(rss_kb / 1024, 1),
            "process_resident_memory_mb": round((metric(text, "process_resident_memory_bytes") or 0) / 2**20, 1),
            "probes_per_s": None if rate is None else round(rate, 1),
            "samples_ok": metric(text, 'latency_router_engine_samples_total\\{outcome="ok"\\}'),
            "samples_timed_out": metric(text, 'latency_router_engine_samples_total\\{outcome="timeout"\\}'),
        }
    finally:
        for proc in (daemon, echo):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", type=int, default=1000)
    p.add_argument("--baseline-targets", type=int, default=10)
    p.add_argument("--settle", type=float, default=30.0, help="seconds each daemon runs before it is measured")
    p.add_argument("--serve-echo", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.serve_echo:
        from latency_router.aio import run_async

        run_async(_echo_ports(args.serve_echo))
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        log(NAME, f"{args.baseline_targets} targets for {args.settle:g} s")
        base = measure(args.baseline_targets, args.settle, Path(tmp))
        log(NAME, f"{args.targets} targets for {args.settle:g} s")
        big = measure(args.targets, args.settle, Path(tmp))
    out = {
        "benchmark": NAME,
        "daemon": big,
        "baseline": base,
        "rss_ratio_to_baseline": ratio(big["rss_mb"], base["rss_mb"], 2),
        "rss_per_extra_target_kb": round((big["rss_mb"] - base["rss_mb"]) * 1024 / (args.targets - args.baseline_targets), 1),
        "settle_s": args.settle,
        "loadavg": loadavg(),
        "python": sys.version.split()[0],
    }
    out["checks"] = {"probe_rate_reached": (big["probes_per_s"] or 0) >= 0.9 * args.targets}
    emit(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`latency-router lab -c FILE [--duration D]`: run the config's emulated regions until a signal or the duration."""

from __future__ import annotations

import asyncio
import json
import signal
import sys

from latency_router.durations import format_duration
from latency_router.lab.lab import Lab, LabError


def _describe(lab: Lab) -> list[str]:
    lines = [f"lab: {lab.mode} mode ({lab.why})", f"lab: {lab.note()}"]
    cal = lab.calibration
    if lab.mode == "nfqueue":
        bare, held = cal["bare_us"], cal["held_minus_hold_us"]
        lines.append(f"lab: calibration ({cal['statistic']}, us): bare RTT udp {bare['udp']['p10']}, "
                     f"tcp {bare['tcp']['p10']}; held RTT less the hold: udp {held['udp_echo']['p10']}, "
                     f"tcp {held['tcp']['p10']}; subtracted {cal['overhead_us']}")
    for p in lab.paths:
        lines.append(
            f"  {p.region}/{p.path}  {p.address}  udp {p.udp_port}  tcp {p.tcp_port}  http {p.http_port}  "
            f"delay {format_duration(p.delay_s)}  jitter {format_duration(p.jitter_s)}  loss {p.loss:g}"
        )
    for e in lab.events:
        when = f"from {format_duration(e.start_s)}"
        if e.kind == "outage":
            lines.append(f"  event: {e.region}/{e.path} outage {when} to {format_duration(e.end_s or 0.0)}")
        else:
            lines.append(f"  event: {e.region}/{e.path} step +{format_duration(e.delay_s or 0.0)} {when}")
    return lines


async def _run(lab: Lab, duration_s: float | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await lab.start()
    except (LabError, ValueError, OSError) as exc:
        print(f"lab: cannot start: {exc}", file=sys.stderr)
        return 1
    stats: dict = {}
    try:
        for line in _describe(lab):
            print(line)
        print("lab: running" + (f" for {format_duration(duration_s)}" if duration_s else "; Ctrl-C to stop"), flush=True)
        try:
            await asyncio.wait_for(stop.wait(), timeout=duration_s)
        except asyncio.TimeoutError:
            pass
        try:
            stats = lab.stats()
        except LabError as exc:  # e.g. its processes were signalled with us and are gone
            stats = {"mode": lab.mode, "error": str(exc)}
    finally:
        await lab.stop()
    print(json.dumps(stats, sort_keys=True), flush=True)
    return 0


def lab_main(cfg, duration_s: float | None) -> int:
    """Run the lab of a loaded config; print the mode, every path and a JSON stats line at exit; returns the exit code."""
    try:
        lab = Lab.from_config(cfg)
    except ValueError as exc:
        print(f"lab: {exc}", file=sys.stderr)
        return 2
    return asyncio.run(_run(lab, duration_s))

"""`latency-router run`: the daemon's wiring; for now the lab (when configured), the probe engine and a live view.

The latency table, policies and the HTTP API join this wiring in later steps (DESIGN.md); until then the
daemon reports, every few seconds, each path's round statistics beside the lab's injected truth.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import signal
import sys
from collections import deque
from dataclasses import dataclass, field

from latency_router.aio import run_async
from latency_router.durations import format_duration
from latency_router.probes import EngineCounters, make_prober
from latency_router.probes.scheduler import Round, Scheduler
from latency_router.probes.stats import percentile

log = logging.getLogger("latency_router.daemon")

REPORT_EVERY_S = 5.0


@dataclass
class _PathView:
    """What the live view keeps of one (region, path): its last rounds' RTTs and losses."""

    region: str
    path: str
    url: str
    rtts_ms: deque = field(default_factory=lambda: deque(maxlen=200))
    sent: int = 0
    lost: int = 0
    last_loss_ratio: float | None = None

    def take(self, rnd: Round) -> None:
        self.sent += rnd.sent
        self.lost += rnd.sent - rnd.received
        self.last_loss_ratio = rnd.loss_ratio
        self.rtts_ms.extend(s.rtt_ms for s in rnd.samples if s.ok)


def _report_lines(views: dict[str, _PathView], lab) -> list[str]:
    lines = [f"{'region/path':<28} {'p50 ms':>9} {'min ms':>9} {'truth ms':>9} {'loss':>6}  target"]
    for v in views.values():
        rtts = sorted(v.rtts_ms)
        p50 = f"{percentile(rtts, 50):9.3f}" if rtts else f"{'-':>9}"
        mn = f"{rtts[0]:9.3f}" if rtts else f"{'-':>9}"
        truth = f"{'-':>9}"
        if lab is not None:
            with contextlib.suppress(KeyError):
                t = lab.truth(v.region, v.path)
                truth = f"{'down':>9}" if math.isinf(t) else f"{t * 1e3:9.3f}"
        loss = f"{v.last_loss_ratio:6.0%}" if v.last_loss_ratio is not None else f"{'-':>6}"
        lines.append(f"{v.region + '/' + v.path:<28} {p50} {mn} {truth} {loss}  {v.url}")
    return lines


async def run(cfg, duration_s: float | None) -> int:
    """Run until SIGINT/SIGTERM or the duration; every task is owned by one TaskGroup."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    lab = None
    if cfg.lab is not None:
        from latency_router.lab import Lab, LabError

        lab = Lab.from_config(cfg)
        try:
            await lab.start()
        except (LabError, OSError) as exc:
            print(f"lab: cannot start: {exc}", file=sys.stderr)
            return 1
        print(f"lab: {lab.mode} mode ({lab.why}); {len(lab.paths)} emulated paths", flush=True)
    try:
        counters = EngineCounters()
        views: dict[str, _PathView] = {}
        targets = []
        for region in cfg.regions:
            for path in region.paths:
                key = f"{region.name}/{path.name}"
                views[key] = _PathView(region.name, path.name, path.probe)
                targets.append((key, make_prober(path.probe, counters)))
        probing = cfg.probing
        scheduler = Scheduler(
            targets,
            interval_s=probing.interval_s,
            timeout_s=probing.timeout_s,
            samples=probing.samples,
            max_in_flight=probing.max_in_flight,
            on_round=lambda rnd: views[rnd.target].take(rnd),
        )
        print(f"probing {len(targets)} paths: {probing.samples} samples per {format_duration(probing.interval_s)}, "
              f"timeout {format_duration(probing.timeout_s)}", flush=True)

        async def report() -> None:
            while True:
                await asyncio.sleep(REPORT_EVERY_S)
                lag_p99 = scheduler.stats()["loop_lag_ms"]["p99"]
                lag = "-" if lag_p99 is None else f"{lag_p99:.2f}"
                print("\n".join(_report_lines(views, lab)), flush=True)
                print(f"engine: loop lag p99 {lag} ms, late replies {counters.late_replies}, "
                      f"socket drops {counters.socket_drops}", flush=True)

        async def until_stop() -> None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=duration_s)
            scheduler.stop()
            reporter.cancel()

        async with asyncio.TaskGroup() as tg:
            tg.create_task(scheduler.run(), name="scheduler")
            reporter = tg.create_task(report(), name="report")
            tg.create_task(until_stop(), name="stop")
        print("\n".join(_report_lines(views, lab)), flush=True)
    finally:
        if lab is not None:
            await lab.stop()
    return 0


def run_main(cfg, duration_s: float | None) -> int:
    """Run the daemon on a loaded config until a signal or the duration; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return run_async(run(cfg, duration_s))

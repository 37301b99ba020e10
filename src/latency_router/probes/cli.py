"""`latency-router probe URL`: a one-off, fping-like measurement of one target, as text or one JSON object."""

from __future__ import annotations

import asyncio
import json
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from typing import TextIO

from latency_router.aio import run_async
from latency_router.durations import parse_duration
from latency_router.probes.base import LossReason, Prober, Sample, wall_now
from latency_router.probes.scheduler import guarded_probe
from latency_router.probes.stats import ProbeSummary, format_ms, summarize

PROG = "latency-router probe"
MAX_COUNT = 1_000_000
MAX_DURATION_S = 86_400.0  # a day: longer intervals and timeouts are typos, and event loops cap their timers
INTERRUPTED = "interrupted (Ctrl-C) before its reply or its timeout"


class UsageError(ValueError):
    """A command-line argument that cannot be used; its message names the argument."""


def _duration(name: str, text: str, *, allow_zero: bool) -> float:
    try:
        seconds = parse_duration(text)
    except ValueError as exc:
        raise UsageError(f"{name}: {exc}") from None
    if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
        raise UsageError(f"{name}: must be a finite duration of at most 1 day, got {text!r}")
    if seconds < 0 or (seconds == 0 and not allow_zero):
        raise UsageError(f"{name}: must be more than 0, got {text!r}")
    return seconds


def parse_args(args) -> tuple[float, float, int]:
    """Check --count, --interval and --timeout; returns (interval_s, timeout_s, count) or raises UsageError."""
    interval_s = _duration("--interval", args.interval, allow_zero=True)
    timeout_s = _duration("--timeout", args.timeout, allow_zero=False)
    if not 1 <= args.count <= MAX_COUNT:
        raise UsageError(f"--count: must be within 1..{MAX_COUNT:,}, got {args.count}")
    return interval_s, timeout_s, args.count


async def run_probes(
    prober: Prober,
    count: int,
    interval_s: float,
    timeout_s: float,
    results: list[Sample | None],
    on_sample: Callable[[int, Sample], None] | None = None,
) -> None:
    """Send `count` probes `interval_s` apart, each without waiting for the one before; fill results by sequence.

    Cancelled (Ctrl-C), every probe already started and not back counts as sent and lost (TIMEOUT, INTERRUPTED).
    """
    tasks: list[asyncio.Task] = []
    started_at: list[float] = []  # wall clock at each probe's start, by seq

    async def one(seq: int) -> None:
        sample = await guarded_probe(prober, timeout_s)
        if sample.seq is None:
            sample = replace(sample, seq=seq)
        results[seq] = sample
        if on_sample is not None:
            on_sample(seq, sample)

    start = time.monotonic()
    try:
        for seq in range(count):
            delay = start + seq * interval_s - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            started_at.append(wall_now())
            tasks.append(asyncio.create_task(one(seq)))
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        kind = getattr(prober, "kind", "")
        for seq, sent_at in enumerate(started_at):
            if results[seq] is None:
                results[seq] = Sample.lost(prober.url, kind, sent_at, LossReason.TIMEOUT, INTERRUPTED, seq=seq)


class TextReport:
    """fping-style lines: one per probe as it comes back, then a summary."""

    def __init__(self, target: str, timeout_s: float, out: TextIO, payload_bytes: int | None = None) -> None:
        self.target = target
        self.payload_bytes = payload_bytes
        self.timeout_s = timeout_s
        self.out = out
        self.done = 0
        self.rtt_sum = 0.0
        self.received = 0

    def probe_line(self, seq: int, sample: Sample) -> str:
        """One probe: `URL : [seq], 64 bytes, 0.123 ms (0.123 avg, 0% loss)` or `URL : [seq], timeout (1000 ms) (...)`."""
        self.done += 1
        if sample.rtt_ms is not None:
            self.received += 1
            self.rtt_sum += sample.rtt_ms
            what = f"{format_ms(sample.rtt_ms)} ms"
            if self.payload_bytes is not None:
                what = f"{self.payload_bytes} bytes, {what}"
            if sample.phases_ms:
                what += " {" + ", ".join(f"{k} {format_ms(v)}" for k, v in sample.phases_ms.items()) + "}"
        elif sample.loss is LossReason.TIMEOUT:
            what = f"timeout ({self.timeout_s * 1e3:g} ms)"
        else:
            what = str(sample.loss) + (f" ({sample.detail})" if sample.detail else "")
        avg = format_ms(self.rtt_sum / self.received) if self.received else "NaN"
        loss_pct = (self.done - self.received) * 100 / self.done
        return f"{self.target} : [{seq}], {what} ({avg} avg, {loss_pct:.0f}% loss)"

    def on_sample(self, seq: int, sample: Sample) -> None:
        print(self.probe_line(seq, sample), file=self.out, flush=True)


def summary_lines(summary: ProbeSummary) -> list[str]:
    """The closing lines: counts, RTT spread and jitter, loss reasons, then one line per phase."""
    line = f"{summary.target} : xmt/rcv/%loss = {summary.sent}/{summary.received}/{summary.loss * 100:.0f}%"
    if summary.rtt is not None:
        r = summary.rtt
        spread = "/".join(format_ms(v) for v in (r.min, r.avg, r.p50, r.p95, r.max))
        line += f", min/avg/p50/p95/max = {spread} ms"
        if summary.jitter_ms is not None:
            line += f", jitter {format_ms(summary.jitter_ms)} ms"
    if summary.loss_reasons:
        line += ", lost: " + ", ".join(f"{reason} {n}" for reason, n in summary.loss_reasons.items())
    lines = [line]
    for name, r in summary.phases.items():
        spread = "/".join(format_ms(v) for v in (r.min, r.avg, r.p50, r.p95, r.max))
        lines.append(f"{summary.target} : {name} min/avg/p50/p95/max = {spread} ms")
    return lines


async def _measure(prober: Prober, count: int, interval_s: float, timeout_s: float,
                   on_sample: Callable[[int, Sample], None] | None) -> list[Sample]:
    """Run the probes; Ctrl-C stops early and keeps what came back, as fping does."""
    results: list[Sample | None] = [None] * count
    loop = asyncio.get_running_loop()
    work = asyncio.create_task(run_probes(prober, count, interval_s, timeout_s, results, on_sample))
    try:
        loop.add_signal_handler(signal.SIGINT, work.cancel)
    except (NotImplementedError, RuntimeError):  # no signal handlers off the main thread or on Windows
        pass
    try:
        await work
    except asyncio.CancelledError:
        if asyncio.current_task().cancelling():  # type: ignore[union-attr]
            raise
    finally:
        try:
            loop.remove_signal_handler(signal.SIGINT)
        except (NotImplementedError, RuntimeError):
            pass
        await prober.aclose()
    return [s for s in results if s is not None]


def probe_main(args, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run `latency-router probe`: exit 0 when any reply came back, 1 when none did, 2 on a usage error."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        interval_s, timeout_s, count = parse_args(args)
        from latency_router.probes import make_prober

        try:
            prober = make_prober(args.url)
        except ValueError as exc:
            raise UsageError(f"URL {args.url!r}: {exc}") from None
    except UsageError as exc:
        print(f"{PROG}: " + " ".join(str(exc).split()), file=err)
        return 2
    report = None if args.json else TextReport(args.url, timeout_s, out, payload_bytes(prober))
    samples = run_async(_measure(prober, count, interval_s, timeout_s, report.on_sample if report else None))
    summary = summarize(samples, args.url, getattr(prober, "kind", ""))
    if args.json:
        print(json.dumps(summary.as_json()), file=out, flush=True)
    else:
        if samples:
            print(file=out)
        for line in summary_lines(summary):
            print(line, file=out, flush=True)
    return 0 if summary.received else 1


def payload_bytes(prober: Prober) -> int | None:
    """The probe's payload size where the kind has one (udp's `?size=`), for the `64 bytes` of the text lines."""
    size = getattr(getattr(prober, "spec", None), "size", None)
    return size if isinstance(size, int) else None


__all__ = ["INTERRUPTED", "MAX_COUNT", "TextReport", "UsageError", "parse_args", "payload_bytes", "probe_main",
           "run_probes", "summary_lines"]

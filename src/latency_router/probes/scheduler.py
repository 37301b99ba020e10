"""The probe scheduler: rounds of samples per target at random offsets, bounded in flight, lag-monitored."""

from __future__ import annotations

import asyncio
import logging
import math
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from latency_router.probes.base import LossReason, Prober, Sample, wall_now
from latency_router.probes.stats import percentile

log = logging.getLogger(__name__)

__all__ = ["Round", "Scheduler", "guarded_probe", "timeout_margin_s"]

SampleConsumer = Callable[[Sample], None]


@dataclass(frozen=True, slots=True)
class Round:
    """One round of one target: the samples it sent, in send order, delivered once all of them are back."""

    target: str
    seq: int
    started_at: float  # wall-clock seconds when the round's interval began
    samples: tuple[Sample, ...]

    @property
    def sent(self) -> int:
        return len(self.samples)

    @property
    def received(self) -> int:
        return sum(1 for s in self.samples if s.ok)

    @property
    def loss_ratio(self) -> float:
        return (self.sent - self.received) / self.sent if self.sent else 0.0


RoundConsumer = Callable[[Round], None]


OVERRAN = "prober overran its"


def timeout_margin_s(timeout_s: float) -> float:
    """How long past its own timeout a prober may run before the scheduler takes its slot back."""
    return max(0.05, 0.1 * timeout_s)


async def guarded_probe(prober: Prober, timeout_s: float, target: str | None = None) -> Sample:
    """Probe once; a prober that raises or overruns its timeout becomes a lost Sample instead."""
    key = target or prober.url
    sent_at = wall_now()
    deadline = asyncio.timeout(timeout_s + timeout_margin_s(timeout_s))
    try:
        async with deadline:
            sample = await prober.probe(timeout_s)
    except TimeoutError as exc:
        if deadline.expired():
            return Sample.lost(key, prober.kind, sent_at, LossReason.TIMEOUT, f"{OVERRAN} {timeout_s * 1e3:g} ms timeout")
        return Sample.lost(key, prober.kind, sent_at, LossReason.ERROR, f"TimeoutError: {exc}")
    except Exception as exc:  # noqa: BLE001 - any prober bug is this target's lost sample, nobody else's
        return Sample.lost(key, prober.kind, sent_at, LossReason.ERROR, f"{type(exc).__name__}: {exc}")
    return sample if sample.target == key else replace(sample, target=key)


class _LagMonitor:
    """Event-loop lag: how late a fixed sleep wakes up, over a sliding window."""

    def __init__(self, period_s: float, window: int) -> None:
        self.period_s = period_s
        self.lags_ms: deque[float] = deque(maxlen=window)
        self.last_ms: float | None = None
        self.max_ms = 0.0

    async def run(self) -> None:
        period_ns = int(self.period_s * 1e9)
        while True:
            before = time.perf_counter_ns()
            await asyncio.sleep(self.period_s)
            lag_ms = max(0, time.perf_counter_ns() - before - period_ns) / 1e6
            self.lags_ms.append(lag_ms)
            self.last_ms = lag_ms
            self.max_ms = max(self.max_ms, lag_ms)

    def stats(self) -> dict[str, Any]:
        ordered = sorted(self.lags_ms)
        if not ordered:
            return {"last": None, "p50": None, "p99": None, "max": None, "window_max": None, "count": 0}
        return {
            "last": self.last_ms,
            "p50": percentile(ordered, 50),
            "p99": percentile(ordered, 99),
            "window_max": ordered[-1],
            "max": self.max_ms,
            "count": len(ordered),
        }


class _Slots:
    """A FIFO bound on probes in flight; unlike asyncio.Semaphore in 3.11, a release is O(1) with many waiters."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._waiters: deque[asyncio.Future] = deque()

    def locked(self) -> bool:
        return self.free == 0

    @property
    def waiting(self) -> int:
        """Probes queued for a slot (a cancelled one may linger until the next release)."""
        return len(self._waiters)

    async def acquire(self) -> None:
        if self.free > 0:
            self.free -= 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.release()  # handed a slot just as we were cancelled: pass it on
            raise

    def release(self) -> None:
        # Hand the slot straight to the oldest live waiter, so a newcomer cannot overtake it.
        waiters = self._waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.free += 1


class _Target:
    """One target's prober, key and round bookkeeping."""

    __slots__ = ("key", "prober", "round_seq", "samples", "received")

    def __init__(self, key: str, prober: Prober) -> None:
        self.key = key
        self.prober = prober
        self.round_seq = 0
        self.samples = 0
        self.received = 0


class _OpenRound:
    """A round whose samples are still coming back."""

    __slots__ = ("target", "seq", "started_at", "samples", "pending")

    def __init__(self, target: _Target, seq: int, started_at: float, size: int) -> None:
        self.target = target
        self.seq = seq
        self.started_at = started_at
        self.samples: list[Sample | None] = [None] * size
        self.pending = size


class Scheduler:
    """Probes every target in rounds of `samples` probes per `interval_s`, each at a random offset in the interval."""

    def __init__(
        self,
        targets: Sequence[Prober | tuple[str, Prober]],
        consumer: SampleConsumer | None = None,
        *,
        interval_s: float,
        timeout_s: float,
        samples: int = 5,
        max_in_flight: int = 1000,
        on_round: RoundConsumer | None = None,
        lag_period_s: float = 0.05,
        lag_window: int = 1200,
        late_after_s: float = 0.01,
        rng: random.Random | None = None,
        close_probers: bool = True,
    ) -> None:
        # A target given as (key, prober) is known by its key: samples and rounds carry it as their `target`.
        if not (0 < interval_s < math.inf and 0 < timeout_s < math.inf):
            raise ValueError("interval_s and timeout_s must be more than 0 and finite")
        if samples < 1 or max_in_flight < 1:
            raise ValueError("samples and max_in_flight must be at least 1")
        self._targets: list[_Target] = []
        seen: set[str] = set()
        for item in targets:
            key, prober = item if isinstance(item, tuple) else (item.url, item)
            if key in seen:
                raise ValueError(f"duplicate probe target {key!r}")
            seen.add(key)
            self._targets.append(_Target(key, prober))
        self.consumer = consumer
        self.on_round = on_round
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self.samples = samples
        self.max_in_flight = max_in_flight
        self.late_after_s = late_after_s
        self.close_probers = close_probers
        self._rng = rng or random.Random()
        self._slots = _Slots(max_in_flight)
        self._lag = _LagMonitor(lag_period_s, lag_window)
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task] = set()
        self.in_flight = 0
        self.peak_in_flight = 0
        self._counts: Counter[str] = Counter()
        self._loss_reasons: Counter[str] = Counter()
        self._running = False

    @property
    def keys(self) -> list[str]:
        """The targets' keys, in the order given."""
        return [t.key for t in self._targets]

    def stop(self) -> None:
        """Ask run() to return; probes in flight are cancelled and open rounds are not reported."""
        self._stop.set()

    async def run(self) -> None:
        """Probe until stop() or cancellation; meant to run inside the daemon's TaskGroup."""
        if self._running:
            raise RuntimeError("Scheduler.run() is already running")
        self._running = True
        loop = asyncio.get_running_loop()
        started = time.monotonic()
        owned = [loop.create_task(self._lag.run(), name="probe-lag-monitor")]
        owned += [
            loop.create_task(self._target_loop(t, started), name=f"probe:{t.key}") for t in self._targets
        ]
        try:
            await self._stop.wait()
        finally:
            for task in (*owned, *self._tasks):
                task.cancel()
            await asyncio.gather(*owned, *self._tasks, return_exceptions=True)
            if self.close_probers:
                await self._close_probers()
            self._running = False

    async def _close_probers(self) -> None:
        async def close(target: _Target) -> None:
            try:
                async with asyncio.timeout(1.0):
                    await target.prober.aclose()
            except Exception as exc:  # noqa: BLE001 - a failing close must not hide the others'
                log.warning("closing prober %s failed: %s", target.key, exc)

        await asyncio.gather(*(close(t) for t in self._targets))

    def _offsets(self) -> list[float]:
        # Uniform, sorted, drawn afresh for each target and round: no two targets burst together.
        return sorted(self._rng.random() * self.interval_s for _ in range(self.samples))

    async def _target_loop(self, target: _Target, started: float) -> None:
        """One task per target: walk its round schedule, probing inline when no overlap is possible."""
        loop = asyncio.get_running_loop()
        interval, hard_timeout = self.interval_s, self.timeout_s + timeout_margin_s(self.timeout_s)
        # A probe this late is dropped: after a stall every target would otherwise fire its backlog at once.
        drop_after = max(self.late_after_s, interval / self.samples)
        round_start = started
        offsets = self._offsets()
        while True:
            now = time.monotonic()
            if now >= round_start + interval:
                # The loop fell a whole interval behind: skip the missed rounds rather than burst to catch up.
                missed = int((now - round_start) // interval)
                self._counts["skipped_rounds"] += missed
                round_start += missed * interval
            target.round_seq += 1
            open_round = _OpenRound(target, target.round_seq, wall_now() - (now - round_start), self.samples)
            next_offsets = self._offsets()
            round_end = round_start + interval
            for i, offset in enumerate(offsets):
                delay = round_start + offset - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                    delay = round_start + offset - time.monotonic()
                if -delay > self.late_after_s:
                    if -delay > drop_after:
                        # The loop stalled: drop what is long overdue instead of bursting it out together.
                        self._counts["skipped_probes"] += 1
                        self._skip_in_round(open_round)
                        continue
                    self._counts["late_probes"] += 1
                next_due = round_start + (offsets[i + 1] if i + 1 < len(offsets) else interval + next_offsets[0])
                if next_due - time.monotonic() >= hard_timeout and not self._slots.locked():
                    # Even a hanging prober is back before the next probe is due: no task needed.
                    await self._probe_into(open_round, i)
                else:
                    task = loop.create_task(self._probe_into(open_round, i))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
                    # Let it start now: a next probe already due (and run inline) must not go out before this one.
                    await asyncio.sleep(0)
            offsets = next_offsets
            round_start = round_end

    async def _probe_into(self, open_round: _OpenRound, index: int) -> None:
        target = open_round.target
        if self._slots.locked():
            self._counts["slot_waits"] += 1
        await self._slots.acquire()
        self._counts["probes_sent"] += 1
        self.in_flight += 1
        if self.in_flight > self.peak_in_flight:
            self.peak_in_flight = self.in_flight
        try:
            sample = await guarded_probe(target.prober, self.timeout_s, target.key)
        finally:
            self.in_flight -= 1
            self._slots.release()
        self._record(target, sample)
        open_round.samples[index] = sample
        open_round.pending -= 1
        if open_round.pending == 0:
            self._finish_round(open_round)

    def _skip_in_round(self, open_round: _OpenRound) -> None:
        """Leave one probe out of a round: the round reports the probes it sent, or nothing when it sent none."""
        open_round.pending -= 1
        if open_round.pending == 0:
            self._finish_round(open_round)

    def _finish_round(self, open_round: _OpenRound) -> None:
        samples = tuple(s for s in open_round.samples if s is not None)
        if not samples:
            self._counts["skipped_rounds"] += 1
            return
        self._counts["rounds_completed"] += 1
        if self.on_round is None:
            return
        target = open_round.target
        done = Round(target.key, open_round.seq, open_round.started_at, samples)
        try:
            self.on_round(done)
        except Exception:  # noqa: BLE001 - a consumer bug must not stop the probing
            self._counts["round_consumer_errors"] += 1
            log.exception("round consumer failed for %s", target.key)

    def _record(self, target: _Target, sample: Sample) -> None:
        target.samples += 1
        if sample.ok:
            self._counts["samples_ok"] += 1
            target.received += 1
        else:
            self._counts["samples_lost"] += 1
            self._loss_reasons[str(sample.loss)] += 1
            if sample.loss is LossReason.ERROR:
                self._counts["prober_errors"] += 1
            if sample.loss is LossReason.TIMEOUT and sample.detail.startswith(OVERRAN):
                self._counts["prober_overruns"] += 1
        if self.consumer is not None:
            try:
                self.consumer(sample)
            except Exception:  # noqa: BLE001 - a consumer bug must not stop the probing
                self._counts["consumer_errors"] += 1
                log.exception("sample consumer failed for %s", target.key)

    def target_stats(self) -> dict[str, dict[str, int]]:
        """Per target key: samples taken (replies and losses), replies received and rounds begun."""
        return {t.key: {"samples": t.samples, "received": t.received, "rounds": t.round_seq} for t in self._targets}

    def stats(self) -> dict[str, Any]:
        """Everything observable about the engine: config, gauges, counters, loss reasons and event-loop lag."""
        counts = self._counts
        return {
            "targets": len(self._targets),
            "interval_s": self.interval_s,
            "timeout_s": self.timeout_s,
            "samples_per_round": self.samples,
            "max_in_flight": self.max_in_flight,
            "probes_in_flight": self.in_flight,
            "peak_in_flight": self.peak_in_flight,
            "probes_waiting_for_slot": self._slots.waiting,
            "tasks_in_flight": len(self._tasks),
            "probes_sent": counts["probes_sent"],
            "samples_ok": counts["samples_ok"],
            "samples_lost": counts["samples_lost"],
            "loss_reasons": dict(self._loss_reasons),
            "prober_errors": counts["prober_errors"],
            "prober_overruns": counts["prober_overruns"],
            "slot_waits": counts["slot_waits"],
            "late_probes": counts["late_probes"],
            "skipped_rounds": counts["skipped_rounds"],
            "skipped_probes": counts["skipped_probes"],
            "rounds_completed": counts["rounds_completed"],
            "consumer_errors": counts["consumer_errors"] + counts["round_consumer_errors"],
            "loop_lag_ms": self._lag.stats(),
        }

"""The probe scheduler with fake probers: spread offsets, bounded concurrency, isolation of bad targets, rounds, lag."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from latency_router.probes.base import LossReason, Sample
from latency_router.probes.scheduler import Round, Scheduler, _Slots, guarded_probe


class Concurrency:
    """Counts probes running at once across fake probers."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0


class FakeProber:
    """A prober that answers after a controlled sleep, raises, hangs forever, or loses every other probe."""

    kind = "fake"

    def __init__(self, url: str, *, delay_s: float = 0.001, behaviour: str = "ok",
                 tracker: Concurrency | None = None) -> None:
        self.url = url
        self.delay_s = delay_s
        self.behaviour = behaviour
        self.tracker = tracker
        self.starts: list[float] = []  # time.monotonic() at each probe() call
        self.timeouts: list[float] = []
        self.closed = False

    async def probe(self, timeout_s: float) -> Sample:
        seq = len(self.starts)
        self.starts.append(time.monotonic())
        self.timeouts.append(timeout_s)
        sent_at = time.time()
        if self.tracker:
            self.tracker.now += 1
            self.tracker.peak = max(self.tracker.peak, self.tracker.now)
        try:
            if self.behaviour == "raise":
                raise RuntimeError("boom")
            if self.behaviour == "hang":
                await asyncio.Event().wait()  # ignores its timeout: only the scheduler can end it
            if self.behaviour == "alternate" and seq % 2:
                return Sample.lost(self.url, self.kind, sent_at, LossReason.REFUSED, seq=seq)
            t0 = time.perf_counter_ns()
            await asyncio.sleep(self.delay_s)
            return Sample(self.url, self.kind, sent_at, rtt_ms=(time.perf_counter_ns() - t0) / 1e6, seq=seq)
        finally:
            if self.tracker:
                self.tracker.now -= 1

    async def aclose(self) -> None:
        self.closed = True


async def run_for(scheduler: Scheduler, seconds: float) -> None:
    """Run the scheduler for about `seconds`, then stop it and wait (bounded) for it to return."""
    task = asyncio.create_task(scheduler.run())
    await asyncio.sleep(seconds)
    scheduler.stop()
    async with asyncio.timeout(5):
        await task


def test_offsets_are_sorted_within_the_interval_and_fresh_each_round():
    s = Scheduler([FakeProber("a")], interval_s=2.0, timeout_s=0.5, samples=5, rng=random.Random(1))
    draws = [s._offsets() for _ in range(20)]
    for offsets in draws:
        assert offsets == sorted(offsets)
        assert all(0.0 <= o < 2.0 for o in offsets)
    assert len({tuple(d) for d in draws}) == 20


async def test_probes_are_spread_over_the_interval_not_burst_at_the_start():
    probers = [FakeProber(f"t{i}") for i in range(20)]
    s = Scheduler(probers, interval_s=0.4, timeout_s=0.1, samples=5, rng=random.Random(7))
    t0 = time.monotonic()
    await run_for(s, 0.5)
    first_round = [t - t0 for p in probers for t in p.starts if t - t0 < 0.4]
    assert len(first_round) >= 50  # 20 targets x 5; on a busy machine some slip past 0.4 s
    early = sum(1 for t in first_round if t < 0.02)
    assert early < len(first_round) / 4, "probes bunched at the start of the interval"
    assert max(first_round) - min(first_round) > 0.2
    # Independent per target: no two targets share a schedule.
    schedules = {tuple(round(t - t0, 3) for t in p.starts[:5]) for p in probers}
    assert len(schedules) == len(probers)


async def test_max_in_flight_is_respected_and_waits_are_counted():
    tracker = Concurrency()
    probers = [FakeProber(f"t{i}", delay_s=0.03, tracker=tracker) for i in range(40)]
    s = Scheduler(probers, interval_s=0.2, timeout_s=0.5, samples=5, max_in_flight=4)
    await run_for(s, 0.5)
    stats = s.stats()
    assert tracker.peak == 4
    assert stats["peak_in_flight"] == 4
    assert stats["slot_waits"] > 0
    assert stats["probes_in_flight"] == 0 and tracker.now == 0  # stop() cancelled the rest cleanly


async def test_hanging_target_times_out_while_another_keeps_its_rate():
    hang = FakeProber("udp://hang", behaviour="hang")
    good = FakeProber("udp://good")
    got: list[Sample] = []
    s = Scheduler([hang, good], got.append, interval_s=0.2, timeout_s=0.1, samples=2)
    await run_for(s, 1.0)
    hung = [x for x in got if x.target == "udp://hang"]
    fresh = [x for x in got if x.target == "udp://good"]
    assert hung and all(x.loss is LossReason.TIMEOUT and "overran" in x.detail for x in hung)
    assert len(hung) >= 3
    assert len(fresh) >= 5 and all(x.ok for x in fresh)  # 2 per 0.2 s: about 10 in 1 s
    # Not starved: in the order samples came back, the good target's keep coming between the hung target's first
    # and last overrun (an ordering, not an elapsed-time bound).
    order = [x.target for x in got]
    first_hung, last_hung = order.index("udp://hang"), len(order) - 1 - order[::-1].index("udp://hang")
    assert order[first_hung:last_hung].count("udp://good") >= 2, order
    assert all(t == 0.1 for t in hang.timeouts)  # the timeout is handed to the prober too
    assert s.stats()["prober_overruns"] == len(hung)
    assert hang.closed and good.closed


async def test_exception_is_a_lost_sample_with_its_error_text_for_that_target_only():
    bad = FakeProber("tcp://bad", behaviour="raise")
    good = FakeProber("tcp://good")
    got: list[Sample] = []
    s = Scheduler([bad, good], got.append, interval_s=0.1, timeout_s=0.05, samples=2)
    await run_for(s, 0.35)
    bad_samples = [x for x in got if x.target == "tcp://bad"]
    assert bad_samples and all(x.loss is LossReason.ERROR and x.detail == "RuntimeError: boom" for x in bad_samples)
    assert all(x.ok for x in got if x.target == "tcp://good")
    assert s.stats()["prober_errors"] == len(bad_samples)
    assert s.stats()["loss_reasons"] == {"error": len(bad_samples)}
    per_target = s.target_stats()
    assert per_target["tcp://bad"]["samples"] == len(bad_samples) and per_target["tcp://bad"]["received"] == 0
    assert per_target["tcp://good"]["received"] == per_target["tcp://good"]["samples"] > 0


async def test_round_summaries_carry_the_key_counts_and_samples_in_send_order():
    prober = FakeProber("udp://203.0.113.10:7007", behaviour="alternate")
    rounds: list[Round] = []
    samples: list[Sample] = []
    s = Scheduler([("eu-west-1/direct", prober)], samples.append, on_round=rounds.append,
                  interval_s=0.1, timeout_s=0.05, samples=4)
    await run_for(s, 0.45)
    assert len(rounds) >= 2
    assert [r.seq for r in rounds] == list(range(1, len(rounds) + 1))
    for r in rounds:
        assert r.target == "eu-west-1/direct"
        assert r.sent == 4 and r.received == 2 and r.loss_ratio == 0.5
        seqs = [x.seq for x in r.samples]
        assert seqs == sorted(seqs) and len(set(seqs)) == 4
        assert all(x.target == "eu-west-1/direct" for x in r.samples)
    assert all(x.target == "eu-west-1/direct" for x in samples)
    stats = s.stats()
    assert stats["rounds_completed"] >= len(rounds)
    assert stats["samples_ok"] + stats["samples_lost"] == len(samples)
    assert abs(stats["samples_ok"] - stats["samples_lost"]) <= 1
    assert stats["loss_reasons"] == {"refused": stats["samples_lost"]}
    assert set(stats) >= {"probes_in_flight", "peak_in_flight", "slot_waits", "late_probes", "skipped_rounds",
                          "skipped_probes", "prober_errors", "prober_overruns", "consumer_errors", "loop_lag_ms"}


async def test_lag_monitor_reports_a_blocked_loop():
    s = Scheduler([], interval_s=1.0, timeout_s=0.5, lag_period_s=0.02)
    task = asyncio.create_task(s.run())
    await asyncio.sleep(0.1)
    time.sleep(0.2)  # block the event loop on purpose
    await asyncio.sleep(0.1)
    lag = s.stats()["loop_lag_ms"]
    s.stop()
    async with asyncio.timeout(5):
        await task
    assert lag["count"] >= 3
    assert lag["max"] >= 150
    assert lag["p50"] < lag["max"]


async def test_a_blocked_loop_skips_missed_rounds_instead_of_bursting():
    probers = [FakeProber(f"t{i}") for i in range(5)]
    s = Scheduler(probers, interval_s=0.1, timeout_s=0.02, samples=2)
    task = asyncio.create_task(s.run())
    await asyncio.sleep(0.03)
    time.sleep(0.6)  # six intervals with the loop blocked: each target owes 12 probes
    unblocked = time.monotonic()
    await asyncio.sleep(0.1)
    s.stop()
    async with asyncio.timeout(5):
        await task
    stats = s.stats()
    assert stats["skipped_rounds"] >= 5 * 3
    assert stats["skipped_probes"] >= 5
    # Without skipping, each target would fire its 12 owed probes at once; with it, only the last 50 ms's
    # (at most 2) and whatever falls due in the window itself.
    burst = [sum(1 for t in p.starts if unblocked <= t < unblocked + 0.03) for p in probers]
    assert max(burst) <= 4, burst


async def test_consumer_errors_are_counted_and_probing_goes_on():
    prober = FakeProber("udp://x")

    def broken(sample: Sample) -> None:
        raise KeyError("consumer bug")

    s = Scheduler([prober], broken, on_round=lambda r: 1 / 0, interval_s=0.05, timeout_s=0.02, samples=1)
    await run_for(s, 0.3)
    stats = s.stats()
    assert stats["consumer_errors"] >= 4
    assert stats["samples_ok"] >= 3


async def test_cancellation_inside_a_taskgroup_stops_it_and_closes_probers():
    hang = FakeProber("udp://hang", behaviour="hang")
    s = Scheduler([hang], interval_s=0.05, timeout_s=1.0, samples=3)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.2):
            async with asyncio.TaskGroup() as tg:
                tg.create_task(s.run())
    assert hang.closed
    assert s.stats()["probes_in_flight"] == 0
    assert s.stats()["tasks_in_flight"] == 0


async def test_a_thousand_targets_all_get_their_rounds():
    probers = [FakeProber(f"udp://10.0.{i // 250}.{i % 250}:7007", delay_s=0.0005) for i in range(1000)]
    rounds: list[Round] = []
    s = Scheduler(probers, on_round=rounds.append, interval_s=1.0, timeout_s=0.5, samples=5)
    task = asyncio.create_task(s.run())
    # Wait for every target's first round, bounded: the machine may be shared, so no wall-clock bound is asserted.
    seen: set[str] = set()
    for _ in range(150):
        await asyncio.sleep(0.1)
        seen = {r.target for r in rounds}
        if len(seen) == 1000:
            break
    s.stop()
    async with asyncio.timeout(10):
        await task
    assert len(seen) == 1000
    assert all(1 <= r.sent <= 5 for r in rounds)  # 5, unless a busy machine made the loop drop late probes
    assert s.stats()["prober_errors"] == 0


async def test_guarded_probe_turns_a_timeout_error_from_the_prober_into_an_error_not_an_overrun():
    class Raises(FakeProber):
        async def probe(self, timeout_s: float) -> Sample:
            raise TimeoutError("socket said so")

    sample = await guarded_probe(Raises("tcp://x"), 1.0)
    assert sample.loss is LossReason.ERROR and sample.detail == "TimeoutError: socket said so"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"interval_s": 0, "timeout_s": 1}, "more than 0"),
        ({"interval_s": 1, "timeout_s": 1, "samples": 0}, "at least 1"),
        ({"interval_s": 1, "timeout_s": 1, "max_in_flight": 0}, "at least 1"),
        ({"interval_s": 1, "timeout_s": float("inf")}, "finite"),
        ({"interval_s": float("nan"), "timeout_s": 1}, "finite"),
    ],
    ids=["zero-interval", "zero-samples", "zero-in-flight", "infinite-timeout", "nan-interval"],
)
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Scheduler([FakeProber("a")], **kwargs)


def test_max_in_flight_defaults_to_the_configs_default():
    assert Scheduler([FakeProber("a")], interval_s=1, timeout_s=1).max_in_flight == 1000


def test_duplicate_keys_are_refused():
    with pytest.raises(ValueError, match="duplicate probe target 'a'"):
        Scheduler([FakeProber("a"), ("a", FakeProber("b"))], interval_s=1, timeout_s=1)


async def test_slots_are_fifo_and_a_cancelled_waiter_passes_its_slot_on():
    slots = _Slots(1)
    await slots.acquire()
    order: list[str] = []

    async def take(name: str) -> None:
        await slots.acquire()
        order.append(name)

    a, b, c = (asyncio.create_task(take(n)) for n in "abc")
    await asyncio.sleep(0)
    assert slots.locked() and order == []
    slots.release()  # hands the slot to a ...
    a.cancel()  # ... which is cancelled before it runs: b must get it, not nobody
    async with asyncio.timeout(2):
        await asyncio.gather(a, b, return_exceptions=True)
    assert order == ["b"] and not c.done()
    slots.release()
    async with asyncio.timeout(2):
        await c
    assert order == ["b", "c"]
    slots.release()
    assert slots.free == 1

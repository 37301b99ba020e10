"""The DNS exporter loop on a fake clock: latest desired state wins, backoff with jitter, rate limit, no churn, refusals."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dns_fakes import FakeProvider
from latency_router.exporters.dns.errors import ProviderError
from latency_router.exporters.dns.model import Answer, RecordSet
from latency_router.exporters.dns.plan import PlanSettings
from latency_router.exporters.dns.runner import ExporterRunner, RunnerSettings

N = "api.example.com."
M = "www.example.com."
A1, A2 = "192.0.2.1", "192.0.2.2"


class FakeTime:
    """A clock that only sleep() moves; every sleep is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        self.now += delay
        await asyncio.sleep(0)


class TopRandom(random.Random):
    """Full jitter at its upper bound: every backoff is its cap."""

    def uniform(self, a: float, b: float) -> float:
        return b


def version(v: int, name: str = N, scope: str | None = None) -> RecordSet:
    """Desired state number v: the TTL carries v, so that each version differs from the others."""
    return RecordSet(name, "A", 60 + v, (Answer(A1, 128, "eu"), Answer(A2, 127, "us")), scope)


def weighted(w1: int, ttl: int = 60) -> RecordSet:
    return RecordSet(N, "A", ttl, (Answer(A1, w1, "eu"), Answer(A2, 255 - w1, "us")))


def make(provider: FakeProvider | None = None, *, rng: random.Random | None = None, **kw):
    """A runner on a fake clock, its provider and the clock."""
    provider = provider or FakeProvider()
    t = FakeTime()
    kw.setdefault("min_interval_s", 1.0)
    kw.setdefault("recheck_s", 0.0)  # this clock's sleep() returns at once: a re-check would spin (see ManualTime)
    runner = ExporterRunner(provider, RunnerSettings(**kw), clock=t.clock, sleep=t.sleep,
                            rng=rng or random.Random(7), wall=t.clock)
    return runner, provider, t


async def settle(cond: Callable[[], bool], steps: int = 5000) -> None:
    """Let the loop run until cond() holds; fail after `steps` turns of the event loop."""
    for _ in range(steps):
        if cond():
            return
        await asyncio.sleep(0)
    raise AssertionError("the runner did not reach the expected state")


async def idle(runner: ExporterRunner) -> None:
    await settle(lambda: runner.idle)


async def turns(n: int = 200) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def started(runner: ExporterRunner) -> asyncio.Task:
    task = asyncio.create_task(runner.run())
    await asyncio.sleep(0)
    return task


async def finish(runner: ExporterRunner, task: asyncio.Task) -> None:
    runner.stop()
    await asyncio.wait_for(task, timeout=5)
    assert task.result() is None


def written_ttls(provider: FakeProvider) -> list[int]:
    return [c.new.ttl for changes in provider.applied for c in changes if c.new is not None and c.key[0] == N]


# --- the plain path ----------------------------------------------------------------------------------


async def test_a_desired_state_is_written_verified_and_reported():
    runner, provider, t = make()
    task = await started(runner)
    assert runner.status()["state"] == "pending"
    runner.desire([version(1)])
    await idle(runner)
    assert provider.records == {(N, "A", None): version(1)}
    assert provider.calls == ["list_keys", "current", "apply", "verify"] and provider.listed == [(N,)]
    assert provider.verified == [(version(1),)]
    status = runner.status()
    assert status["state"] == "ok" and status["writes_total"] == 1 and status["failures_total"] == 0
    assert status["last_success_at"] == t.now and status["last_error"] is None and status["provider"] == "fake"
    assert status["last_plan"] == {"create": 1, "update": 0, "delete": 0, "skipped": 0, "refused": 0}
    await finish(runner, task)


async def test_the_same_desired_state_again_neither_reads_nor_writes():
    # the daemon hands over its desired state after every evaluation: an unchanged one costs the provider nothing
    runner, provider, _ = make()
    task = await started(runner)
    runner.desire([version(1)])
    await idle(runner)
    runner.desire([version(1)])
    await idle(runner)
    assert provider.writes == 1 and provider.calls == ["list_keys", "current", "apply", "verify"]
    assert runner.status()["state"] == "ok"
    await finish(runner, task)


async def test_writes_are_rate_limited():
    runner, provider, t = make(min_interval_s=2.5)
    at: list[float] = []
    provider.on_apply = lambda changes: at.append(t.now)
    task = await started(runner)
    for v in range(1, 5):
        runner.desire([version(v)])
        await idle(runner)
    assert written_ttls(provider) == [61, 62, 63, 64]
    assert [b - a for a, b in zip(at, at[1:])] == [2.5, 2.5, 2.5]
    await finish(runner, task)


async def test_a_noisy_but_stable_input_below_the_churn_threshold_is_written_once():
    runner, provider, _ = make()
    noise = random.Random(3)
    task = await started(runner)
    for _ in range(100):
        runner.desire([weighted(128 + noise.randint(-4, 4))])  # any two inputs are < 10 points apart
        await idle(runner)
    assert provider.writes == 1 and runner.status()["last_plan"]["update"] == 0
    runner.desire([weighted(150)])  # a real move is written
    await idle(runner)
    assert provider.writes == 2 and provider.records[(N, "A", None)] == weighted(150)
    await finish(runner, task)


# --- latest desired state wins ---------------------------------------------------------------------


async def test_desire_never_waits_and_only_the_newest_state_is_written_after_a_held_write():
    runner, provider, _ = make()
    provider.hold = asyncio.Event()
    task = await started(runner)
    runner.desire([version(1)])
    await settle(lambda: len(provider.attempted) == 1)
    for v in range(2, 6):  # while the write of 1 hangs, 2..5 come in; desire() returns at once
        runner.desire([version(v)])
    provider.hold.set()
    await idle(runner)
    assert written_ttls(provider) == [61, 65]  # 2, 3 and 4 were never written
    assert provider.records[(N, "A", None)] == version(5)
    await finish(runner, task)


async def test_the_latest_desired_state_wins_across_failures():
    runner, provider, _ = make()
    provider.fail_next(3, calls=["apply"])
    task = await started(runner)
    runner.desire([version(1)])
    await settle(lambda: len(provider.attempted) == 1)
    runner.desire([version(2)])
    await settle(lambda: len(provider.attempted) == 2)
    runner.desire([version(3)])
    await idle(runner)
    assert written_ttls(provider) == [63]  # the failed writes were of 1 and 2; the one that went is the newest
    assert [c.new.ttl for c in provider.attempted[-1]] == [63]
    status = runner.status()
    assert status["state"] == "ok" and status["failures_total"] == 3 and status["consecutive_failures"] == 0
    await finish(runner, task)


@pytest.mark.parametrize("down_for", [1, 4, 12])
async def test_a_provider_down_for_n_attempts_ends_with_the_newest_state(down_for):
    runner, provider, t = make()
    provider.fail_next(down_for, calls=["current", "apply", "verify"])
    task = await started(runner)
    for v in range(1, 4):
        runner.desire([version(v)])
        await turns(3)
    await idle(runner)
    assert provider.records == {(N, "A", None): version(3)}
    assert runner.status()["failures_total"] == down_for and runner.status()["state"] == "ok"
    assert all(0 <= s <= 5.0 for s in t.sleeps)
    await finish(runner, task)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(
    st.tuples(st.just("desire")),
    st.tuples(st.just("fail"), st.integers(1, 4), st.sampled_from(["current", "apply", "verify"])),
    st.tuples(st.just("mismatch"), st.integers(1, 2)),
    st.tuples(st.just("turns"), st.integers(0, 30)),
), min_size=1, max_size=30), st.integers(0, 6))
def test_property_latest_wins_under_any_interleaving_of_desires_and_failures(ops, last_turns):
    async def scenario() -> None:
        runner, provider, _ = make(min_interval_s=0.5)
        task = await started(runner)
        latest = 0
        for op in ops:
            if op[0] == "desire":
                latest += 1
                runner.desire([version(latest)])
            elif op[0] == "fail":
                provider.fail_next(op[1], calls=[op[2]])
            elif op[0] == "mismatch":
                provider.mismatch_next(op[1])
            else:
                await turns(op[1])
        await turns(last_turns)  # the last desire may land while a write is in flight
        latest += 1
        runner.desire([version(latest)])
        await settle(lambda: runner.idle, steps=20000)
        ttls = written_ttls(provider)
        assert ttls == sorted(ttls)  # never an older state after a newer one
        assert provider.records == {(N, "A", None): version(latest)}  # the newest one is what the provider holds
        assert runner.status()["state"] == "ok"
        await finish(runner, task)

    asyncio.run(scenario())


# --- retries ---------------------------------------------------------------------------------------


async def test_the_backoff_doubles_up_to_5_s():
    runner, provider, t = make(rng=TopRandom())
    provider.fail_next(9, calls=["current"])
    task = await started(runner)
    runner.desire([version(1)])
    await idle(runner)
    assert t.sleeps == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0, 5.0, 5.0]
    assert provider.writes == 1
    await finish(runner, task)


async def test_failed_writes_are_rate_limited_too():
    runner, provider, t = make(rng=random.Random(11), min_interval_s=1.0)
    at: list[float] = []
    provider.fail_next(8, calls=["apply"])
    provider.on_apply = lambda changes: None
    real_apply = provider.apply

    async def timed(changes):
        at.append(t.now)
        await real_apply(changes)

    provider.apply = timed  # type: ignore[method-assign]
    task = await started(runner)
    runner.desire([version(1)])
    await idle(runner)
    assert len(at) == 9 and provider.writes == 1
    assert all(b - a >= 1.0 - 1e-9 for a, b in zip(at, at[1:]))  # a retry never writes sooner than the rate limit
    await finish(runner, task)


async def test_backoff_samples_lie_within_their_caps_with_full_jitter():
    rng = random.Random(5)
    runner, provider, t = make(rng=rng, min_interval_s=0.0)
    provider.fail_next(12, calls=["current"])
    task = await started(runner)
    runner.desire([version(1)])
    await idle(runner)
    caps = [min(5.0, 0.2 * 2**i) for i in range(12)]
    assert len(t.sleeps) == 12
    assert all(0.0 <= s <= cap for s, cap in zip(t.sleeps, caps))
    assert all(runner.backoff_cap(n) == cap for n, cap in enumerate(caps, start=1))
    assert len(set(t.sleeps)) == 12 and any(s < cap / 2 for s, cap in zip(t.sleeps, caps))  # jittered, not the cap
    await finish(runner, task)


async def test_a_non_retryable_error_waits_for_a_new_desired_state():
    runner, provider, t = make()
    provider.fail_next(1, calls=["apply"], retryable=False)
    task = await started(runner)
    runner.desire([version(1)])
    await idle(runner)
    await turns(500)
    status = runner.status()
    assert status["state"] == "failed" and status["last_error"] == "fake: injected failure"
    assert len(provider.attempted) == 1 and provider.writes == 0 and t.sleeps == []
    runner.desire([version(2)])
    await idle(runner)
    assert provider.records == {(N, "A", None): version(2)} and runner.status()["state"] == "ok"
    await finish(runner, task)


async def test_a_verify_difference_is_retried_and_verified_again_even_with_nothing_to_write():
    runner, provider, _ = make()
    provider.mismatch_next(2)
    task = await started(runner)
    runner.desire([version(1)])
    await idle(runner)
    assert provider.writes == 1  # the write went through; only the read-back differed, twice
    assert provider.calls == ["list_keys", "current", "apply", "verify", "current", "verify", "current", "verify"]
    status = runner.status()
    assert status["state"] == "ok" and status["failures_total"] == 2
    assert status["last_error"] == "fake: verify: read back differs: injected mismatch"
    await finish(runner, task)


@pytest.mark.parametrize("call", ["current", "apply", "verify"])
async def test_run_survives_arbitrary_exceptions_and_keeps_their_text_out_of_the_status(call):
    runner, provider, _ = make()
    provider.fail_next(2, calls=[call], error=lambda: RuntimeError("token=hunter2"))
    task = await started(runner)
    runner.desire([version(1)])
    await idle(runner)
    assert not task.done()
    status = runner.status()
    assert status["state"] == "ok" and status["failures_total"] == 2
    assert status["last_error"] == f"fake: {call} raised RuntimeError" and "hunter2" not in repr(status)
    assert provider.records == {(N, "A", None): version(1)}
    await finish(runner, task)


async def test_run_survives_a_provider_that_returns_garbage_and_a_representable_that_breaks():
    runner, provider, _ = make()
    real_current = provider.current
    calls = {"n": 0}

    async def garbage(keys):
        calls["n"] += 1
        return None if calls["n"] == 1 else await real_current(keys)

    provider.current = garbage  # type: ignore[method-assign]
    task = await started(runner)
    runner.desire([version(1)])
    await idle(runner)
    assert provider.records == {(N, "A", None): version(1)} and runner.status()["failures_total"] == 1

    def broken(record_set: RecordSet) -> RecordSet:
        raise TypeError("bug")

    provider.representable = broken  # type: ignore[attr-defined]
    runner.desire([version(2)])
    await idle(runner)
    status = runner.status()
    assert status["state"] == "failed" and status["last_error"] == "fake: plan failed with TypeError"
    del provider.representable
    runner.desire([version(3)])
    await idle(runner)
    assert provider.records == {(N, "A", None): version(3)} and not task.done()
    await finish(runner, task)


async def test_a_provider_error_from_representable_follows_its_retryable_flag():
    def refuse(record_set: RecordSet) -> RecordSet:
        raise ProviderError("fake", f"{record_set.name}: cannot hold it", retryable=False)

    runner, provider, _ = make(FakeProvider(representable=refuse))
    task = await started(runner)
    runner.desire([version(1)])
    await idle(runner)
    assert runner.status()["state"] == "failed" and runner.status()["last_error"] == f"fake: {N}: cannot hold it"
    await finish(runner, task)


# --- refusals, deletes, force ------------------------------------------------------------------------


async def test_a_refused_change_waits_and_force_next_writes_it():
    start = RecordSet(N, "A", 60, (Answer(A1, 255, "eu"),))
    moved = RecordSet(N, "A", 60, (Answer(A2, 255, "us"),))  # the whole share moves: refused at the default 0.5
    runner, provider, _ = make(FakeProvider(records={start.key: start}))
    task = await started(runner)
    runner.desire([moved])
    await idle(runner)
    await turns(200)
    status = runner.status()
    assert status["state"] == "refused" and provider.writes == 0 and provider.calls == ["list_keys", "current"]
    assert status["refused"] and "100% of the weight share" in status["refused"][0]
    runner.force_next()
    await idle(runner)
    assert provider.records == {moved.key: moved} and runner.status()["state"] == "ok"
    runner.desire([start])  # force was for one plan only
    await idle(runner)
    assert runner.status()["state"] == "refused"
    await finish(runner, task)


async def test_sets_no_longer_desired_are_read_and_deleted():
    runner, provider, _ = make(min_interval_s=0.0)
    task = await started(runner)
    runner.desire([version(1), version(1, scope="eu"), version(1, name=M)])
    await idle(runner)
    assert len(provider.records) == 3
    runner.desire([version(1)])
    await idle(runner)
    # the scoped set goes; www would be left with no answer: refused until forced
    assert set(provider.records) == {(N, "A", None), (M, "A", None)}
    assert runner.status()["state"] == "refused"
    runner.force_next()
    await idle(runner)
    assert set(provider.records) == {(N, "A", None)} and runner.status()["state"] == "ok"
    runner.desire([version(2)])
    await idle(runner)
    assert provider.calls[-3] == "current"  # www is no longer read: it is gone and not desired
    await finish(runner, task)


async def test_plan_settings_reach_the_plan():
    runner, provider, _ = make(plan=PlanSettings(min_weight_change=50))
    task = await started(runner)
    runner.desire([weighted(100)])
    await idle(runner)
    runner.desire([weighted(140)])  # 40 points: below this runner's threshold
    await idle(runner)
    assert provider.writes == 1
    await finish(runner, task)


# --- stop, settings -------------------------------------------------------------------------------------


async def test_stop_ends_a_long_backoff_at_once():
    provider = FakeProvider()
    provider.fail_next(100, calls=["current"])
    runner = ExporterRunner(provider, RunnerSettings(retry_base_s=60.0, retry_max_s=60.0), rng=TopRandom())
    task = asyncio.create_task(runner.run())
    runner.desire([version(1)])
    await settle(lambda: provider.calls == ["list_keys", "current"])
    await turns(5)
    assert runner.status()["state"] == "retrying" and not task.done()
    runner.stop()
    await asyncio.wait_for(task, timeout=2)


async def test_stop_before_anything_is_desired():
    runner, _, _ = make()
    task = await started(runner)
    await finish(runner, task)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_interval_s": -1}, "min_interval_s: expected a finite number of seconds >= 0, got -1"),
        ({"retry_base_s": 0}, "retry_base_s: must be above 0"),
        ({"retry_max_s": 0.1}, r"retry_max_s: must be at least retry_base_s \(0.2\)"),
        ({"retry_max_s": float("inf")}, "retry_max_s: expected a finite number"),
    ],
)
def test_runner_settings_reject_bad_values_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RunnerSettings(**kwargs)


async def test_force_next_during_a_write_applies_to_the_next_plan():
    first = RecordSet(N, "A", 60, (Answer(A1, 255, "eu"),))
    moved = RecordSet(N, "A", 60, (Answer(A2, 255, "us"),))
    runner, provider, _ = make()
    provider.hold = asyncio.Event()
    task = await started(runner)
    runner.desire([first])
    await settle(lambda: len(provider.attempted) == 1)
    runner.desire([moved])  # a refused move, unless forced ...
    runner.force_next()  # ... and it is: the force outlives the write in flight
    provider.hold.set()
    await idle(runner)
    assert provider.records == {moved.key: moved} and runner.status()["state"] == "ok"
    await finish(runner, task)


async def test_an_unexpected_exceptions_text_stays_out_of_the_log(caplog):
    runner, provider, _ = make()
    provider.fail_next(1, calls=["apply"], error=lambda: RuntimeError("Authorization: Bearer hunter2"))
    task = await started(runner)
    with caplog.at_level("DEBUG", logger="latency_router.exporters.dns.runner"):
        runner.desire([version(1)])
        await idle(runner)
    text = "\n".join(r.getMessage() for r in caplog.records) + caplog.text
    assert "apply raised RuntimeError" in text and "dns_fakes.py" in text  # where it came from ...
    assert "hunter2" not in text  # ... but not what it said
    await finish(runner, task)


# --- a desired state that cannot be built ----------------------------------------------------------


async def test_a_desired_state_that_cannot_be_built_is_reported_once_and_the_last_good_one_is_kept():
    runner, provider, _ = make()
    task = await started(runner)
    runner.desire([version(1)])
    await idle(runner)
    for _ in range(3):  # the daemon reports it after every evaluation: counted once
        runner.reject_desired("service api: answer 'eu.example.net' is not an IP address")
        await turns(50)
    status = runner.status()
    assert status["state"] == "failed" and status["failures_total"] == 1
    assert status["last_error"] == ("fake: cannot build the desired record sets: service api: answer 'eu.example.net' "
                                    "is not an IP address")
    assert provider.writes == 1 and provider.records == {(N, "A", None): version(1)} and status["record_sets"] == 1
    runner.reject_desired("api.example.com.: name: given twice (one record per name)")  # another problem: counted
    assert runner.status()["failures_total"] == 2 and "given twice" in runner.status()["last_error"]
    runner.desire([version(1)])  # good again, and the same as before: the failure is over, nothing to write
    await idle(runner)
    assert runner.status()["state"] == "ok" and provider.writes == 1
    assert provider.calls == ["list_keys", "current", "apply", "verify"]
    runner.reject_desired("service api: answer 'eu.example.net' is not an IP address")  # the first problem, back
    assert runner.status()["state"] == "failed" and runner.status()["failures_total"] == 3
    runner.desire([version(2)])
    await idle(runner)
    assert runner.status()["state"] == "ok" and provider.records == {(N, "A", None): version(2)}
    await finish(runner, task)


async def test_a_rejection_before_any_good_state_touches_nothing():
    runner, provider, _ = make()
    task = await started(runner)
    runner.reject_desired("bad")
    await turns(200)
    assert runner.status()["state"] == "failed" and provider.calls == [] and runner.idle
    await finish(runner, task)


# --- sets written before this runner: list_keys ------------------------------------------------------


def aaaa(name: str = N, scope: str | None = None) -> RecordSet:
    return RecordSet(name, "AAAA", 60, (Answer("2001:db8::1", 255, "eu6"),), scope)


async def test_sets_an_earlier_run_wrote_and_no_longer_wanted_are_found_and_deleted():
    # a restart after a group was removed and IPv6 dropped: the group's set goes; the AAAA set would leave AAAA
    # queries with no answer, so it is refused until forced; another name is not this runner's
    old = {version(1).key: version(1), version(1, scope="eu").key: version(1, scope="eu"), aaaa().key: aaaa(),
           (M, "A", None): version(1, name=M)}
    runner, provider, _ = make(FakeProvider(records=old), min_interval_s=0.0)
    task = await started(runner)
    runner.desire([version(1)])
    await idle(runner)
    assert provider.listed == [(N,)]
    assert set(provider.records) == {(N, "A", None), (N, "AAAA", None), (M, "A", None)}
    status = runner.status()
    assert status["state"] == "refused" and status["last_plan"]["delete"] == 1
    assert status["refused"] == [f"{N} AAAA: refused: deleting it would leave {N} with no AAAA answer"]
    runner.force_next()
    await idle(runner)
    assert set(provider.records) == {(N, "A", None), (M, "A", None)} and runner.status()["state"] == "ok"
    runner.desire([version(2)])  # names already listed: list_keys is not asked again
    await idle(runner)
    assert provider.listed == [(N,)] and provider.records[(N, "A", None)] == version(2)
    runner.desire([version(2), version(1, name=M)])  # a new name: listed once
    await idle(runner)
    assert provider.listed == [(N,), (M,)]
    await finish(runner, task)


@pytest.mark.parametrize("held, listing, plan_settings", [
    pytest.param(aaaa(), True, PlanSettings(manage_deletes=False), id="manage-deletes-off"),
    pytest.param(version(1, scope="eu"), False, PlanSettings(), id="no-list-keys"),
])
async def test_list_keys_is_skipped_without_manage_deletes_or_without_the_method(held, listing, plan_settings):
    provider = FakeProvider(records={held.key: held}, listing=listing)
    runner, _, _ = make(provider, plan=plan_settings)
    task = await started(runner)
    runner.desire([version(1)])
    await idle(runner)
    assert provider.listed == [] and "list_keys" not in provider.calls
    assert provider.records[held.key] == held and runner.status()["state"] == "ok"  # not known as this runner's
    await finish(runner, task)


async def test_a_failed_list_keys_is_retried_before_anything_is_written():
    old = {version(1, scope="eu").key: version(1, scope="eu")}
    runner, provider, _ = make(FakeProvider(records=old))
    provider.fail_next(2, calls=["list_keys"])
    task = await started(runner)
    runner.desire([version(1)])
    await idle(runner)
    assert provider.calls[:3] == ["list_keys", "list_keys", "list_keys"] and provider.attempted[0][0].action == "create"
    assert set(provider.records) == {(N, "A", None)}  # created, then the eu set (its default now there) deleted
    status = runner.status()
    assert status["state"] == "ok" and status["failures_total"] == 2 and status["last_error"] == "fake: injected failure"
    await finish(runner, task)


async def test_a_delete_the_provider_did_not_make_is_caught_by_the_read_back():
    old = {version(1).key: version(1), version(1, scope="eu").key: version(1, scope="eu")}
    runner, provider, _ = make(FakeProvider(records=old, strict=False), retry_max_s=0.2)
    provider.keep_deletes = True
    task = await started(runner)
    runner.desire([version(1)])
    await settle(lambda: runner.status()["failures_total"] >= 2)
    status = runner.status()
    assert status["state"] == "retrying"
    assert status["last_error"] == f"fake: verify: read back differs: {N} A [eu]: still there after its delete"
    provider.keep_deletes = False
    await idle(runner)
    assert set(provider.records) == {(N, "A", None)} and runner.status()["state"] == "ok"
    await finish(runner, task)


# --- the re-check -------------------------------------------------------------------------------------


class ManualTime:
    """A clock that only advance() moves; a sleep() ends once the clock has passed its end."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self._waiting: list[tuple[float, asyncio.Future]] = []

    def clock(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        self.sleeps.append(delay)
        done = asyncio.get_running_loop().create_future()
        entry = (self.now + delay, done)
        self._waiting.append(entry)
        try:
            await done
        finally:
            self._waiting.remove(entry)

    async def advance(self, seconds: float) -> None:
        self.now += seconds
        for end, done in list(self._waiting):
            if end <= self.now + 1e-9 and not done.done():
                done.set_result(None)
        await turns(300)


def manual(provider: FakeProvider, **kw) -> tuple[ExporterRunner, ManualTime]:
    t = ManualTime()
    kw.setdefault("min_interval_s", 0.0)
    return ExporterRunner(provider, RunnerSettings(**kw), clock=t.clock, sleep=t.sleep, rng=random.Random(7),
                          wall=t.clock), t


async def test_an_idle_runner_rechecks_and_repairs_a_record_changed_or_lost_behind_its_back():
    provider = FakeProvider()
    runner, t = manual(provider, recheck_s=60.0)
    task = await started(runner)
    runner.desire([weighted(128)])
    await t.advance(0)
    assert provider.calls == ["list_keys", "current", "apply", "verify"] and t.sleeps == [60.0]
    provider.records[(N, "A", None)] = weighted(20)  # changed by hand
    await t.advance(59.0)
    assert provider.writes == 1 and len(provider.calls) == 4  # not yet
    await t.advance(1.0)
    assert provider.calls[4:] == ["current", "apply", "verify"] and provider.records[(N, "A", None)] == weighted(128)
    await t.advance(60.0)  # nothing changed: read and read back, no write
    assert provider.calls[7:] == ["current", "verify"] and provider.writes == 2
    del provider.records[(N, "A", None)]  # lost
    await t.advance(60.0)
    assert provider.calls[9:] == ["current", "apply", "verify"] and provider.records[(N, "A", None)] == weighted(128)
    assert runner.status()["state"] == "ok" and runner.status()["writes_total"] == 3
    await finish(runner, task)


async def test_a_recheck_reads_back_even_when_the_api_looks_right():
    provider = FakeProvider()
    runner, t = manual(provider, recheck_s=30.0, retry_base_s=1.0, retry_max_s=1.0)
    task = await started(runner)
    runner.desire([weighted(128)])
    await t.advance(0)
    provider.mismatch_next(1)  # the server serves something else than its API says (PowerDNS with a broken LUA)
    await t.advance(30.0)
    assert provider.calls[4:] == ["current", "verify"] and runner.status()["state"] == "retrying"
    await t.advance(1.0)  # the retry reads back again
    assert provider.calls[6:] == ["current", "verify"] and runner.status()["state"] == "ok"
    await finish(runner, task)


async def test_a_new_desired_state_restarts_the_recheck_wait_and_0_turns_it_off():
    provider = FakeProvider()
    runner, t = manual(provider, recheck_s=60.0)
    task = await started(runner)
    runner.desire([version(1)])
    await t.advance(0)
    await t.advance(50.0)
    runner.desire([version(2)])  # read at 1050: the next re-check is due at 1110
    await turns(300)
    calls = len(provider.calls)
    await t.advance(59.0)
    assert len(provider.calls) == calls
    await t.advance(1.0)
    assert provider.calls[calls:] == ["current", "verify"]
    await finish(runner, task)

    off = FakeProvider()
    runner, t = manual(off, recheck_s=0.0)
    task = await started(runner)
    runner.desire([version(1)])
    await t.advance(0)
    for _ in range(5):
        await t.advance(3600.0)
    assert off.calls == ["list_keys", "current", "apply", "verify"] and t.sleeps == []
    await finish(runner, task)


async def test_a_refused_plan_is_planned_again_at_the_recheck():
    start = RecordSet(N, "A", 60, (Answer(A1, 255, "eu"),))
    moved = RecordSet(N, "A", 60, (Answer(A2, 255, "us"),))
    provider = FakeProvider(records={start.key: start})
    runner, t = manual(provider, recheck_s=60.0, plan=PlanSettings(max_weight_shift=0.6))
    task = await started(runner)
    runner.desire([moved])
    await t.advance(0)
    assert runner.status()["state"] == "refused"
    provider.records[start.key] = RecordSet(N, "A", 60, (Answer(A1, 128, "eu"), Answer(A2, 127, "us")))  # by hand
    await t.advance(60.0)  # now a shift of 50%: within the limit, written at the re-check
    assert provider.records == {moved.key: moved} and runner.status()["state"] == "ok"
    await finish(runner, task)


def test_recheck_s_is_checked():
    with pytest.raises(ValueError, match="recheck_s: expected a finite number of seconds >= 0, got -1"):
        RunnerSettings(recheck_s=-1)
    assert RunnerSettings().recheck_s == 60.0


# --- one round for `dns plan|apply` ---------------------------------------------------------------------


async def test_once_plans_with_listed_keys_and_writes_only_when_told():
    old = {version(1, scope="eu").key: version(1, scope="eu"), version(1).key: version(1)}
    provider = FakeProvider(records=old)
    runner = ExporterRunner(provider, RunnerSettings())
    runner.desire([version(2)])
    dry = await runner.once(write=False)
    assert [(c.action, c.key) for c in dry.plan.changes] == [("update", (N, "A", None)), ("delete", (N, "A", "eu"))]
    assert not dry.written and provider.writes == 0 and provider.calls == ["list_keys", "current"]
    done = await runner.once(write=True)
    assert done.written and done.differences == () and set(provider.records) == {(N, "A", None)}
    assert provider.calls[2:] == ["current", "apply", "verify", "current"]  # the read-back: verify, deletes gone
    again = await runner.once(write=True)
    assert again.plan.empty and not again.written and provider.writes == 1


async def test_once_reports_what_did_not_read_back_and_raises_provider_errors():
    old = {version(1).key: version(1), version(1, scope="eu").key: version(1, scope="eu")}
    provider = FakeProvider(records=old, strict=False)
    provider.keep_deletes = True
    runner = ExporterRunner(provider, RunnerSettings())
    runner.desire([version(1)])
    outcome = await runner.once(write=True)
    assert outcome.written and outcome.differences == (f"{N} A [eu]: still there after its delete",)
    provider.fail_next(1, calls=["current"])
    with pytest.raises(ProviderError, match="fake: injected failure"):
        await runner.once(write=False)


# --- the daemon's side -------------------------------------------------------------------------------------

DAEMON_DNS = """
[[regions]]
name = "eu"
lat = 0.0
lon = 0.0
[[regions.paths]]
name = "direct"
probe = "udp://127.0.1.1:7007"
answer = "192.0.2.1"

[[services]]
name = "api"
policy = "latency"

[dns]
recheck_interval = "30s"

[[dns.providers]]
name = "pdns"
kind = "powerdns"
zone = "example.com"
api_url = "http://127.0.0.1:9"
api_key = "env:LR_TEST_PDNS_KEY"

[[dns.records]]
name = "api.example.com"
service = "api"
provider = "pdns"
"""


def decision(answer: str):
    """The default group's decision for api: one candidate, all the weight."""
    from latency_router.decider.decision import Candidate, Decision

    candidate = Candidate("eu", "direct", answer, 10.0, "up", True, 255)
    return Decision("api", "default", "latency", "eu", "direct", (answer,), 10.0, 60, "measured", "test", None, None,
                    (candidate,), 0.0, 0.0)


def test_the_daemon_reports_a_desired_state_it_cannot_build_on_the_exporter(monkeypatch):
    from latency_router.config import parse_config
    from latency_router.daemon import Daemon

    monkeypatch.setenv("LR_TEST_PDNS_KEY", "k")
    daemon = Daemon(parse_config(DAEMON_DNS), None)
    runner = daemon.dns_runners["pdns"]
    assert runner.settings.recheck_s == 30.0
    daemon._ready_at = 0.0
    daemon._push_dns({("api", "default"): decision("192.0.2.1")})
    assert runner.status()["state"] == "pending" and runner.status()["record_sets"] == 1
    for _ in range(3):
        daemon._push_dns({("api", "default"): decision("eu.example.net")})  # a host name cannot go into an A record
    status = runner.status()
    assert status["state"] == "failed" and status["failures_total"] == 1 and status["record_sets"] == 1
    assert "answer 'eu.example.net' is not an IP address" in status["last_error"]
    daemon._push_dns({("api", "default"): decision("192.0.2.1")})
    assert runner.status()["state"] == "pending"

"""The latency table: statistics, health transitions, staleness and immutable snapshots, on a fake clock."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latency_router.decider import HealthState, LatencyTable, RowKey, TableConfig, TableSnapshot
from latency_router.probes.base import LossReason, Sample
from latency_router.probes.scheduler import Round
from latency_router.probes.stats import percentile

E1 = math.exp(-1)
E01 = math.exp(-0.1)
KEY = RowKey("eu", "eu-west-1", "direct")


def ok(rtt_ms: float) -> Sample:
    return Sample(target="udp://127.0.0.1:7", kind="udp", sent_at=0.0, rtt_ms=rtt_ms)


def lost() -> Sample:
    return Sample.lost("udp://127.0.0.1:7", "udp", 0.0, LossReason.TIMEOUT)


def feed(table: LatencyTable, rtts: list[float | None], start: float = 0.0, step: float = 1.0) -> float:
    """Add one sample per step (None is a lost probe); returns the clock after the last one."""
    now = start
    for i, rtt in enumerate(rtts):
        now = start + i * step
        table.add_sample(KEY, lost() if rtt is None else ok(rtt), now)
    return now


def row(table: LatencyTable, now: float):
    r = table.snapshot(now).get(*KEY)
    assert r is not None
    return r


@pytest.mark.parametrize(
    ("times", "rtts", "tau", "expected"),
    [
        pytest.param([0.0], [40.0], 10.0, 40.0, id="first-sample-is-the-ewma"),
        pytest.param([0, 1, 2, 3], [20.0] * 4, 10.0, 20.0, id="constant-stays-constant"),
        pytest.param([0.0, 1.0], [10.0, 20.0], 10.0, (10 * E01 + 20) / (E01 + 1), id="two-samples-1s"),
        pytest.param([0.0, 10.0], [10.0, 20.0], 10.0, (10 * E1 + 20) / (E1 + 1), id="one-tau-apart"),
        pytest.param([0.0, 1000.0], [10.0, 20.0], 10.0, 20.0, id="old-data-decays-away"),
        pytest.param([0.0, 0.0], [10.0, 20.0], 10.0, 15.0, id="same-instant-weigh-alike"),
        pytest.param([0.0, 1.0], [10.0, 20.0], 1.0, (10 * E1 + 20) / (E1 + 1), id="shorter-tau-faster"),
    ],
)
def test_ewma_decay(times, rtts, tau, expected):
    table = LatencyTable(TableConfig(ewma_tau_s=tau))
    for t, rtt in zip(times, rtts):
        table.add_sample(KEY, ok(rtt), t)
    assert row(table, times[-1]).ewma_ms == pytest.approx(expected, rel=1e-12)


def test_ewma_step_converges_like_classic_alpha():
    # With regular spacing the decayed mean approaches the classic EWMA, alpha = 1 - exp(-dt/tau).
    table = LatencyTable(TableConfig(ewma_tau_s=10.0, stale_after_intervals=1e9))
    now = feed(table, [10.0] * 500)
    feed(table, [50.0] * 10, start=now + 1)
    alpha = 1 - math.exp(-0.1)
    classic = 50.0 - 40.0 * (1 - alpha) ** 10
    assert row(table, now + 10).ewma_ms == pytest.approx(classic, rel=1e-6)


@pytest.mark.parametrize(
    ("rtts", "window", "p50", "p95", "p99", "minimum"),
    [
        pytest.param([5.0], 256, 5.0, 5.0, 5.0, 5.0, id="one-value"),
        pytest.param([1.0, 2.0, 3.0, 4.0, 5.0], 256, 3.0, 4.8, 4.96, 1.0, id="interpolated"),
        pytest.param([float(i) for i in range(1, 101)], 256, 50.5, 95.05, 99.01, 1.0, id="one-to-hundred"),
        pytest.param([1.0, 100.0, 7.0, 8.0, 9.0], 3, 8.0, 8.9, 8.98, 7.0, id="window-drops-old-min"),
        pytest.param([3.0, 1.0, 2.0], 256, 2.0, 2.9, 2.98, 1.0, id="unordered-input"),
        pytest.param([1.7e308, -1.7e308], 256, 1.7e308, 1.7e308, 1.7e308, -1.7e308, id="overflow-clamped-to-neighbour"),
    ],
)
def test_percentiles_and_min(rtts, window, p50, p95, p99, minimum):
    table = LatencyTable(TableConfig(window_samples=window, stale_after_intervals=1e9))
    now = feed(table, rtts)
    r = row(table, now)
    assert (r.p50_ms, r.p95_ms, r.p99_ms, r.min_ms) == pytest.approx((p50, p95, p99, minimum))


def rfc3550(rtts: list[float]) -> float:
    j = 0.0
    for a, b in zip(rtts, rtts[1:]):
        j = j + (abs(b - a) - j) / 16
    return j


@pytest.mark.parametrize(
    ("rtts", "expected"),
    [
        pytest.param([10.0], None, id="one-rtt-no-jitter"),
        pytest.param([10.0, 10.0, 10.0], 0.0, id="steady-zero"),
        pytest.param([10.0, 26.0], 1.0, id="one-step-of-16"),
        pytest.param([10.0, 26.0, 10.0], 1.0 + (16 - 1) / 16, id="two-steps"),
        pytest.param([10.0, None, 26.0], 1.0, id="lost-probes-skipped"),
        pytest.param([10.0, 12.0, 9.0, 15.0, 15.0, 11.0], rfc3550([10, 12, 9, 15, 15, 11]), id="formula"),
    ],
)
def test_jitter_rfc3550(rtts, expected):
    table = LatencyTable()
    now = feed(table, rtts)
    got = row(table, now).jitter_ms
    assert got == (None if expected is None else pytest.approx(expected))


@pytest.mark.parametrize(
    ("rtts", "window", "loss", "samples", "lost_total"),
    [
        pytest.param([10.0, 10.0], 256, 0.0, 2, 0, id="none-lost"),
        pytest.param([10.0, None, 10.0, None], 256, 0.5, 4, 2, id="half"),
        pytest.param([None, None, None], 256, 1.0, 3, 3, id="all-lost"),
        pytest.param([None, None, 10.0, 10.0], 2, 0.0, 4, 2, id="window-forgets-old-loss"),
        pytest.param([10.0, 10.0, None, 10.0], 2, 0.5, 4, 1, id="window-of-two"),
        pytest.param([None, None, None], 2, 1.0, 3, 3, id="window-of-two-all-lost"),
    ],
)
def test_loss_ratio(rtts, window, loss, samples, lost_total):
    table = LatencyTable(TableConfig(window_samples=window))
    now = feed(table, rtts)
    r = row(table, now)
    assert (r.loss, r.samples, r.lost) == (pytest.approx(loss), samples, lost_total)


def test_all_lost_row_has_no_rtt_figures():
    table = LatencyTable()
    now = feed(table, [None, None])
    r = row(table, now)
    assert (r.ewma_ms, r.p50_ms, r.min_ms, r.jitter_ms) == (None, None, None, None)


U, D, N = HealthState.UP, HealthState.DOWN, HealthState.UNKNOWN


@pytest.mark.parametrize(
    ("fail_after", "recover_after", "losses", "states"),
    [
        pytest.param(3, 3, [], [], id="no-rounds-unknown"),
        pytest.param(3, 3, [0.0], [U], id="first-good-round-up"),
        pytest.param(3, 3, [1.0, 1.0, 1.0], [N, N, D], id="unknown-down-after-fail_after"),
        pytest.param(3, 3, [0.0, 1.0, 1.0, 1.0], [U, U, U, D], id="down-after-3"),
        pytest.param(3, 3, [0.0, 1.0, 1.0, 0.0, 1.0, 1.0], [U] * 6, id="broken-run-stays-up"),
        pytest.param(1, 1, [0.0, 1.0, 0.0], [U, D, U], id="fail1-recover1"),
        pytest.param(2, 3, [0.0, 1, 1, 0, 0, 0], [U, U, D, D, D, U], id="recover-after-3"),
        pytest.param(2, 3, [0.0, 1, 1, 0, 0, 1, 0, 0, 0], [U, U, D, D, D, D, D, D, U], id="recovery-run-reset"),
        pytest.param(1, 1, [0.0, 0.5], [U, D], id="threshold-inclusive"),
        pytest.param(1, 1, [0.0, 0.49], [U, U], id="below-threshold-good"),
    ],
)
def test_health_transitions(fail_after, recover_after, losses, states):
    table = LatencyTable(TableConfig(fail_after=fail_after, recover_after=recover_after, stale_after_intervals=1e9))
    table.ensure(KEY)
    assert row(table, 0.0).health is N
    got = []
    for i, loss in enumerate(losses):
        table.add_round(KEY, loss, float(i))
        got.append(row(table, float(i)).health)
    assert got == states


@pytest.mark.parametrize(
    ("unknown_healthy", "expected"),
    [pytest.param(True, True, id="unknown-counts-up"), pytest.param(False, False, id="unknown-counts-down")],
)
def test_unknown_is_configurable(unknown_healthy, expected):
    table = LatencyTable(TableConfig(unknown_healthy=unknown_healthy))
    table.ensure(KEY)
    table.add_sample(KEY, ok(10.0), 0.0)  # samples without a round: still unknown
    r = row(table, 0.0)
    assert (r.health, r.healthy) == (N, expected)


@pytest.mark.parametrize(
    ("k", "interval", "age", "health"),
    [
        pytest.param(3, 1.0, 2.9, U, id="fresh"),
        pytest.param(3, 1.0, 3.0, U, id="exactly-K-intervals"),
        pytest.param(3, 1.0, 3.01, HealthState.STALE, id="past-K-intervals"),
        pytest.param(2, 5.0, 9.0, U, id="k2-5s-fresh"),
        pytest.param(2, 5.0, 11.0, HealthState.STALE, id="k2-5s-stale"),
    ],
)
def test_staleness(k, interval, age, health):
    table = LatencyTable(TableConfig(stale_after_intervals=k, interval_s=interval))
    table.add_sample(KEY, ok(10.0), 100.0)
    table.add_round(KEY, 0.0, 100.0)
    r = row(table, 100.0 + age)
    assert r.health is health
    assert r.healthy is (health is U)


def test_stale_clears_when_data_returns_and_unknown_never_goes_stale():
    table = LatencyTable(TableConfig(stale_after_intervals=3, unknown_healthy=False))
    table.ensure(KEY)
    assert row(table, 1e6).health is N
    table.add_round(KEY, 0.0, 0.0)
    assert row(table, 10.0).health is HealthState.STALE
    table.add_round(KEY, 0.0, 10.0)
    assert row(table, 10.0).health is U


def test_add_round_result_folds_samples_and_round():
    table = LatencyTable(TableConfig(fail_after=1))
    rnd = Round(target="udp://127.0.0.1:7", seq=0, started_at=0.0, samples=(ok(10.0), lost(), lost(), ok(30.0)))
    table.add_round_result(KEY, rnd, 1.0)
    r = row(table, 1.0)
    assert (r.samples, r.lost, r.loss, r.min_ms, r.health, r.healthy) == (4, 2, 0.5, 10.0, D, False)


def test_snapshot_shape_and_immutability():
    table = LatencyTable()
    feed(table, [10.0, 12.0])
    snap = table.snapshot(1.0)
    r = snap.rows[("eu", "eu-west-1", "direct")]
    assert r.key == KEY and r.basis == "measured" and r.updated_at == 1.0
    assert set(snap.to_json()["rows"][0]) >= {
        "group", "region", "path", "ewma_ms", "p50_ms", "p95_ms", "min_ms", "jitter_ms", "loss",
        "samples", "healthy", "health", "basis", "updated_at",
    }
    with pytest.raises(TypeError):
        snap.rows[KEY] = r  # type: ignore[index]
    with pytest.raises(AttributeError):
        r.ewma_ms = 0.0  # type: ignore[misc]
    assert table.snapshot(2.0).rows is snap.rows  # unchanged table: the mapping is shared, not rebuilt


rtt_lists = st.lists(
    st.one_of(st.none(), st.floats(min_value=0.01, max_value=10_000, allow_nan=False)), min_size=1, max_size=60
)


@settings(max_examples=150, deadline=None)
@given(rtts=rtt_lists, window=st.integers(1, 20), where=st.integers(0, 60))
def test_property_lost_sample_changes_no_rtt_figure(rtts, window, where):
    table = LatencyTable(TableConfig(window_samples=window, stale_after_intervals=1e9))
    now = feed(table, rtts[: where])
    before = table.snapshot(now).get(*KEY)
    table.add_sample(KEY, lost(), now)
    after = row(table, now)
    if before is not None:
        for name in ("ewma_ms", "min_ms", "p50_ms", "p95_ms", "p99_ms", "jitter_ms"):
            assert getattr(after, name) == getattr(before, name), name
    else:
        assert (after.ewma_ms, after.min_ms, after.p50_ms) == (None, None, None)


@settings(max_examples=150, deadline=None)
@given(rtts=rtt_lists, window=st.integers(1, 20))
def test_property_order_of_figures(rtts, window):
    table = LatencyTable(TableConfig(window_samples=window))
    now = feed(table, rtts)
    r = row(table, now)
    if r.min_ms is not None:
        assert r.min_ms <= r.p50_ms <= r.p95_ms <= r.p99_ms
        seen = [x for x in rtts if x is not None]
        assert min(seen) * (1 - 1e-9) <= r.ewma_ms <= max(seen) * (1 + 1e-9)


@settings(max_examples=100, deadline=None)
@given(first=rtt_lists, later=rtt_lists, rounds=st.lists(st.floats(0, 1), max_size=10))
def test_property_snapshot_unchanged_by_later_updates(first, later, rounds):
    table = LatencyTable(TableConfig(fail_after=1, recover_after=1))
    now = feed(table, first)
    snap = table.snapshot(now)
    frozen = snap.to_json()
    feed(table, later, start=now + 1)
    for loss in rounds:
        table.add_round(KEY, loss, now + 2)
    table.add_sample(RowKey("us", "us-east-1", "accelerator"), ok(5.0), now + 2)
    table.snapshot(now + 2)
    assert snap.to_json() == frozen
    assert snap.taken_at == now


# Repeated values, of either sign of zero, check that the sorted window holds exactly what sorted() gives.
window_rtt = st.one_of(
    st.none(),
    st.floats(min_value=0.01, max_value=10_000, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1.0, 2.5, 2.5000000000000004]),
)


def same_float(a: float | None, b: float | None) -> bool:
    return a == b and (a is None or math.copysign(1.0, a) == math.copysign(1.0, b))


@settings(max_examples=300, deadline=None)
@given(steps=st.lists(st.tuples(window_rtt, st.booleans()), min_size=1, max_size=80), window=st.integers(1, 12))
def test_property_window_figures_equal_sorted_window(steps, window):
    table = LatencyTable(TableConfig(window_samples=window, stale_after_intervals=1e9))
    seen: list[float] = []
    outcomes: list[bool] = []
    for i, (rtt, look) in enumerate(steps):
        table.add_sample(KEY, lost() if rtt is None else ok(rtt), float(i))
        outcomes.append(rtt is None)
        if rtt is not None:
            seen.append(rtt)
        if not (look or i == len(steps) - 1):
            continue  # snapshots only now and then, so rows change several times between two of them
        r = row(table, float(i))
        assert r.loss == sum(outcomes[-window:]) / len(outcomes[-window:])
        ordered = sorted(seen[-window:])
        if not ordered:
            assert (r.p50_ms, r.p95_ms, r.p99_ms, r.min_ms) == (None, None, None, None)
            continue
        for got, q in ((r.p50_ms, 50), (r.p95_ms, 95), (r.p99_ms, 99)):
            assert same_float(got, percentile(ordered, q)), (q, got, ordered)
        assert same_float(r.min_ms, ordered[0]), (r.min_ms, ordered)


GROUPS = ("a", "b", "c")
PLACES = (("r2", "direct"), ("r1", "direct"), ("r2", "accelerator"), ("r1", "accelerator"))
KEYS = [RowKey(g, *p) for g in GROUPS for p in PLACES]

ops = st.lists(
    st.one_of(
        st.tuples(st.just("sample"), st.sampled_from(KEYS), st.one_of(st.none(), st.sampled_from([5.0, 7.5, 9.0])),
                  st.integers(0, 30)),
        st.tuples(st.just("round"), st.sampled_from(KEYS), st.sampled_from([0.0, 1.0]), st.integers(0, 30)),
        st.tuples(st.just("ensure"), st.sampled_from(KEYS), st.none(), st.none()),
        st.tuples(st.just("snapshot"), st.none(), st.none(), st.integers(0, 40)),
    ),
    max_size=60,
)


def apply(table: LatencyTable, op: tuple) -> None:
    kind, key, value, t = op
    if kind == "sample":
        table.add_sample(key, lost() if value is None else ok(value), float(t))
    elif kind == "round":
        table.add_round(key, value, float(t))
    elif kind == "ensure":
        table.ensure(key)


@settings(max_examples=200, deadline=None)
@given(script=ops, window=st.integers(1, 4))
def test_property_incremental_snapshot_equals_fresh_table(script, window):
    # Reused rows, groups and staleness must match a table built from scratch, the clock going back and forth.
    config = TableConfig(window_samples=window, fail_after=1, recover_after=2)
    table = LatencyTable(config)
    done: list[tuple] = []
    for op in script:
        if op[0] != "snapshot":
            apply(table, op)
            done.append(op)
            continue
        now = float(op[3])
        snap = table.snapshot(now)
        fresh = LatencyTable(config)
        for earlier in done:
            apply(fresh, earlier)
        want = fresh.snapshot(now)
        assert snap.to_json() == want.to_json()
        assert list(snap.rows) == list(want.rows)  # rows in the order they were added
        for group in GROUPS:
            assert dict(snap.group_rows(group)) == {k[1:]: r for k, r in want.rows.items() if k[0] == group}
            assert snap.for_group(group) == want.for_group(group)


@pytest.mark.parametrize(
    ("looks", "expected"),
    [
        pytest.param([5.0, 5.5], ("stale", "stale", "up"), id="oldest-fresh-turns-stale"),
        pytest.param([5.0, 8.0], ("stale", "stale", "up"), id="exactly-K-still-fresh"),
        pytest.param([5.0, 8.5], ("stale", "stale", "stale"), id="then-the-newest"),
        pytest.param([10.0, 4.5], ("stale", "up", "up"), id="clock-back-from-all-stale"),
        pytest.param([10.0, 2.5], ("up", "up", "up"), id="clock-back-all-fresh"),
        pytest.param([5.5, 4.5], ("stale", "up", "up"), id="clock-back-newest-stale-fresh-again"),
        pytest.param([5.5, 10.0, 5.5], ("stale", "stale", "up"), id="mixed-all-stale-mixed"),
    ],
)
def test_staleness_flips_row_by_row_without_new_data(looks, expected):
    # Rows of one group updated at 0, 2 and 5 s: each flips on its own as snapshots move the clock.
    table = LatencyTable(TableConfig(stale_after_intervals=3, interval_s=1.0))
    keys = (RowKey("a", "r1", "direct"), RowKey("a", "r2", "direct"), RowKey("a", "r3", "direct"))
    for t, key in zip((0.0, 2.0, 5.0), keys):
        table.add_sample(key, ok(10.0), t)
        table.add_round(key, 0.0, t)
    for now in looks:
        snap = table.snapshot(now)
    assert tuple(str(snap.get(*key).health) for key in keys) == expected
    assert [r.health for r in snap.for_group("a")] == [snap.get(*key).health for key in keys]


def test_group_rows_index_and_reuse():
    table = LatencyTable(TableConfig(stale_after_intervals=3, interval_s=1.0))
    for key in KEYS:
        table.add_sample(key, ok(10.0), 0.0 if key.group == "a" else 5.0)
    first = table.snapshot(5.0)
    rows_b = first.group_rows("b")
    assert list(rows_b) == sorted(PLACES)  # keyed by (region, path), in key order
    assert all(rows_b[place] is first.get("b", *place) for place in PLACES)
    assert first.for_group("b") == tuple(rows_b.values())
    assert first.group_rows("nobody") == {} and first.for_group("nobody") == ()
    assert first.group_rows("a")[("r1", "direct")].health is HealthState.STALE

    table.add_sample(RowKey("c", "r1", "direct"), ok(20.0), 6.0)
    second = table.snapshot(6.0)
    # a group's token stays the same object exactly while none of its rows changes (data or staleness)
    assert second.group_token("a") is first.group_token("a")  # stale before and still stale
    assert second.group_token("b") is first.group_token("b")  # untouched
    assert second.group_token("c") is not first.group_token("c")
    assert second.group_token("nobody") is None
    assert dict(second.group_rows("a")) == dict(first.group_rows("a"))
    assert second.group_rows("c")[("r1", "direct")].min_ms == 10.0
    assert second.group_rows("c")[("r2", "direct")] == first.group_rows("c")[("r2", "direct")]
    assert second.rows is not first.rows and second.rows[KEYS[0]] == first.rows[KEYS[0]]
    assert first.group_rows("c")[("r1", "direct")].samples == 1  # the first snapshot did not move

    third = table.snapshot(8.5)  # b's rows (updated at 5.0) turn stale, c's row updated at 6.0 stays fresh
    assert third.group_token("a") is first.group_token("a")
    assert third.group_token("b") is not first.group_token("b")
    assert {r.health for r in third.for_group("b")} == {HealthState.STALE}
    assert {r.health for r in second.for_group("b")} == {HealthState.UNKNOWN}  # samples, no round yet; not stale
    assert third.group_rows("c")[("r1", "direct")] == second.group_rows("c")[("r1", "direct")]
    assert third.group_rows("c")[("r2", "direct")].health is HealthState.STALE

    fourth = table.snapshot(8.5)
    assert fourth.rows is third.rows and fourth.by_group is third.by_group and fourth.taken_at == 8.5


def test_hand_built_snapshot_gets_a_group_index():
    table = LatencyTable()
    for key in KEYS[:4]:
        table.add_sample(key, ok(10.0), 0.0)
    rows = dict(table.snapshot(0.0).rows)
    snap = TableSnapshot(taken_at=1.0, rows=rows)
    assert dict(snap.group_rows("a")) == {k[1:]: r for k, r in rows.items()}
    assert [r.key for r in snap.for_group("a")] == sorted(KEYS[:4])


@pytest.mark.parametrize(
    "section, expected",
    [
        pytest.param("", (10.0, 256, 3.0, True), id="defaults"),
        pytest.param('[table]\newma_tau = "30s"\nwindow = 64\nstale_after = 5\nunknown_healthy = false\n', (30.0, 64, 5.0, False), id="set"),
    ],
)
def test_table_settings_come_from_the_config(section, expected):
    from latency_router.config import parse_config

    config = parse_config(
        section + '[[regions]]\nname = "r"\nlat = 0.0\nlon = 0.0\n[[regions.paths]]\nname = "direct"\n'
        'probe = "udp://192.0.2.1:7007"\nanswer = "192.0.2.1"\n'
    )
    tc = TableConfig.from_settings(config.probing, config.health, config.table)
    assert (tc.ewma_tau_s, tc.window_samples, tc.stale_after_intervals, tc.unknown_healthy) == expected
    table = LatencyTable(tc)
    table.ensure(KEY)
    assert table.snapshot(0.0).get(*KEY).healthy is expected[3]  # what an unknown row counts as

"""The table's column snapshots against an independent model of each row (plain arithmetic and probes.stats), their
immutability and group tokens, the column candidates (vector.py) against build_candidates, and the Decider's skip."""

from __future__ import annotations

import functools
import math
import sys
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latency_router.config import parse_config
from latency_router.decider import (
    HealthState,
    LatencyTable,
    RowKey,
    TableConfig,
    TableSnapshot,
)
from latency_router.decider.candidates import build_candidates
from latency_router.decider.engine import Decider
from latency_router.decider.policy import rows_for
from latency_router.decider.vector import CandidateBuilder
from latency_router.probes.base import LossReason, Sample
from latency_router.probes.stats import percentile

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
K_S = 3.0  # stale_after_intervals x interval_s in every table config below
TAU = 10.0
FAIL_AFTER = RECOVER_AFTER = 2
KEYS = [RowKey(g, r, p) for g in ("b", "a") for r in ("r2", "r1") for p in ("direct", "acc")]  # created out of order


def ok(rtt_ms: float, t: float = 0.0) -> Sample:
    return Sample(target="udp://127.0.0.1:7", kind="udp", sent_at=t, rtt_ms=rtt_ms)


def lost(t: float = 0.0) -> Sample:
    return Sample.lost("udp://127.0.0.1:7", "udp", t, LossReason.TIMEOUT)


def table_config(window: int, unknown_healthy: bool) -> TableConfig:
    return TableConfig(ewma_tau_s=TAU, window_samples=window, interval_s=1.0, stale_after_intervals=K_S,
                       fail_after=FAIL_AFTER, recover_after=RECOVER_AFTER, unknown_healthy=unknown_healthy)


class Model:
    """One row, recomputed from what it was fed with plain arithmetic: the reference a snapshot is checked against."""

    def __init__(self, key: RowKey) -> None:
        self.key = key
        self.rtts: list[float] = []  # the window's RTTs, oldest first
        self.outcomes: list[bool] = []  # the window's outcomes, oldest first: True for a lost probe
        self.samples = self.lost = 0
        self.w_sum = self.w_total = self.jitter = self.ewma_at = 0.0
        self.updated_at: float | None = None
        self.state = HealthState.UNKNOWN
        self.fail_run = self.good_run = 0

    def sample(self, rtt: float | None, now: float, window: int) -> None:
        self.samples += 1
        self.updated_at = now
        self.outcomes = (self.outcomes + [rtt is None])[-window:]
        if rtt is None:
            self.lost += 1
            return
        if self.rtts:
            self.jitter += (abs(rtt - self.rtts[-1]) - self.jitter) / 16.0  # RFC 3550 6.4.1
        self.rtts = (self.rtts + [rtt])[-window:]
        dt = now - self.ewma_at
        if self.w_total and dt > 0:
            decay = math.exp(-dt / TAU)
            self.w_sum, self.w_total = self.w_sum * decay + rtt, self.w_total * decay + 1.0
        else:
            self.w_sum, self.w_total = self.w_sum + rtt, self.w_total + 1.0
        self.ewma_at = now

    def round(self, ratio: float, now: float) -> None:
        self.updated_at = now
        if ratio >= 0.5:
            self.fail_run, self.good_run = self.fail_run + 1, 0
            if self.fail_run >= FAIL_AFTER:
                self.state = HealthState.DOWN
        else:
            self.fail_run, self.good_run = 0, self.good_run + 1
            if self.state is HealthState.UNKNOWN or (self.state is HealthState.DOWN and self.good_run >= RECOVER_AFTER):
                self.state = HealthState.UP

    def shrink(self, window: int) -> None:
        self.rtts, self.outcomes = self.rtts[-window:], self.outcomes[-window:]

    def expected(self, now: float, window: int, unknown_healthy: bool) -> tuple[Any, ...]:
        ordered = sorted(self.rtts)
        have = bool(ordered)
        stale = self.updated_at is not None and now - self.updated_at > K_S
        health = HealthState.STALE if stale else self.state
        usable = self.state is HealthState.UP or (self.state is HealthState.UNKNOWN and unknown_healthy)
        healthy = not stale and usable
        return (
            *self.key,
            self.w_sum / self.w_total if have else None,
            percentile(ordered, 50) if have else None,
            percentile(ordered, 95) if have else None,
            percentile(ordered, 99) if have else None,
            ordered[0] if have else None,
            self.jitter if have and self.samples - self.lost >= 2 else None,
            sum(self.outcomes) / min(self.samples, window) if self.samples else None,
            self.samples, self.lost, healthy, health, "measured", self.updated_at,
        )


op = st.one_of(
    st.tuples(st.just("sample"), st.integers(0, len(KEYS) - 1),
              st.one_of(st.none(), st.sampled_from([1.0, 2.0, 2.0, 5.5, 10.0, 0.25, 40.0]))),
    st.tuples(st.just("round"), st.integers(0, len(KEYS) - 1), st.sampled_from([0.0, 0.25, 0.5, 1.0])),
    st.tuples(st.just("ensure"), st.integers(0, len(KEYS) - 1)),
    # the clock: on, exactly K (a row updated K ago is not stale yet), past K, and back
    st.tuples(st.just("clock"), st.sampled_from([0.0, 0.5, 1.0, 2.5, K_S, 3.5, 10.0, -1.0, -4.0])),
    st.tuples(st.just("restore"), st.integers(1, 6)),  # export, then restore into a new table of this window
    st.tuples(st.just("reinto"), st.integers(0, len(KEYS))),  # restore some of its own rows into the same table
)


def check(snap: TableSnapshot, models: dict[RowKey, Model], now: float, window: int, unknown_healthy: bool) -> None:
    assert list(snap.rows) == list(models)  # in the order they came
    for key, model in models.items():
        got, want = tuple(snap.rows[key]), model.expected(now, window, unknown_healthy)
        for field, g, w in zip(snap.rows[key]._fields, got, want):
            assert g == w and type(g) is type(w), (key, field, g, w)
        assert snap.get(*key) == snap.rows[key]
    groups = list(dict.fromkeys(k.group for k in models))
    assert list(snap.by_group) == groups
    for g in groups:
        assert list(snap.group_rows(g)) == sorted((k.region, k.path) for k in models if k.group == g)
        assert all(snap.group_rows(g)[(k.region, k.path)] == snap.rows[k] for k in models if k.group == g)
    assert snap.to_json() == {"rows": [snap.rows[k].to_json() for k in sorted(models)]}


def frozen(snap: TableSnapshot) -> tuple[Any, ...]:
    """Everything a reader can see of a snapshot, as plain values (group tokens by identity)."""
    groups = list(snap.by_group)
    return (snap.to_json(), [tuple(r) for r in snap.rows.values()], groups,
            [list(snap.group_rows(g).items()) for g in groups], [snap.group_token(g) for g in groups])


@PROPERTY
@given(ops=st.lists(st.tuples(op, st.integers(0, 3)), max_size=80), window=st.integers(1, 5),
       unknown_healthy=st.booleans())
def test_snapshots_equal_an_independent_model_and_never_move(ops, window, unknown_healthy):
    table = LatencyTable(table_config(window, unknown_healthy))
    models: dict[RowKey, Model] = {}
    now = 0.0
    kept: list[tuple[TableSnapshot, tuple[Any, ...]]] = []
    previous: tuple[TableSnapshot, tuple[Any, ...]] | None = None
    for o, look in ops:
        kind = o[0]
        if kind in ("sample", "round", "ensure"):
            key = KEYS[o[1]]
            model = models.setdefault(key, Model(key))
            if kind == "sample":
                table.add_sample(key, lost(now) if o[2] is None else ok(o[2], now), now)
                model.sample(o[2], now, window)
            elif kind == "round":
                table.add_round(key, o[2], now)
                model.round(o[2], now)
            else:
                table.ensure(key)
        elif kind == "clock":
            now += o[1]
        elif kind == "restore":
            state = table.export_state()
            window = o[1]
            table = LatencyTable(table_config(window, unknown_healthy))
            assert table.restore_state(state) == len(models)
            for model in models.values():
                model.shrink(window)
            previous = None  # tokens of another table say nothing
        elif kind == "reinto":
            state = table.export_state()
            state["rows"] = state["rows"][o[1]:]
            table.restore_state(state)  # the same rows, the same figures
        if not look:
            continue  # a few steps between two snapshots
        # tokens are checked between consecutive snapshots
        snap = table.snapshot(now)
        check(snap, models, now, window, unknown_healthy)
        seen = frozen(snap)
        if previous is not None:
            before = previous[0]
            for g, token in zip(seen[2], seen[4]):
                if token is not None and token is before.group_token(g):
                    # the same token: none of the group's rows changed
                    assert dict(snap.group_rows(g)) == dict(before.group_rows(g)), g
        previous = (snap, seen)
        kept.append((snap, seen))
    check(table.snapshot(now), models, now, window, unknown_healthy)
    for snap, seen in kept:
        assert frozen(snap) == seen  # nothing the table did later shows in an earlier snapshot


@pytest.mark.parametrize(
    ("window", "feed", "loss"),
    [
        pytest.param(3, [None, None, None], 1.0, id="ring-full-of-losses"),
        pytest.param(3, [None, None, 1.0, 1.0, 1.0], 0.0, id="losses-left-the-window"),
        pytest.param(3, [None, 1.0, 1.0, None], 1 / 3, id="oldest-loss-leaves-as-one-comes"),
        pytest.param(1, [None, 1.0], 0.0, id="window-1"),
        pytest.param(5, [1.0, None], 0.5, id="window-not-full"),
    ],
)
def test_loss_over_the_window(window, feed, loss):
    table = LatencyTable(table_config(window, True))
    for i, rtt in enumerate(feed):
        table.add_sample(KEYS[0], lost() if rtt is None else ok(rtt), float(i))
    assert table.snapshot(len(feed) - 1.0).get(*KEYS[0]).loss == loss


def test_staleness_at_exactly_k_and_with_the_clock_back():
    table = LatencyTable(table_config(4, True))
    table.add_sample(KEYS[0], ok(10.0), 10.0)
    table.add_round(KEYS[0], 0.0, 10.0)
    assert table.snapshot(10.0 + K_S).get(*KEYS[0]).health is HealthState.UP  # K ago: not yet stale
    late = table.snapshot(10.0 + K_S + 0.5)
    assert (late.get(*KEYS[0]).health, late.get(*KEYS[0]).healthy) == (HealthState.STALE, False)
    back = table.snapshot(5.0)  # the clock went back: updated "in the future" is not stale
    assert (back.get(*KEYS[0]).health, back.get(*KEYS[0]).healthy) == (HealthState.UP, True)
    assert late.get(*KEYS[0]).health is HealthState.STALE  # and the earlier snapshot did not move


def test_jitter_is_none_for_a_restored_row_that_holds_no_rtt():
    # A state the parser accepts: 5 samples, none lost, but no RTT kept (e.g. written by another tool). No RTT: every
    # RTT field None, jitter included (what 1dade6e showed); the column snapshot shows the jitter column's 0.0.
    fields = LatencyTable().export_state()["fields"]
    state = {"format": 1, "fields": fields, "window_samples": 3, "byteorder": sys.byteorder,
             "rows": [(*KEYS[0], "up", 0, 1, 5, 0, 0, 1.0, 0.0, 0.0, 0.0, 0.0, b"", 0)]}
    table = LatencyTable(table_config(3, True))
    assert table.restore_state(state) == 1
    row = table.snapshot(1.0).get(*KEYS[0])
    assert (row.ewma_ms, row.p50_ms, row.min_ms) == (None, None, None)
    assert row.jitter_ms is None


# --- candidates from columns (vector.py) against build_candidates -----------------------------------------------------

AGENT = "lab"
REGION_PATHS = {"r0": ("direct", "accelerator"), "r1": ("direct",), "r2": ("direct", "accelerator", "backup")}
GROUPS = ("g0", "g1")
SERVICES = (
    'name = "lat"\npolicy = "latency"',
    'name = "tie"\npolicy = "latency"\nmetric = "min"\npath_margin = "0ms"\npath_margin_ratio = 0.0',
    'name = "acc"\npolicy = "latency"\npath = "accelerator"\nregions = ["r0", "r2"]',
    'name = "one"\npolicy = "failover"\nregions = ["r1"]',
)


@functools.cache
def config_for(unknown_healthy: bool):
    parts = [f'[agent]\nname = "{AGENT}"\n[table]\nunknown_healthy = {str(unknown_healthy).lower()}\n']
    for i, (name, paths) in enumerate(REGION_PATHS.items()):
        parts.append(f'[[regions]]\nname = "{name}"\nlat = {10 * i}\nlon = {20 * i}\n')
        for j, path in enumerate(paths):
            address = f"192.0.2.{16 * i + j + 1}"
            parts.append(f'[[regions.paths]]\nname = "{path}"\nprobe = "udp://{address}:7007"\nanswer = "{address}"\n')
    parts += [f'[[groups]]\nname = "{g}"\n' for g in GROUPS]
    parts += [f"[[services]]\n{s}\n" for s in SERVICES]
    return parse_config("\n".join(parts))


ROW_KEYS = [(g, r, p) for g in (*GROUPS, AGENT) for r, paths in REGION_PATHS.items() for p in paths]
row_op = st.one_of(
    st.tuples(st.just("rtt"), st.integers(0, len(ROW_KEYS) - 1), st.sampled_from([5.0, 10.0, 10.0, 10.2, 30.0, 1e3])),
    st.tuples(st.just("lost"), st.integers(0, len(ROW_KEYS) - 1)),
    st.tuples(st.just("round"), st.integers(0, len(ROW_KEYS) - 1), st.sampled_from([0.0, 1.0])),
    st.tuples(st.just("ensure"), st.integers(0, len(ROW_KEYS) - 1)),
    st.tuples(st.just("clock"), st.sampled_from([0.5, 4.0])),
    st.tuples(st.just("drain"), st.sampled_from([(), ("r0",), ("r2", "r1")])),
    st.tuples(st.just("evaluate"), st.booleans()),
)


def apply_row_op(table: LatencyTable, o: tuple[Any, ...], now: float) -> None:
    if o[0] == "rtt":
        table.add_sample(ROW_KEYS[o[1]], ok(o[2], now), now)
    elif o[0] == "lost":
        table.add_sample(ROW_KEYS[o[1]], lost(now), now)
    elif o[0] == "round":
        table.add_round(ROW_KEYS[o[1]], o[2], now)
    elif o[0] == "ensure":
        table.ensure(ROW_KEYS[o[1]])


@PROPERTY
@given(ops=st.lists(row_op, max_size=40), unknown_healthy=st.booleans())
def test_column_candidates_and_skipping_decider_equal_the_row_path(ops, unknown_healthy):
    config = config_for(unknown_healthy)
    table = LatencyTable(TableConfig.from_settings(config.probing, config.health, config.table))
    fast, plain = Decider(config), Decider(config)  # plain decides from fresh row mappings: it never skips
    builder = CandidateBuilder()
    now = 0.0
    for o in ops:
        warming = False
        if o[0] == "clock":
            now += o[1]
        elif o[0] == "drain":
            fast.set_drained(o[1])
            plain.set_drained(o[1])
        elif o[0] == "evaluate":
            warming = o[1]
        else:
            apply_row_op(table, o, now)
        # an evaluation after every step: a skip needs the same token over a few evaluations in a row
        snap = table.snapshot(now)
        rows = TableSnapshot(taken_at=now, rows=dict(snap.rows))
        prepared = builder.prepare(fast.plans, snap.columns)
        for key, plan in fast.plans.items():
            got, want = prepared.get(key), build_candidates(rows_for(rows, plan), plan)
            if got is not None:
                assert got[1] == want[1], key
                assert [tuple(c) for c in got[0]] == [tuple(c) for c in want[0]], key
            else:
                assert not rows_for(rows, plan), key
        got_d, want_d = fast.evaluate(snap, now, warming=warming), plain.evaluate(rows, now, warming=warming)
        assert dict(got_d) == dict(want_d)


def test_column_candidates_pick_the_healthy_path_when_its_rtt_is_infinite():
    # r2: direct and accelerator down, backup up with an infinite RTT (e.g. an EWMA that overflowed). build_candidates
    # takes backup; the column path must not take the down accelerator for it (inf is also vector.py's "no value").
    config = config_for(True)
    table = LatencyTable(TableConfig.from_settings(config.probing, config.health, config.table))
    for path in ("direct", "accelerator"):
        for t in range(config.health.fail_after):
            table.add_sample(("g0", "r2", path), ok(10.0, t), float(t))
            table.add_round(("g0", "r2", path), 1.0, float(t))
    table.add_sample(("g0", "r2", "backup"), ok(math.inf, 2.0), 2.0)
    table.add_round(("g0", "r2", "backup"), 0.0, 2.0)
    snap = table.snapshot(2.0)
    plans = Decider(config).plans
    plan = plans[("lat", "g0")]
    want = build_candidates(rows_for(TableSnapshot(taken_at=2.0, rows=dict(snap.rows)), plan), plan)
    got = CandidateBuilder().prepare(plans, snap.columns).get(("lat", "g0"))
    assert next(c for c in want[0] if c.region == "r2")[:6] == ("r2", "backup", "192.0.2.35", math.inf, "up", True)
    assert [tuple(c) for c in got[0]] == [tuple(c) for c in want[0]]


def test_a_group_that_gets_rows_of_its_own_is_decided_again():
    config = config_for(True)
    table = LatencyTable(TableConfig.from_settings(config.probing, config.health, config.table))
    decider = Decider(config)
    for t in range(3):
        for region, rtt in (("r0", 10.0), ("r1", 50.0), ("r2", 60.0)):
            table.add_sample((AGENT, region, "direct"), ok(rtt, t), float(t))
            table.add_round((AGENT, region, "direct"), 0.0, float(t))
        decider.evaluate(table.snapshot(float(t)), float(t))
    assert decider.lookup("lat", "g0").region == "r0"  # from the agent's rows
    # g0's own rows arrive (r1 far ahead); the agent's rows do not change, nor turn stale before 2 + K
    for region, rtt in (("r0", 90.0), ("r1", 5.0), ("r2", 95.0)):
        table.add_sample(("g0", region, "direct"), ok(rtt, 3.0), 3.0)
        table.add_round(("g0", region, "direct"), 0.0, 3.0)
    decider.evaluate(table.snapshot(3.0), 3.0)
    d = decider.lookup("lat", "g0")
    assert {c.region: c.rtt_ms for c in d.candidates} == {"r0": 90.0, "r1": 5.0, "r2": 95.0}  # g0's own rows now
    assert decider.state("lat", "g0").streak == 1  # r1 leads: hysteresis starts counting
    g1 = {c.region: c.rtt_ms for c in decider.lookup("lat", "g1").candidates}
    assert g1 == pytest.approx({"r0": 10.0, "r1": 50.0, "r2": 60.0})  # still the agent's rows


def test_a_decision_is_made_again_when_its_rows_turn_stale_with_no_new_data():
    config = config_for(True)
    table = LatencyTable(TableConfig.from_settings(config.probing, config.health, config.table))
    decider = Decider(config)
    for t in range(4):
        table.add_sample((AGENT, "r0", "direct"), ok(10.0, t), float(t))
        table.add_round((AGENT, "r0", "direct"), 0.0, float(t))
        decider.evaluate(table.snapshot(float(t)), float(t))  # r1 has no row: unknown, no RTT
    assert decider.lookup("lat", "g0").region == "r0"
    now = 3.0
    for step in range(8):  # r0 goes stale at 3 + K; only the clock moves
        now += 0.5
        decision = decider.evaluate(table.snapshot(now), now)[("lat", "g0")]
        r0 = next(c for c in decision.candidates if c.region == "r0")
        assert (r0.health == "stale") is (now - 3.0 > K_S), (step, now, r0)

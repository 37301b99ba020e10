"""The decider's column path (vector.py, a LatencyTable's snapshot) against its row path (build_candidates and decide on
the same rows as plain RowSnapshots): equal candidates and equal decisions on random tables, shapes and services."""

from __future__ import annotations

import functools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from latency_router.config import parse_config
from latency_router.decider.candidates import build_candidates
from latency_router.decider.engine import Decider
from latency_router.decider.policy import rows_for
from latency_router.decider.table import LatencyTable, TableConfig, TableSnapshot
from latency_router.decider.vector import CandidateBuilder
from latency_router.probes.base import LossReason, Sample

AGENT = "lab"
REGIONS = ("r0", "r1", "r2", "r3")
# each region's paths: one, two (either order) or three, so that shapes with and without other paths mix
REGION_PATHS = {"r0": ("direct", "accelerator"), "r1": ("direct",), "r2": ("accelerator", "direct", "backup"), "r3": ("direct", "accelerator")}
GROUPS = ("g0", "g1", "g2", "g3")  # g3 never has rows of its own: it is decided from the agent's rows
SERVICES = (
    'name = "lat"\npolicy = "latency"',
    'name = "lat95"\npolicy = "latency"\nmetric = "p95"\npath_margin = "0ms"\npath_margin_ratio = 0.0',
    'name = "mv"\npolicy = "multivalue"\nanswers = 2\nmetric = "min"',
    'name = "fo"\npolicy = "failover"\npriority = ["r2", "r0", "r1", "r3"]\npath_margin = "20ms"',
    'name = "w"\npolicy = "weighted"\nregions = ["r0", "r2"]',
    'name = "acc"\npolicy = "latency"\npath = "accelerator"\nregions = ["r0", "r2", "r3"]',
    'name = "bk"\npolicy = "latency"\nprimary_path = "backup"\nregions = ["r2", "r1"]\nall_down = "none"',
)
PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@functools.lru_cache(maxsize=None)
def config_for(unknown_healthy: bool):
    parts = [f'[agent]\nname = "{AGENT}"\n[table]\nunknown_healthy = {str(unknown_healthy).lower()}\n']
    for i, name in enumerate(REGIONS):
        parts.append(f'[[regions]]\nname = "{name}"\nlat = {10 * i}\nlon = {20 * i}\n')
        for j, path in enumerate(REGION_PATHS[name]):
            address = f"192.0.2.{16 * i + j + 1}"
            parts.append(f'[[regions.paths]]\nname = "{path}"\nprobe = "udp://{address}:7007"\nanswer = "{address}"\n')
    parts += [f'[[groups]]\nname = "{g}"\n' for g in GROUPS]
    parts += [f"[[services]]\n{s}\n" for s in SERVICES]
    return parse_config("\n".join(parts))


ROW_KEYS = [(g, r, p) for g in (*GROUPS[:3], AGENT) for r in REGIONS for p in REGION_PATHS[r]]
# what one row gets in a step: nothing, a round of RTTs (some equal, to test ties), a lost round, or samples with no round
event = st.one_of(
    st.none(),
    st.tuples(st.just("rtts"), st.lists(st.sampled_from([5.0, 10.0, 10.0, 12.5, 30.0, 31.0, 200.0]), min_size=1, max_size=3)),
    st.just(("lost",)),
    st.tuples(st.just("samples"), st.lists(st.sampled_from([None, 11.0, 40.0]), min_size=1, max_size=2)),
)
steps = st.lists(
    st.tuples(st.lists(event, min_size=len(ROW_KEYS), max_size=len(ROW_KEYS)), st.sampled_from([0.5, 1.0, 4.0])),
    min_size=1, max_size=6,
)


def feed(table: LatencyTable, events, now: float) -> None:
    for key, ev in zip(ROW_KEYS, events):
        if ev is None:
            continue
        if ev[0] == "rtts":
            for rtt in ev[1]:
                table.add_sample(key, Sample(target="t", kind="udp", sent_at=now, rtt_ms=rtt), now)
            table.add_round(key, 0.0, now)
        elif ev[0] == "lost":
            table.add_sample(key, Sample.lost("t", "udp", now, LossReason.TIMEOUT), now)
            table.add_round(key, 1.0, now)
        else:
            for rtt in ev[1]:
                sample = Sample.lost("t", "udp", now, LossReason.TIMEOUT) if rtt is None else Sample(target="t", kind="udp", sent_at=now, rtt_ms=rtt)
                table.add_sample(key, sample, now)


@PROPERTY
@given(history=steps, unknown_healthy=st.booleans())
def test_column_candidates_equal_build_candidates_on_the_same_rows(history, unknown_healthy):
    config = config_for(unknown_healthy)
    table = LatencyTable(TableConfig.from_settings(config.probing, config.health, config.table))
    plans = Decider(config).plans
    builder = CandidateBuilder()
    now = 0.0
    for events, dt in history:
        feed(table, events, now)
        snapshot = table.snapshot(now)
        plain = TableSnapshot(taken_at=now, rows=dict(snapshot.rows))
        prepared = builder.prepare(plans, snapshot.columns)
        for key, plan in plans.items():
            want = build_candidates(rows_for(plain, plan), plan)
            got = prepared.get(key)
            if not rows_for(plain, plan):
                assert got is None  # no rows at all: decided from the (empty) rows
                continue
            assert got is not None, key
            assert got[1] == want[1], key
            assert len(got[0]) == len(want[0]), key
            for g, w in zip(got[0], want[0]):
                assert tuple(g) == tuple(w), (key, g, w)
                assert type(g.rtt_ms) is type(w.rtt_ms) and type(g.healthy) is type(w.healthy), (key, g, w)
        now += dt


@PROPERTY
@given(history=steps, unknown_healthy=st.booleans())
def test_a_decider_on_column_snapshots_decides_as_one_on_the_same_rows(history, unknown_healthy):
    config = config_for(unknown_healthy)
    table = LatencyTable(TableConfig.from_settings(config.probing, config.health, config.table))
    columns, rows = Decider(config), Decider(config)
    now = 0.0
    for events, dt in history:
        feed(table, events, now)
        snapshot = table.snapshot(now)
        got = columns.evaluate(snapshot, now)
        want = rows.evaluate(TableSnapshot(taken_at=now, rows=dict(snapshot.rows)), now)
        assert set(got) == set(want)
        for key in want:
            assert got[key] == want[key], (key, [(f, a, b) for f, a, b in zip(want[key]._fields, got[key], want[key]) if a != b])
        now += dt


def test_the_snapshot_the_decider_read_does_not_move_when_the_table_does():
    config = config_for(True)
    table = LatencyTable(TableConfig.from_settings(config.probing, config.health, config.table))
    key = ("g0", "r0", "direct")
    table.add_sample(key, Sample(target="t", kind="udp", sent_at=0.0, rtt_ms=10.0), 0.0)
    table.add_round(key, 0.0, 0.0)
    first = table.snapshot(0.0)
    for t in (1.0, 2.0, 3.0):
        table.add_sample(key, Sample(target="t", kind="udp", sent_at=t, rtt_ms=50.0), t)
        table.add_round(key, 1.0, t)
    later = table.snapshot(3.0)
    assert (first.get(*key).samples, first.get(*key).ewma_ms, str(first.get(*key).health)) == (1, 10.0, "up")
    assert (later.get(*key).samples, str(later.get(*key).health)) == (4, "down")
    assert later.get(*key).ewma_ms > 10.0
    prepared = CandidateBuilder().prepare(Decider(config).plans, first.columns)
    (cand,) = [c for c in prepared.get(("lat", "g0"))[0] if c.region == "r0"]
    assert (cand.rtt_ms, cand.healthy) == (10.0, True)  # read from the first snapshot's columns, not the table's

"""Persistence: the table's export and restore, and the SQLite snapshot store (WAL, corruption set aside, kill -9)."""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
import select
import signal
import sqlite3
import subprocess
import sys
import tempfile
import textwrap
import time
from array import array
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latency_router.decider import HealthState, LatencyTable, RowKey, TableConfig
from latency_router.probes.base import LossReason, Sample
from latency_router.probes.stats import percentile
from latency_router.store import APPLICATION_ID, SCHEMA_VERSION, SnapshotStore, StoreError
from latency_router.store.snapshot import _row_crc

KEY = RowKey("eu", "eu-west-1", "direct")
T0 = 1_700_000_000.0  # wall-clock seconds, as the daemon's table sees them


def ok(rtt_ms: float) -> Sample:
    return Sample(target="udp://127.0.0.1:7", kind="udp", sent_at=0.0, rtt_ms=rtt_ms)


def lost() -> Sample:
    return Sample.lost("udp://127.0.0.1:7", "udp", 0.0, LossReason.TIMEOUT)


GROUPS = ("a", "b")
PLACES = (("r2", "direct"), ("r1", "direct"), ("r1", "accelerator"))
KEYS = [RowKey(g, *p) for g in GROUPS for p in PLACES]

# Repeated values of either sign of zero check that the rebuilt sorted window is bit for bit the incremental one.
rtt = st.one_of(
    st.none(),
    st.floats(min_value=0.01, max_value=10_000, allow_nan=False),
    st.sampled_from([0.0, -0.0, 1.0, 2.5, 2.5000000000000004]),
)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("sample"), st.sampled_from(KEYS), rtt, st.integers(0, 40)),
        st.tuples(st.just("round"), st.sampled_from(KEYS), st.sampled_from([0.0, 0.4, 0.5, 1.0]), st.integers(0, 40)),
        st.tuples(st.just("ensure"), st.sampled_from(KEYS), st.none(), st.none()),
    ),
    max_size=80,
)


def apply(table: LatencyTable, script: list[tuple]) -> None:
    for kind, key, value, t in script:
        if kind == "sample":
            table.add_sample(key, lost() if value is None else ok(value), T0 + t)
        elif kind == "round":
            table.add_round(key, value, T0 + t)
        else:
            table.ensure(key)


def same_float(a: float | None, b: float | None) -> bool:
    return a == b and (a is None or math.copysign(1.0, a) == math.copysign(1.0, b))


def assert_same_tables(got: LatencyTable, want: LatencyTable, now: float) -> None:
    """Equal snapshots (row order and the sign of zero included) and the same sorted windows, byte for byte."""
    a, b = got.snapshot(now), want.snapshot(now)
    assert a.to_json() == b.to_json()
    assert list(a.rows) == list(b.rows)
    for key, row in a.rows.items():
        other = b.rows[key]
        for name in ("ewma_ms", "p50_ms", "p95_ms", "p99_ms", "min_ms", "jitter_ms", "loss", "updated_at"):
            assert same_float(getattr(row, name), getattr(other, name)), (key, name)
    # The internal sorted window is what later samples leave from: compare it exactly (a white-box check).
    for key in want._rows:
        assert got._rows[key].data.tobytes() == want._rows[key].data.tobytes(), key


CONFIGS = st.builds(
    TableConfig,
    window_samples=st.integers(1, 6),
    fail_after=st.integers(1, 3),
    recover_after=st.integers(1, 3),
    stale_after_intervals=st.sampled_from([3.0, 1e9]),
)


# -- the table's export and restore -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(config=CONFIGS, first=ops, later=ops, look=st.integers(0, 80))
def test_property_restored_table_behaves_exactly_like_the_original(config, first, later, look):
    table = LatencyTable(config)
    apply(table, first)
    state = table.export_state()
    restored = LatencyTable(config)
    assert restored.restore_state(state) == len(state["rows"])
    assert restored.export_state() == state
    assert_same_tables(restored, table, T0 + look)
    apply(table, later)
    apply(restored, later)
    assert_same_tables(restored, table, T0 + look)
    assert restored.export_state() == table.export_state()


@settings(max_examples=200, deadline=None)
@given(script=ops, later=ops, big=st.integers(2, 8), data=st.data())
def test_property_smaller_window_keeps_the_newest_and_equals_a_table_run_with_it(script, later, big, data):
    small = data.draw(st.integers(1, big - 1))
    wide = LatencyTable(TableConfig(window_samples=big, fail_after=2))
    narrow = LatencyTable(TableConfig(window_samples=small, fail_after=2))
    apply(wide, script)
    apply(narrow, script)
    shrunk = LatencyTable(TableConfig(window_samples=small, fail_after=2))
    shrunk.restore_state(wide.export_state())
    assert_same_tables(shrunk, narrow, T0 + 40)
    apply(shrunk, later)
    apply(narrow, later)
    assert_same_tables(shrunk, narrow, T0 + 40)


def test_wrapped_ring_rebuilds_its_sorted_window_in_arrival_order():
    # Ring [0.0, -0.0, 5.0] with its oldest at 1: arrival order -0.0, 5.0, 0.0; equal RTTs must keep that order.
    table = LatencyTable(TableConfig(window_samples=3, stale_after_intervals=1e9))
    for i, value in enumerate([0.0, -0.0, 5.0, 0.0]):
        table.add_sample(KEY, ok(value), T0 + i)
    restored = LatencyTable(TableConfig(window_samples=3, stale_after_intervals=1e9))
    restored.restore_state(table.export_state())
    assert same_float(restored.snapshot(T0 + 3).get(*KEY).min_ms, -0.0)
    assert_same_tables(restored, table, T0 + 3)
    for i, value in enumerate([-0.0, 0.0, 1.0]):  # the zeros leave in the order they came
        table.add_sample(KEY, ok(value), T0 + 4 + i)
        restored.add_sample(KEY, ok(value), T0 + 4 + i)
        assert_same_tables(restored, table, T0 + 4 + i)


def test_larger_window_starts_from_what_was_kept_and_appends():
    small = LatencyTable(TableConfig(window_samples=3, stale_after_intervals=1e9))
    for i, value in enumerate([1.0, 2.0, 3.0, 4.0, 5.0]):  # the ring wraps: it holds 3, 4, 5, oldest at next_out 2
        small.add_sample(KEY, ok(value), T0 + i)
    grown = LatencyTable(TableConfig(window_samples=5, stale_after_intervals=1e9))
    grown.restore_state(small.export_state())
    for i, value in enumerate([0.5, 9.0, 10.0]):
        grown.add_sample(KEY, ok(value), T0 + 5 + i)
    kept = [5.0, 0.5, 9.0, 10.0] + [4.0]  # the newest 5 of 3, 4, 5, 0.5, 9, 10
    row = grown.snapshot(T0 + 8).get(*KEY)
    assert (row.min_ms, row.p50_ms, row.p95_ms) == (0.5, percentile(sorted(kept), 50), percentile(sorted(kept), 95))
    assert row.samples == 8 and row.loss == 0.0


def test_keep_filters_rows_and_replaces_rows_of_the_same_key():
    table = LatencyTable()
    for key in KEYS:
        table.add_sample(key, ok(10.0), T0)
    target = LatencyTable()
    target.add_sample(KEYS[0], ok(99.0), T0)  # replaced by the restored row of the same key
    restored = target.restore_state(table.export_state(), keep=lambda key: key.group == "a")
    assert restored == 3
    snap = target.snapshot(T0)
    assert sorted(snap.rows) == sorted(k for k in KEYS if k.group == "a")
    assert snap.get(*KEYS[0]).min_ms == 10.0 and snap.get(*KEYS[0]).samples == 1


def test_big_endian_export_restores_the_same():
    table = LatencyTable(TableConfig(window_samples=4))
    for i, value in enumerate([3.0, 1.0, 2.0, 7.5, 0.25]):
        table.add_sample(KEY, ok(value), T0 + i)
    state = table.export_state()
    rows = []
    for row in state["rows"]:
        ring = array("d", row[14])
        ring.byteswap()
        rows.append((*row[:14], ring.tobytes(), row[15]))
    other = "big" if sys.byteorder == "little" else "little"
    restored = LatencyTable(TableConfig(window_samples=4))
    restored.restore_state({**state, "byteorder": other, "rows": rows})
    assert_same_tables(restored, table, T0 + 4)


def _row_with(**changes) -> tuple:
    """A valid exported row (4 RTTs, one loss, up) with some fields changed."""
    table = LatencyTable(TableConfig(window_samples=4))
    for i, value in enumerate([10.0, None, 12.0, 11.0, 13.0]):
        table.add_sample(KEY, lost() if value is None else ok(value), T0 + i)
    table.add_round(KEY, 0.0, T0 + 4)
    fields = table.export_state()["fields"]
    row = list(table.export_state()["rows"][0])
    row[0] = "other"  # a key of its own, so that it can follow GOOD
    for name, value in changes.items():
        row[fields.index(name)] = value
    return tuple(row)


GOOD = _row_with(group="eu")
NAN_RTT = array("d", [10.0, math.nan, 12.0, 11.0]).tobytes()


@pytest.mark.parametrize(
    ("state", "message"),
    [
        pytest.param({"format": 2, "window_samples": 4, "byteorder": sys.byteorder, "rows": []},
                     "format: unsupported state format 2", id="format"),
        pytest.param({"format": 1, "window_samples": 0, "byteorder": sys.byteorder, "rows": []},
                     "window_samples: expected an int >= 1", id="window-samples"),
        pytest.param({"format": 1, "window_samples": 4, "byteorder": "middle", "rows": []},
                     "byteorder: expected", id="byteorder"),
        pytest.param({"format": 1, "window_samples": 4, "byteorder": sys.byteorder, "rows": 7},
                     "rows: expected a sequence", id="rows-not-a-list"),
        pytest.param([GOOD[:5]], "rows[1].fields: expected a sequence of 16", id="short-row"),
        pytest.param([_row_with(group="")], "group, region and path must be non-empty", id="empty-group"),
        pytest.param([GOOD], "rows[1] (eu, eu-west-1, direct).group: the same", id="duplicate-key"),
        pytest.param([_row_with(state="stale")], ".state: expected one of ['down', 'unknown', 'up']", id="stale"),
        pytest.param([_row_with(state="sideways")], "rows[1] (other, eu-west-1, direct).state: expected one of",
                     id="state"),
        pytest.param([_row_with(samples=-1)], ".samples: expected an int >= 0, got -1", id="negative"),
        pytest.param([_row_with(samples=2.0)], ".samples: expected an int >= 0, got 2.0", id="float-count"),
        pytest.param([_row_with(lost=9)], ".lost: more lost (9) than samples (5)", id="lost"),
        pytest.param([_row_with(fail_run=1, good_run=1)], ".good_run: fail_run (1) and good_run (1)", id="runs"),
        pytest.param([_row_with(state="unknown")], ".good_run: an unknown row has had no good round",
                     id="unknown-good"),
        pytest.param([_row_with(loss_bits=1 << 9)], ".loss_bits: more outcomes than", id="bits-wide"),
        pytest.param([_row_with(loss_bits=0b11)], ".loss_bits: more losses in the window than lost (1)", id="bits"),
        pytest.param([_row_with(updated_at=None)], ".updated_at: missing on a row", id="updated-at"),
        pytest.param([_row_with(ewma_at="now")], ".ewma_at: expected a number", id="ewma-at"),
        pytest.param([_row_with(w_sum=math.nan)], ".w_sum: expected a number, got nan", id="nan-sum"),
        pytest.param([_row_with(jitter=-1.0)], ".jitter: must be >= 0", id="jitter"),
        pytest.param([_row_with(w_total=0.0)], ".w_total: must be finite and >= 1", id="w-total"),
        pytest.param([_row_with(window=[1.0, 2.0])], ".window: expected float64 bytes, got list", id="window-type"),
        pytest.param([_row_with(window=b"1234567")], ".window: 7 bytes is not a whole number", id="window-bytes"),
        pytest.param([_row_with(window=bytes(40))], ".window: 5 RTTs: more than window_samples", id="window-long"),
        pytest.param([_row_with(window=NAN_RTT)], ".window: an RTT is NaN", id="window-nan"),
        pytest.param([_row_with(next_out=4)], ".next_out: 4 points outside a full ring", id="next-out"),
    ],
)
def test_restore_refuses_bad_state_whole_and_names_the_field(state, message):
    if isinstance(state, list):
        state = {"format": 1, "window_samples": 4, "byteorder": sys.byteorder, "rows": [GOOD, *state]}
    table = LatencyTable(TableConfig(window_samples=4))
    table.add_sample(RowKey("x", "y", "z"), ok(1.0), T0)
    before = table.snapshot(T0).to_json()
    with pytest.raises(ValueError, match=re.escape(message)):
        table.restore_state(state)
    assert table.snapshot(T0).to_json() == before  # nothing restored half-way, not even the good first row


# -- the SQLite store -----------------------------------------------------------------------------------------------


def filled_table(rows: int = 12, window: int = 8) -> LatencyTable:
    """A table with varied rows: some down, some up, some unknown, windows full and wrapped."""
    table = LatencyTable(TableConfig(window_samples=window, fail_after=2, recover_after=3))
    for i in range(rows):
        key = RowKey(f"g{i % 3}", f"r{i // 3}", "direct" if i % 2 else "accelerator")
        for j in range(i + 3):
            table.add_sample(key, lost() if (i + j) % 5 == 0 else ok(10.0 + i + (j * 7919 % 13) / 10), T0 + j)
        if i % 4 == 0:
            for j in range(3):
                table.add_round(key, 1.0, T0 + i + j)  # down
        elif i % 4 == 1:
            table.add_round(key, 0.0, T0 + i)  # up
            table.add_round(key, 1.0, T0 + i + 1)  # one failure: fail_run 1, still up
    return table


def test_save_and_load_round_trip_with_wal_and_versions(tmp_path):
    table = filled_table()
    path = tmp_path / "table.db"
    with SnapshotStore(path) as store:
        saved = store.save(table, wall_time=T0 + 100, meta={"config_fingerprint": "abc123"})
        assert saved.rows == 12 and saved.problem is None and saved.data_bytes > 12 * 32
        conn = sqlite3.connect(path)
        try:
            pragma = {name: conn.execute(f"PRAGMA {name}").fetchone()[0]
                      for name in ("journal_mode", "application_id", "user_version", "page_size")}
            meta = dict(conn.execute("SELECT key, value FROM meta"))
        finally:
            conn.close()
    assert pragma == {"journal_mode": "wal", "application_id": APPLICATION_ID, "user_version": SCHEMA_VERSION,
                      "page_size": 65536}
    assert (meta["format"], meta["schema_version"], meta["rows"]) == ("1", str(SCHEMA_VERSION), "12")
    restored = LatencyTable(TableConfig(window_samples=8, fail_after=2, recover_after=3))
    result = SnapshotStore(path).load(restored, wall_time=T0 + 103.5)
    assert (result.restored, result.dropped, result.problem, result.set_aside) == (12, 0, None, None)
    assert (result.saved_at, result.age_s, dict(result.meta)) == (T0 + 100, 3.5, {"config_fingerprint": "abc123"})
    assert_same_tables(restored, table, T0 + 20)
    assert restored.export_state() == table.export_state()


@settings(max_examples=40, deadline=None)
@given(config=CONFIGS, first=ops, later=ops)
def test_property_round_trip_through_the_file_is_exact(config, first, later):
    table = LatencyTable(config)
    apply(table, first)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.db"
        with SnapshotStore(path) as store:
            store.save(table, wall_time=T0)
            store.save(table, wall_time=T0 + 1)  # a second save replaces the first whole
        restored = LatencyTable(config)
        result = SnapshotStore(path).load(restored, wall_time=T0 + 2)
    assert result.problem is None and result.restored == len(table.export_state()["rows"])
    assert restored.export_state() == table.export_state()
    apply(table, later)
    apply(restored, later)
    assert_same_tables(restored, table, T0 + 30)


def test_health_survives_and_staleness_applies_after_a_restart(tmp_path):
    config = TableConfig(window_samples=8, fail_after=2, recover_after=3, interval_s=1.0, stale_after_intervals=3)
    table = LatencyTable(config)
    down, up = RowKey("g", "r1", "direct"), RowKey("g", "r2", "direct")
    for t in range(3):
        table.add_sample(down, lost(), T0 + t)
        table.add_round(down, 1.0, T0 + t)
        table.add_sample(up, ok(20.0), T0 + t)
        table.add_round(up, 0.0, T0 + t)
    table.add_round(down, 0.0, T0 + 3)  # one good round of the three needed
    SnapshotStore(tmp_path / "t.db").save(table, wall_time=T0 + 3)

    later = LatencyTable(config)
    SnapshotStore(tmp_path / "t.db").load(later, wall_time=T0 + 60)
    assert {k[1]: r.health for k, r in later.snapshot(T0 + 3).rows.items()} == {"r1": "down", "r2": "up"}
    assert {r.health for r in later.snapshot(T0 + 60).rows.values()} == {HealthState.STALE}  # old rows are stale
    later.add_round(down, 0.0, T0 + 61)
    assert later.snapshot(T0 + 61).get(*down).health is HealthState.DOWN  # 2 of 3: the count was not reset
    later.add_round(down, 0.0, T0 + 62)
    assert later.snapshot(T0 + 62).get(*down).health is HealthState.UP


def test_load_keep_filter_and_smaller_window(tmp_path):
    table = filled_table(window=8)
    SnapshotStore(tmp_path / "t.db").save(table, wall_time=T0)
    narrow = LatencyTable(TableConfig(window_samples=3, fail_after=2, recover_after=3))
    result = SnapshotStore(tmp_path / "t.db").load(narrow, keep=lambda key: key.group != "g1", wall_time=T0)
    assert (result.restored, result.dropped, result.problem) == (8, 4, None)
    snap, original = narrow.snapshot(T0 + 5), table.snapshot(T0 + 5)
    assert {k.group for k in snap.rows} == {"g0", "g2"}
    fields = table.export_state()["fields"]
    for exported in table.export_state()["rows"]:
        row = dict(zip(fields, exported))
        key = RowKey(row["group"], row["region"], row["path"])
        if key.group == "g1":
            continue
        ring = array("d", row["window"])
        newest = (ring[row["next_out"]:] + ring[:row["next_out"]]).tolist()[-3:]  # arrival order, the newest 3
        got, was = snap.rows[key], original.rows[key]
        assert (got.min_ms, got.p50_ms) == (min(newest), percentile(sorted(newest), 50))
        assert (got.samples, got.health, got.ewma_ms) == (was.samples, was.health, was.ewma_ms)


def test_missing_or_empty_file_restores_nothing_without_a_problem(tmp_path):
    table = LatencyTable()
    assert SnapshotStore(tmp_path / "none.db").load(table).problem is None
    (tmp_path / "empty.db").write_bytes(b"")  # a first save cut short before it wrote anything
    result = SnapshotStore(tmp_path / "empty.db").load(table)
    assert (result.restored, result.problem, result.set_aside) == (0, None, None)
    assert (tmp_path / "empty.db").exists() and not table.snapshot(T0).rows
    SnapshotStore(tmp_path / "empty.db").save(filled_table(), wall_time=T0)  # the next save fills it
    assert SnapshotStore(tmp_path / "empty.db").load(table).restored == 12


def _close_into_file(path: Path) -> None:
    """Checkpoint any WAL into the main file, so byte-level damage hits the data."""
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def _sql(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        for statement in statements:
            conn.execute(statement)
    finally:
        conn.close()


def damage_text(path: Path) -> None:
    path.write_text("[probing]\ninterval = '1s'\n")


def damage_random(path: Path) -> None:
    path.write_bytes(b"SQLite format 3\0" + bytes(range(256)) * 40)


def damage_truncate_half(path: Path) -> None:
    _close_into_file(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def damage_truncate_header(path: Path) -> None:
    _close_into_file(path)
    path.write_bytes(path.read_bytes()[:60])


def damage_flip_rtt(path: Path) -> None:
    _close_into_file(path)
    data = bytearray(path.read_bytes())
    at = data.find(array("d", [MARK]).tobytes())
    assert at > 0
    data[at + 3] ^= 0x40
    path.write_bytes(bytes(data))


def damage_checksum(path: Path) -> None:
    _sql(path, "UPDATE rows SET samples = samples + 1 WHERE rowid = 2")


def damage_valid_checksum_bad_row(path: Path) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        cols = [c[1] for c in conn.execute("PRAGMA table_info(rows)")]
        record = dict(zip(cols, conn.execute("SELECT * FROM rows WHERE rowid = 3").fetchone()))
        record["state"] = "sideways"
        crc = _row_crc(*(record[c] for c in cols[:-1]))
        conn.execute("UPDATE rows SET state = 'sideways', crc = ? WHERE rowid = 3", (crc,))
    finally:
        conn.close()


def damage_wrong_types(path: Path) -> None:
    _sql(path, "UPDATE rows SET data = 'text' WHERE rowid = 1")


def damage_missing_row(path: Path) -> None:
    _sql(path, "DELETE FROM rows WHERE rowid = 4")


def damage_schema_version(path: Path) -> None:
    _sql(path, "PRAGMA user_version = 99")


def damage_format_version(path: Path) -> None:
    _sql(path, "UPDATE meta SET value = '2' WHERE key = 'format'")


def damage_meta(path: Path) -> None:
    _sql(path, "DELETE FROM meta WHERE key = 'saved_at'")


def damage_foreign(path: Path) -> None:
    path.unlink()
    _sql(path, "CREATE TABLE notes (body TEXT)", "INSERT INTO notes VALUES ('hello')")


def damage_no_rows_table(path: Path) -> None:
    _sql(path, "DROP TABLE rows")


MARK = 4321.123456789  # an RTT that appears once, so its bytes can be found in the file


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        pytest.param(damage_text, "file is not a database", id="not-sqlite"),
        pytest.param(damage_random, "file is not a database", id="garbage-after-header"),
        pytest.param(damage_truncate_half, "malformed", id="truncated"),
        pytest.param(damage_truncate_header, "database disk image is malformed", id="truncated-to-header"),
        pytest.param(damage_flip_rtt, "checksum mismatch", id="flipped-byte-in-an-rtt"),
        pytest.param(damage_checksum, "row 2 (g1, r0, direct): checksum mismatch", id="edited-row"),
        pytest.param(damage_valid_checksum_bad_row, "the table refused it: rows[2] (g2, r0, accelerator).state",
                     id="row-fails-validation"),
        pytest.param(damage_wrong_types, "row 1 (g0, r0, accelerator): loss_bits and data must be BLOBs",
                     id="wrong-column-type"),
        pytest.param(damage_missing_row, "11 rows where the save wrote 12", id="missing-row"),
        pytest.param(damage_schema_version, "incompatible schema version 99, this build reads version 1",
                     id="schema-version"),
        pytest.param(damage_format_version, "format: unsupported state format 2", id="format-version"),
        pytest.param(damage_meta, "meta: missing or malformed 'saved_at'", id="meta"),
        pytest.param(damage_foreign, "not a latency-router snapshot (application_id 0x0", id="foreign-sqlite"),
        pytest.param(damage_no_rows_table, "tables missing: rows", id="no-rows-table"),
    ],
)
def test_unusable_snapshot_is_set_aside_named_and_logged(tmp_path, caplog, damage, problem):
    path = tmp_path / "table.db"
    table = filled_table()
    table.add_sample(RowKey("g0", "r0", "accelerator"), ok(MARK), T0 + 30)
    with SnapshotStore(path) as store:
        store.save(table, wall_time=T0)
    damage(path)
    fresh = LatencyTable()
    with caplog.at_level(logging.WARNING, logger="latency_router.store"):
        result = SnapshotStore(path).load(fresh, wall_time=T0 + 86_400)
    assert result.problem is not None and problem in result.problem, result.problem
    assert str(path) in result.problem and "moved aside to" in result.problem
    assert result.restored == 0 and not fresh.snapshot(T0).rows  # nothing restored half-way
    assert result.set_aside == tmp_path / "table.db.corrupt-20231115T221320Z"
    assert result.set_aside.exists() and not path.exists()
    assert not Path(f"{path}-wal").exists() and not Path(f"{path}-shm").exists()
    assert any(problem in r.getMessage() and r.levelno == logging.WARNING for r in caplog.records)
    # The next save starts a fresh file, which loads.
    SnapshotStore(path).save(table, wall_time=T0 + 1)
    assert SnapshotStore(path).load(LatencyTable()).restored == 12


def test_wal_and_shm_go_aside_with_their_file_and_names_do_not_collide(tmp_path):
    path = tmp_path / "table.db"
    for _ in range(2):
        path.write_text("not a database")
        Path(f"{path}-wal").write_bytes(b"w" * 100)
        Path(f"{path}-shm").write_bytes(b"s" * 100)
        SnapshotStore(path).load(LatencyTable(), wall_time=T0)
    first = tmp_path / "table.db.corrupt-20231114T221320Z"
    second = tmp_path / "table.db.corrupt-20231114T221320Z-1"
    for aside in (first, second):
        assert aside.read_text() == "not a database"
        assert Path(f"{aside}-wal").read_bytes() == b"w" * 100 and Path(f"{aside}-shm").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        f"{a.name}{s}" for a in (first, second) for s in ("", "-wal", "-shm"))


def test_save_over_an_unusable_file_sets_it_aside_and_writes_afresh(tmp_path):
    path = tmp_path / "table.db"
    path.write_bytes(b"\x00garbage" * 1000)
    result = SnapshotStore(path).save(filled_table(), wall_time=T0)
    assert result.rows == 12 and result.set_aside is not None and result.set_aside.exists()
    assert "file is not a database" in result.problem and "before saving" in result.problem
    assert SnapshotStore(path).load(LatencyTable(), wall_time=T0).restored == 12


def test_a_path_that_cannot_be_opened_is_reported_and_left_alone(tmp_path):
    directory = tmp_path / "table.db"
    directory.mkdir()
    result = SnapshotStore(directory).load(LatencyTable())
    assert result.problem is not None and "cannot read the snapshot" in result.problem and result.set_aside is None
    assert directory.is_dir()
    with pytest.raises(StoreError, match=re.escape(str(tmp_path / "missing" / "t.db"))):
        SnapshotStore(tmp_path / "missing" / "t.db").save(filled_table(), wall_time=T0)


def test_store_refuses_bad_arguments_by_name(tmp_path):
    store = SnapshotStore(tmp_path / "t.db")
    with pytest.raises(ValueError, match="wall_time"):
        store.save(LatencyTable(), wall_time=math.nan)
    with pytest.raises(ValueError, match="meta"):
        store.save(LatencyTable(), wall_time=T0, meta={"when": object()})
    with pytest.raises(ValueError, match="wall_time"):
        store.load(LatencyTable(), wall_time=math.inf)
    assert not (tmp_path / "t.db").exists()


async def test_prepare_copies_the_state_so_a_write_in_a_thread_saves_that_instant(tmp_path):
    config = TableConfig(window_samples=8, fail_after=2, recover_after=3)
    table = filled_table()
    store = SnapshotStore(tmp_path / "t.db")
    want = table.export_state()
    prepared = store.prepare(table, wall_time=T0, meta={"seq": 1})
    for i in range(50):  # the table keeps changing after prepare, before and while the write runs
        table.add_sample(KEYS[i % len(KEYS)], ok(1.0 + i), T0 + 100 + i)
        table.add_round(RowKey("g0", "r0", "accelerator"), 0.0, T0 + 100 + i)
    assert table.export_state() != want
    result = await asyncio.wait_for(asyncio.to_thread(store.write, prepared), timeout=30)
    assert result.rows == 12 and result.export_s >= 0 and result.write_s > 0
    first = LatencyTable(config)
    SnapshotStore(tmp_path / "t.db").load(first, wall_time=T0)
    assert first.export_state() == want

    second = await asyncio.wait_for(store.save_async(table, wall_time=T0 + 200), timeout=30)
    assert second.rows == 12 + len(KEYS)
    store.close()
    now = LatencyTable(config)
    assert SnapshotStore(tmp_path / "t.db").load(now, wall_time=T0 + 201).age_s == 1.0
    assert now.export_state() == table.export_state()


# -- kill -9 -------------------------------------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import sys, time
    from latency_router.decider import LatencyTable, RowKey, TableConfig
    from latency_router.probes.base import LossReason, Sample
    from latency_router.store import SnapshotStore

    path, rows, interval = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    table = LatencyTable(TableConfig(window_samples=256, fail_after=2))
    keys = [RowKey(f"g{i % 50}", f"r{i // 50}", "direct") for i in range(rows)]
    store = SnapshotStore(path)
    for seq in range(1, 10_000):
        now = time.time()
        for i, key in enumerate(keys):
            for j in range(3):  # 3 samples a tick: samples == 3 * seq in every row of save number seq
                table.add_sample(key, Sample("t", "udp", now, rtt_ms=10.0 + (seq * 7 + i + j) % 17), now)
            table.add_round(key, 1.0 if i % 3 == 0 else 0.0, now)  # every third row goes down
        print("begin", seq, flush=True)
        store.save(table, wall_time=now, meta={"seq": seq})
        print("saved", seq, now, flush=True)
        time.sleep(interval)
    """
)


@pytest.mark.parametrize("moment", ["mid-write", "between-saves"])
def test_kill_9_loses_at_most_the_save_in_progress(tmp_path, moment):
    path, rows, interval = tmp_path / "table.db", 600, 0.1
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(path), str(rows), str(interval)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    last_saved = (0, 0.0)
    killed_at = None
    deadline = time.monotonic() + 60
    try:
        for _ in range(10_000):
            left = deadline - time.monotonic()
            assert left > 0, "the child did not save 4 times within 60 s"
            ready, _, _ = select.select([child.stdout], [], [], left)
            if not ready:
                continue
            line = child.stdout.readline()
            assert line, f"the child exited early: {child.stderr.read()[-2000:]}"
            word, seq, *rest = line.split()
            if word == "saved":
                last_saved = (int(seq), float(rest[0]))
            if last_saved[0] >= 4 and (moment == "mid-write" and word == "begin"
                                       or moment == "between-saves" and word == "saved"):
                if moment == "between-saves":
                    time.sleep(interval / 2)
                killed_at = time.time()
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait(timeout=10)
        child.stdout.close()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL and killed_at is not None
    assert Path(f"{path}-wal").exists()  # the writer's WAL was left behind: the load below recovers from it

    table = LatencyTable(TableConfig(window_samples=256, fail_after=2))
    result = SnapshotStore(path).load(table, wall_time=killed_at)
    assert result.problem is None and result.restored == rows
    seq = result.meta["seq"]
    # Every save the child reported is there; at most the one in progress when it died is missing or also there.
    assert seq in (last_saved[0], last_saved[0] + 1)
    assert result.saved_at >= last_saved[1]
    snap = table.snapshot(result.saved_at)
    assert {r.samples for r in snap.rows.values()} == {3 * seq}  # one save whole, not a mix of two
    down = {k for k, r in snap.rows.items() if r.health is HealthState.DOWN}
    assert down == {RowKey(f"g{i % 50}", f"r{i // 50}", "direct") for i in range(0, rows, 3)}  # health kept
    assert all(r.health is HealthState.UP for k, r in snap.rows.items() if k not in down)

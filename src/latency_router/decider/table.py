"""The latency table: per (group, region, path) statistics and health, published as immutable snapshots."""

from __future__ import annotations

import enum
import math
from array import array
from bisect import bisect_left, insort
from dataclasses import dataclass
from itertools import repeat
from operator import attrgetter, itemgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, NamedTuple, Sequence

from latency_router.gcpause import gc_paused
from latency_router.probes.base import Sample

if TYPE_CHECKING:
    from latency_router.probes.scheduler import Round


class RowKey(NamedTuple):
    """Which row: a client group, a region and one path to it."""

    group: str
    region: str
    path: str


class HealthState(enum.StrEnum):
    """What the table knows of a row: up, down, unknown (no rounds yet) or stale (no data lately)."""

    UP = "up"
    DOWN = "down"
    UNKNOWN = "unknown"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class TableConfig:
    """How the table smooths, windows and judges its rows."""

    ewma_tau_s: float = 10.0  # time constant of the time-decayed EWMA
    window_samples: int = 256  # RTTs (and outcomes) kept for percentiles, min and loss
    interval_s: float = 1.0  # the probing interval, the unit of staleness
    stale_after_intervals: float = 3.0  # K: no sample for K intervals makes a row stale
    fail_after: int = 3
    recover_after: int = 3
    loss_threshold: float = 0.5  # a round fails when its loss ratio is at least this
    unknown_healthy: bool = True  # what policies take an unknown row for

    def __post_init__(self) -> None:
        if not self.ewma_tau_s > 0:
            raise ValueError(f"ewma_tau_s must be > 0, got {self.ewma_tau_s}")
        if self.window_samples < 1:
            raise ValueError(f"window_samples must be >= 1, got {self.window_samples}")
        if not self.interval_s > 0 or not self.stale_after_intervals > 0:
            raise ValueError("interval_s and stale_after_intervals must be > 0")
        if self.fail_after < 1 or self.recover_after < 1:
            raise ValueError("fail_after and recover_after must be >= 1")
        if not 0.0 < self.loss_threshold <= 1.0:
            raise ValueError(f"loss_threshold must be within (0, 1], got {self.loss_threshold}")

    @classmethod
    def from_settings(cls, probing: Any, health: Any, table: Any = None, **overrides: Any) -> "TableConfig":
        """Build from the config's [probing], [health] and [table] sections (anything with the same attribute names)."""
        kw: dict[str, Any] = {
            "interval_s": probing.interval_s,
            "loss_threshold": probing.loss_threshold,
            "fail_after": health.fail_after,
            "recover_after": health.recover_after,
        }
        if table is not None:
            kw.update(
                ewma_tau_s=table.ewma_tau_s,
                window_samples=table.window,
                stale_after_intervals=float(table.stale_after),
                unknown_healthy=table.unknown_healthy,
            )
        kw.update(overrides)
        return cls(**kw)


class RowSnapshot(NamedTuple):
    """One row as it stood when the snapshot was taken; RTT fields are None until an RTT arrives."""

    group: str
    region: str
    path: str
    ewma_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    min_ms: float | None
    jitter_ms: float | None
    loss: float | None  # lost / sent over the window; None before any sample
    samples: int  # every sample ever added, lost ones included
    lost: int
    healthy: bool
    health: HealthState
    basis: str
    updated_at: float | None

    @property
    def key(self) -> RowKey:
        """The row's (group, region, path)."""
        return RowKey(self.group, self.region, self.path)

    def to_json(self) -> dict[str, Any]:
        """The row as GET /v1/table shows it."""
        return {
            "group": self.group,
            "region": self.region,
            "path": self.path,
            "ewma_ms": self.ewma_ms,
            "p50_ms": self.p50_ms,
            "p95_ms": self.p95_ms,
            "p99_ms": self.p99_ms,
            "min_ms": self.min_ms,
            "jitter_ms": self.jitter_ms,
            "loss": self.loss,
            "samples": self.samples,
            "healthy": self.healthy,
            "health": str(self.health),
            "basis": self.basis,
            "updated_at": self.updated_at,
        }


_EMPTY_GROUP: Mapping[tuple[str, str], RowSnapshot] = MappingProxyType({})


def _index_by_group(
    rows: Mapping[tuple[str, str, str], RowSnapshot],
) -> Mapping[str, Mapping[tuple[str, str], RowSnapshot]]:
    by_group: dict[str, dict[tuple[str, str], RowSnapshot]] = {}
    for (group, region, path), r in sorted(rows.items()):
        by_group.setdefault(group, {})[(region, path)] = r
    return MappingProxyType({g: MappingProxyType(m) for g, m in by_group.items()})


@dataclass(frozen=True, slots=True)
class TableSnapshot:
    """Every row at one instant; read-only, safe to share without locks."""

    taken_at: float
    rows: Mapping[tuple[str, str, str], RowSnapshot]
    # group -> (region, path) -> row, each group's rows in key order; built from `rows` when not given.
    by_group: Mapping[str, Mapping[tuple[str, str], RowSnapshot]] = None  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.by_group is None:
            object.__setattr__(self, "by_group", _index_by_group(self.rows))

    def get(self, group: str, region: str, path: str) -> RowSnapshot | None:
        """The row for (group, region, path), or None."""
        return self.rows.get((group, region, path))

    def group_rows(self, group: str) -> Mapping[tuple[str, str], RowSnapshot]:
        """The rows of one group keyed by (region, path), in key order; empty for an unknown group."""
        return self.by_group.get(group, _EMPTY_GROUP)

    def for_group(self, group: str) -> tuple[RowSnapshot, ...]:
        """The rows of one group, in key order."""
        return tuple(self.by_group.get(group, _EMPTY_GROUP).values())

    def to_json(self) -> dict[str, Any]:
        """The table as GET /v1/table shows it."""
        return {"rows": [r.to_json() for _, r in sorted(self.rows.items())]}


_DATA = 3  # a row's data array: w_sum, w_total, jitter, then the window's RTTs in ascending order

_PercentileIndex = tuple[Callable[[Sequence[float]], tuple[float, ...]], float, float, float]


def _percentile_index(n: int) -> _PercentileIndex:
    """For n RTTs: a getter of the data array's scalars, p50/p95/p99 neighbours and minimum, and the 3 fractions."""
    # Ranks and fractions are computed exactly as probes.stats.percentile computes them.
    ranks: list[int] = []
    fractions: list[float] = []
    for q in (50, 95, 99):
        pos = (n - 1) * q / 100.0
        lo = math.floor(pos)
        ranks += (_DATA + lo, _DATA + min(lo + 1, n - 1))
        fractions.append(pos - lo)
    return itemgetter(0, 1, 2, *ranks, _DATA), fractions[0], fractions[1], fractions[2]


class _Row:
    """Mutable per-row state; only the table touches it."""

    # What a snapshot reads lives in few objects: a snapshot of many rows is bound by memory reads.
    __slots__ = (
        "updated_at", "state", "data", "samples", "lost", "loss_bits", "key", "snap", "place", "group",
        "window", "next_out", "ewma_at", "fail_run", "good_run",
    )

    def __init__(self, key: RowKey, place: tuple[str, str], group: "_Group") -> None:
        self.updated_at: float | None = None
        self.state = HealthState.UNKNOWN
        # EWMA = w_sum/w_total, a time-decayed mean (alpha = 1 - exp(-dt/tau) at regular spacing dt).
        # data: w_sum, w_total, RFC 3550 jitter, then the last window_samples RTTs in ascending order.
        self.data = array("d", (0.0, 0.0, 0.0))
        self.samples = 0
        self.lost = 0
        self.loss_bits = 0  # bit i set: the i-th latest sample was lost (i < window_samples)
        self.key = key
        self.snap: RowSnapshot | None = None  # None: changed since the last snapshot, and listed in group.dirty
        self.place = place
        self.group = group
        self.window = array("d")  # the same RTTs in arrival order; once full a ring, next_out the oldest
        self.next_out = 0
        self.ewma_at = 0.0
        self.fail_run = 0
        self.good_run = 0


class _Group:
    """Mutable per-group state: its rows and the mapping last published for it."""

    __slots__ = ("rows", "places", "dirty", "reshaped", "mapping", "view", "fresh_bound", "stale_bound")

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], _Row] = {}  # by (region, path), in key order after each snapshot
        self.places: tuple[tuple[str, str], ...] = ()
        self.dirty: list[_Row] = []  # rows changed since the last snapshot
        self.reshaped = False  # rows were added since the last snapshot
        self.mapping: dict[tuple[str, str], RowSnapshot] = {}
        self.view: Mapping[tuple[str, str], RowSnapshot] = _EMPTY_GROUP
        # Staleness grows with age: no row published fresh was updated before fresh_bound, no stale one after
        # stale_bound, so no row's staleness flips while now - fresh_bound <= K and now - stale_bound > K.
        self.fresh_bound: float | None = None
        self.stale_bound: float | None = None


_new_tuple = tuple.__new__
_updated_at = attrgetter("updated_at")
_key_of = attrgetter("key")
_place_of = attrgetter("place")
_snap_of = attrgetter("snap")
_HEALTH = RowSnapshot._fields.index("health")


class LatencyTable:
    """Per (group, region, path) statistics and health, fed by samples and rounds, read through snapshots."""

    def __init__(self, config: TableConfig | None = None) -> None:
        self.config = config or TableConfig()
        self._rows: dict[RowKey, _Row] = {}
        self._groups: dict[str, _Group] = {}
        self._places: dict[tuple[str, str], tuple[str, str]] = {}
        self._stale_after_s = self.config.stale_after_intervals * self.config.interval_s
        self._window = self.config.window_samples
        self._loss_mask = (1 << self._window) - 1
        self._pct_index: dict[int, _PercentileIndex] = {}
        self._new_keys: list[RowKey] = []
        self._flat: dict[tuple[str, str, str], RowSnapshot] = {}
        self._index: dict[str, Mapping[tuple[str, str], RowSnapshot]] = {}
        self._last: TableSnapshot | None = None

    def _row(self, key: tuple[str, str, str]) -> _Row:
        row = self._rows.get(key)  # type: ignore[call-overload]
        if row is None:
            key = RowKey(*key)
            group = self._groups.get(key.group)
            if group is None:
                group = self._groups[key.group] = _Group()
            place = (key.region, key.path)
            place = self._places.setdefault(place, place)  # one tuple per (region, path): fewer objects to read
            row = self._rows[key] = _Row(key, place, group)
            group.rows[row.place] = row
            group.dirty.append(row)
            group.reshaped = True
            self._new_keys.append(key)
        return row

    def ensure(self, key: tuple[str, str, str]) -> None:
        """Create the row if it is missing, so it shows as unknown before any data."""
        self._row(key)

    def add_sample(self, key: tuple[str, str, str], sample: Sample, now: float) -> None:
        """Fold one probe result into its row; a lost sample counts towards loss and nothing else."""
        row = self._rows.get(key)  # type: ignore[call-overload]
        if row is None:
            row = self._row(key)
        elif row.snap is not None:
            row.snap = None
            row.group.dirty.append(row)
        row.samples += 1
        row.updated_at = now
        rtt = sample.rtt_ms
        if rtt is None:
            row.loss_bits = ((row.loss_bits << 1) | 1) & self._loss_mask
            row.lost += 1
            return
        if row.loss_bits:
            row.loss_bits = (row.loss_bits << 1) & self._loss_mask
        data = row.data
        window = row.window
        last = window[row.next_out - 1] if window else None  # the newest RTT so far
        if len(window) < self._window:
            window.append(rtt)
        else:
            # Equal values keep arrival order in the sorted part, so the leftmost equal one is the one leaving.
            out = row.next_out
            del data[bisect_left(data, window[out], _DATA)]
            window[out] = rtt
            out += 1
            row.next_out = 0 if out == self._window else out
        insort(data, rtt, _DATA)
        dt = now - row.ewma_at
        w_total = data[1]
        if w_total and dt > 0:
            decay = math.exp(-dt / self.config.ewma_tau_s)
            data[0] = data[0] * decay + rtt
            data[1] = w_total * decay + 1.0
        else:
            data[0] = data[0] + rtt
            data[1] = w_total + 1.0
        row.ewma_at = now
        if last is not None:
            # RFC 3550 section 6.4.1: J += (|D| - J) / 16, D the difference of consecutive transit times.
            j = data[2]
            data[2] = j + (abs(rtt - last) - j) / 16.0

    def add_round(self, key: tuple[str, str, str], round_loss_ratio: float, now: float) -> None:
        """Step the row's health machine by one round: it fails when its loss ratio reaches loss_threshold."""
        row = self._row(key)
        if row.snap is not None:
            row.snap = None
            row.group.dirty.append(row)
        cfg = self.config
        row.updated_at = now
        if round_loss_ratio >= cfg.loss_threshold:
            row.fail_run += 1
            row.good_run = 0
            if row.state is not HealthState.DOWN and row.fail_run >= cfg.fail_after:
                row.state = HealthState.DOWN
        else:
            row.good_run += 1
            row.fail_run = 0
            # A fresh row that answers is usable at once; a down one must prove itself recover_after times.
            if row.state is HealthState.UNKNOWN or (
                row.state is HealthState.DOWN and row.good_run >= cfg.recover_after
            ):
                row.state = HealthState.UP

    def add_round_result(self, key: tuple[str, str, str], rnd: "Round", now: float) -> None:
        """Fold a scheduler Round: each of its samples, then the round itself."""
        for s in rnd.samples:
            self.add_sample(key, s, now)
        self.add_round(key, rnd.loss_ratio, now)

    def snapshot(self, now: float) -> TableSnapshot:
        """An immutable view of every row at `now`; rows and groups unchanged since the last call are reused."""
        with gc_paused():
            return self._snapshot(now)

    def _snapshot(self, now: float) -> TableSnapshot:
        stale_after_s = self._stale_after_s
        flat: dict[tuple[str, str, str], RowSnapshot] | None = None
        views: list[tuple[str, Mapping[tuple[str, str], RowSnapshot]]] = []
        for name, group in self._groups.items():
            fresh_bound = group.fresh_bound
            stale_bound = group.stale_bound
            timely = (fresh_bound is None or not now - fresh_bound > stale_after_s) and (
                stale_bound is None or now - stale_bound > stale_after_s
            )
            if timely and not group.dirty:
                continue
            built, snaps = self._refresh(group, now, timely)
            if not built:
                continue
            if flat is None:
                flat = self._flat.copy()
                if self._new_keys:
                    flat.update(dict.fromkeys(self._new_keys))  # placeholders keep the rows in the order they came
                    self._new_keys = []
            flat.update(zip(map(_key_of, built), snaps))  # now, while these rows are still in the CPU's caches
            views.append((name, group.view))
        last = self._last
        if flat is None and last is not None:
            self._last = TableSnapshot(taken_at=now, rows=last.rows, by_group=last.by_group)
            return self._last
        if flat is None:
            flat = {}
        index = self._index.copy()
        index.update(views)
        self._flat = flat
        self._index = index
        self._last = TableSnapshot(taken_at=now, rows=MappingProxyType(flat), by_group=MappingProxyType(index))
        return self._last

    def _refresh(self, group: _Group, now: float, timely: bool) -> tuple[list[_Row], list[RowSnapshot]]:
        """Rebuild the group's changed rows and its view (looking at dirty rows only when `timely`); returns them."""
        stale_after_s = self._stale_after_s
        reshaped = group.reshaped
        full = not timely or reshaped
        if reshaped:
            group.rows = dict(sorted(group.rows.items()))
            group.places = tuple(group.rows)
            group.reshaped = False
        every = len(group.dirty) == len(group.rows)
        rows = list(group.rows.values()) if full or every else group.dirty
        group.dirty = []
        seen = list(map(_updated_at, rows))
        stales: Iterable[bool] | None = None
        # Usually every row looked at is fresh (or every one stale): decide that once, with min and max in C.
        if None not in seen:
            oldest, newest = min(seen), max(seen)
            if not now - oldest > stale_after_s:
                stales, fresh_bound, stale_bound = repeat(False), oldest, None
            elif now - newest > stale_after_s:
                stales, fresh_bound, stale_bound = repeat(True), None, newest
        if stales is None:
            stales = [u is not None and now - u > stale_after_s for u in seen]
            fresh = [u for u, stale in zip(seen, stales) if u is not None and not stale]
            old = [u for u, stale in zip(seen, stales) if stale]
            fresh_bound = min(fresh) if fresh else None
            stale_bound = max(old) if old else None
        if not (full or every):
            # Only some rows were looked at: widen the bounds, never narrow them.
            if group.fresh_bound is not None and (fresh_bound is None or group.fresh_bound < fresh_bound):
                fresh_bound = group.fresh_bound
            if group.stale_bound is not None and (stale_bound is None or group.stale_bound > stale_bound):
                stale_bound = group.stale_bound
        group.fresh_bound = fresh_bound
        group.stale_bound = stale_bound
        if full:
            # Rows whose data and staleness are both unchanged keep their snapshot.
            health = _HEALTH
            stale_state = HealthState.STALE
            pairs = [
                (row, stale)
                for row, stale in zip(rows, stales)
                if row.snap is None or (row.snap[health] is stale_state) is not stale
            ]
            if len(pairs) < len(rows):
                every = False
                rows = [row for row, _ in pairs]
                stales = [stale for _, stale in pairs]
        if not rows:
            return rows, []
        snaps = self._build(rows, stales)
        if every:
            mapping = dict(zip(group.places, snaps))
        elif reshaped:
            mapping = dict(zip(group.places, map(_snap_of, group.rows.values())))  # new rows take their place in order
        else:
            mapping = group.mapping.copy()
            mapping.update(zip(map(_place_of, rows), snaps))
        group.mapping = mapping
        group.view = MappingProxyType(mapping)
        return rows, snaps

    def _build(self, rows: list[_Row], stales: Iterable[bool]) -> list[RowSnapshot]:
        """Fresh snapshots of the rows (and store each in its row); stales says which rows are stale."""
        unknown_healthy = self.config.unknown_healthy
        window = self._window
        pct_index = self._pct_index
        new, row_snapshot = _new_tuple, RowSnapshot
        up, unknown, stale_state = HealthState.UP, HealthState.UNKNOWN, HealthState.STALE
        snaps: list[RowSnapshot] = []
        append = snaps.append
        # One pass, everything inline: this loop runs once per changed row of the whole table.
        for row, stale in zip(rows, stales):
            if stale:
                health = stale_state
                healthy = False
            else:
                health = row.state
                healthy = health is up or (health is unknown and unknown_healthy)
            data = row.data
            samples = row.samples
            lost = row.lost
            n = len(data) - _DATA
            if n:
                try:
                    pick, f50, f95, f99 = pct_index[n]
                except KeyError:
                    pick, f50, f95, f99 = pct_index[n] = _percentile_index(n)
                w_sum, w_total, jitter, a50, b50, a95, b95, a99, b99, low = pick(data)
                # The interpolation and clamp of probes.stats.percentile, step for step, so values are equal.
                p50 = a50 + (b50 - a50) * f50
                if p50 < a50:
                    p50 = a50
                elif p50 > b50:
                    p50 = b50
                p95 = a95 + (b95 - a95) * f95
                if p95 < a95:
                    p95 = a95
                elif p95 > b95:
                    p95 = b95
                p99 = a99 + (b99 - a99) * f99
                if p99 < a99:
                    p99 = a99
                elif p99 > b99:
                    p99 = b99
                ewma = w_sum / w_total
                if samples - lost < 2:
                    jitter = None  # jitter needs two RTTs
            else:
                ewma = p50 = p95 = p99 = low = jitter = None
            bits = row.loss_bits
            if bits:
                loss = bits.bit_count() / (samples if samples < window else window)
            else:
                loss = 0 / samples if samples else None  # the same 0.0 that lost/sent gives
            group_name, region, path = row.key
            snap = row.snap = new(row_snapshot, (
                group_name, region, path, ewma, p50, p95, p99, low, jitter, loss,
                samples, lost, healthy, health, "measured", row.updated_at,
            ))
            append(snap)
        return snaps

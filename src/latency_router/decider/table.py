"""The latency table: per (group, region, path) statistics and health, published as immutable snapshots."""

from __future__ import annotations

import enum
import math
import sys
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


# export_state(): the format number and each row's fields, in order. window: the RTT ring as float64 bytes in the
# exporting machine's byte order (array("d").tobytes()); next_out: the index of the oldest RTT once the ring is full.
_STATE_FORMAT = 1
_STATE_FIELDS = (
    "group", "region", "path", "state", "fail_run", "good_run", "samples", "lost", "loss_bits",
    "updated_at", "ewma_at", "w_sum", "w_total", "jitter", "window", "next_out",
)


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

    def health(self, key: tuple[str, str, str]) -> HealthState | None:
        """The row's health machine state now (up, down or unknown; staleness is a snapshot's judgement), or None."""
        row = self._rows.get(key)  # type: ignore[call-overload]
        return None if row is None else row.state

    def export_state(self) -> dict[str, Any]:
        """Every row's whole state as plain versioned data, rows in the order they came; restore_state takes it back."""
        rows: list[tuple[Any, ...]] = []
        append = rows.append
        with gc_paused():
            for row in self._rows.values():
                data = row.data
                append((
                    *row.key, row.state._value_, row.fail_run, row.good_run, row.samples, row.lost, row.loss_bits,
                    row.updated_at, row.ewma_at, data[0], data[1], data[2], row.window.tobytes(), row.next_out,
                ))
        return {
            "format": _STATE_FORMAT, "fields": _STATE_FIELDS, "window_samples": self._window,
            "byteorder": sys.byteorder, "rows": rows,
        }

    def restore_state(self, state: Mapping[str, Any], *, keep: Callable[[RowKey], bool] | None = None) -> int:
        """Rebuild rows from an export_state() result (those `keep` accepts), all or nothing; ValueError names a field.

        A row of the same key is replaced. A smaller window_samples keeps the newest RTTs and outcomes, which is exactly
        what this table would hold had it seen the same samples; a larger one starts with what was kept.
        """
        with gc_paused():
            parsed = _parse_state(state, self._window, keep)
            for key, values, window, next_out, ordered in parsed:
                row = self._rows.get(key)
                if row is None:
                    row = self._row(key)
                elif row.snap is not None:
                    row.snap = None
                    row.group.dirty.append(row)
                (row.state, row.fail_run, row.good_run, row.samples, row.lost, row.loss_bits,
                 row.updated_at, row.ewma_at, w_sum, w_total, jitter) = values
                row.loss_bits &= self._loss_mask
                row.window = window
                row.next_out = next_out
                row.data = data = array("d", (w_sum, w_total, jitter))
                data.fromlist(sorted(ordered))  # stable: equal RTTs keep arrival order, as insort does
        return len(parsed)

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


def _parse_state(
    state: Mapping[str, Any], window_now: int, keep: Callable[[RowKey], bool] | None
) -> list[tuple[RowKey, tuple[Any, ...], array, int, array]]:
    """Check an export_state() result whole; each kept row's key, scalars, ring, next_out and RTTs in arrival order."""
    if not isinstance(state, Mapping):
        raise ValueError(f"state: expected a mapping, got {type(state).__name__}")
    if state.get("format") != _STATE_FORMAT:
        raise ValueError(f"format: unsupported state format {state.get('format')!r}, this table reads {_STATE_FORMAT}")
    if tuple(state.get("fields", _STATE_FIELDS)) != _STATE_FIELDS:
        raise ValueError(f"fields: expected {list(_STATE_FIELDS)}, got {list(state['fields'])}")
    window_then = state.get("window_samples")
    if type(window_then) is not int or window_then < 1:
        raise ValueError(f"window_samples: expected an int >= 1, got {window_then!r}")
    byteorder = state.get("byteorder")
    if byteorder not in ("little", "big"):
        raise ValueError(f"byteorder: expected 'little' or 'big', got {byteorder!r}")
    swap = byteorder != sys.byteorder
    rows = state.get("rows")
    if isinstance(rows, (str, bytes)) or not isinstance(rows, Iterable):
        raise ValueError(f"rows: expected a sequence of rows, got {type(rows).__name__}")
    out: list[tuple[RowKey, tuple[Any, ...], array, int, array]] = []
    seen: set[RowKey] = set()
    restorable = {h.value: h for h in (HealthState.UP, HealthState.DOWN, HealthState.UNKNOWN)}  # stale is computed
    unknown = HealthState.UNKNOWN
    i = 0
    fields: Any = ()

    def bad(field: str, problem: str) -> ValueError:
        where = f"rows[{i}]" if len(fields) < 3 else f"rows[{i}] ({fields[0]}, {fields[1]}, {fields[2]})"
        return ValueError(f"{where}.{field}: {problem}")

    for i, fields in enumerate(rows):  # noqa: B007 - bad() reads i and fields
        if not isinstance(fields, Sequence) or len(fields) != len(_STATE_FIELDS):
            fields = ()
            raise bad("fields", f"expected a sequence of {len(_STATE_FIELDS)}")
        (group, region, path, state_name, fail_run, good_run, samples, lost, loss_bits,
         updated_at, ewma_at, w_sum, w_total, jitter, window, next_out) = fields
        if not (type(group) is str and type(region) is str and type(path) is str and group and region and path):
            raise bad("group", "group, region and path must be non-empty strings")
        key = RowKey(group, region, path)
        if key in seen:
            raise bad("group", "the same (group, region, path) appears twice")
        seen.add(key)
        health = restorable.get(state_name) if type(state_name) is str else None
        if health is None:
            raise bad("state", f"expected one of {sorted(restorable)}, got {state_name!r:.80}")
        for name, number in zip(("fail_run", "good_run", "samples", "lost", "loss_bits", "next_out"),
                                (fail_run, good_run, samples, lost, loss_bits, next_out)):
            if type(number) is not int or number < 0:
                raise bad(name, f"expected an int >= 0, got {number!r:.80}")
        if fail_run and good_run:
            raise bad("good_run", f"fail_run ({fail_run}) and good_run ({good_run}) cannot both run")
        if good_run and health is unknown:
            raise bad("good_run", f"an unknown row has had no good round, got {good_run}")
        if lost > samples:
            raise bad("lost", f"more lost ({lost}) than samples ({samples})")
        if loss_bits.bit_length() > samples or loss_bits.bit_length() > window_then:
            raise bad("loss_bits", f"more outcomes than min(samples, window_samples) = {min(samples, window_then)}")
        if loss_bits.bit_count() > lost:
            raise bad("loss_bits", f"more losses in the window than lost ({lost})")
        if updated_at is None:
            if samples or fail_run or good_run or health is not unknown:
                raise bad("updated_at", "missing on a row that has samples or rounds")
        elif type(updated_at) is not float and type(updated_at) is not int or updated_at != updated_at:
            raise bad("updated_at", f"expected a number or None, got {updated_at!r:.80}")
        for name, number in zip(("ewma_at", "w_sum", "w_total", "jitter"), (ewma_at, w_sum, w_total, jitter)):
            if type(number) is not float and type(number) is not int or number != number:
                raise bad(name, f"expected a number, got {number!r:.80}")
        if not jitter >= 0:
            raise bad("jitter", f"must be >= 0, got {jitter}")
        if type(window) is not bytes and type(window) is not bytearray:
            raise bad("window", f"expected float64 bytes, got {type(window).__name__}")
        if len(window) % 8:
            raise bad("window", f"{len(window)} bytes is not a whole number of float64 RTTs")
        ring = array("d")
        ring.frombytes(window)
        if swap:
            ring.byteswap()
        n = len(ring)
        if n > window_then or n > samples - lost:
            raise bad("window", f"{n} RTTs: more than window_samples ({window_then}) or samples - lost")
        if next_out and (n < window_then or next_out >= n):
            raise bad("next_out", f"{next_out} points outside a full ring of {window_then}, holding {n} RTTs")
        if not n and (w_sum or w_total or jitter):
            raise bad("w_total", "EWMA weights or jitter without any RTT")
        if n and not 1.0 <= w_total < math.inf:
            raise bad("w_total", f"must be finite and >= 1 once RTTs exist, got {w_total}")
        total = sum(ring)
        if total != total and any(map(math.isnan, ring)):
            raise bad("window", "an RTT is NaN")
        if keep is not None and not keep(key):
            continue
        if next_out:
            ordered = ring[next_out:] + ring[:next_out]
        else:
            ordered = ring
        if n > window_now:
            ring = ordered = ordered[n - window_now:]  # the newest window_now
            next_out = 0
        elif next_out and n != window_now:
            ring, next_out = ordered, 0  # a ring that grew appends after its newest RTT
        out.append((key, (health, fail_run, good_run, samples, lost, loss_bits, float(updated_at)
                          if updated_at is not None else None, float(ewma_at), float(w_sum), float(w_total),
                          float(jitter)), ring, next_out, ordered))
    return out

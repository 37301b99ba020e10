"""The latency table: per (group, region, path) statistics and health, published as immutable snapshots."""

from __future__ import annotations

import enum
import math
import sys
from array import array
from bisect import bisect_left, insort
from dataclasses import dataclass
from operator import itemgetter
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np

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
_NAN = math.nan
# Health as the table's columns hold it; STALE exists only in snapshots (it depends on the snapshot's instant).
_UP, _DOWN, _UNKNOWN, _STALE, _NONE = 0, 1, 2, 3, 4
_CODE = {HealthState.UP: _UP, HealthState.DOWN: _DOWN, HealthState.UNKNOWN: _UNKNOWN}
HEALTH_OF_CODE: tuple[Any, ...] = (HealthState.UP, HealthState.DOWN, HealthState.UNKNOWN, HealthState.STALE, "none")
# The RowSnapshot fields a snapshot keeps as float columns (NaN for None), in this order.
METRIC_FIELDS = ("ewma_ms", "p50_ms", "p95_ms", "p99_ms", "min_ms")


def _index_by_group(
    rows: Mapping[tuple[str, str, str], RowSnapshot],
) -> Mapping[str, Mapping[tuple[str, str], RowSnapshot]]:
    by_group: dict[str, dict[tuple[str, str], RowSnapshot]] = {}
    for (group, region, path), r in sorted(rows.items()):
        by_group.setdefault(group, {})[(region, path)] = r
    return MappingProxyType({g: MappingProxyType(m) for g, m in by_group.items()})


class Columns:
    """A table snapshot as columns: every row's figures and health in numpy arrays, one position per row.

    Built by LatencyTable.snapshot() with a few array copies, whatever the table's size; a RowSnapshot is made from
    them only when someone reads that row. Immutable: nothing here changes after construction (row objects are cached).
    """

    __slots__ = ("n", "keys", "index", "places", "tokens", "metrics", "jitter", "samples", "lost", "wlost",
                 "state", "updated", "stale_mask", "healthy", "code", "window", "_lists", "_made")

    def __init__(self, n: int, keys: list[RowKey], index: Mapping[tuple[str, str, str], int],
                 places: Mapping[str, Mapping[tuple[str, str], int]], tokens: Mapping[str, object],
                 metrics: dict[str, np.ndarray], jitter: np.ndarray, samples: np.ndarray, lost: np.ndarray,
                 wlost: np.ndarray, state: np.ndarray, updated: np.ndarray, stale: np.ndarray,
                 unknown_healthy: bool, window: int) -> None:
        self.n = n
        self.keys = keys  # the table's list of keys in the order they came: positions >= n are not in this snapshot
        self.index = index  # the table's key -> position (shared, append-only: a position >= n is not here)
        self.places = places  # group -> (region, path) -> position, each group's rows in key order
        self.tokens = tokens  # group -> an object that changes whenever one of the group's rows does
        self.metrics = metrics  # field name (ewma_ms, p50_ms, ...) -> float column, NaN where the row has no RTT
        self.jitter, self.samples, self.lost, self.wlost = jitter, samples, lost, wlost
        self.state, self.updated, self.stale_mask = state, updated, stale
        self.window = window
        # health as the policies read it: stale beats the health machine; unknown counts as configured
        self.healthy = ~stale & ((state == _UP) | ((state == _UNKNOWN) & unknown_healthy))
        self.code = np.where(stale, _STALE, state).astype(np.int8)
        self._lists: list[list[Any]] | None = None
        self._made: dict[int, RowSnapshot] = {}

    def row(self, i: int) -> RowSnapshot:
        """The RowSnapshot at position i (made once, then cached)."""
        made = self._made.get(i)
        if made is not None:
            return made
        lists = self._lists
        if lists is None:
            lists = self._lists = self._as_lists()
        group, region, path = self.keys[i]
        ewma, p50, p95, p99, low, jitter, loss, samples, lost, healthy, code, updated = (c[i] for c in lists)
        made = self._made[i] = _new_tuple(RowSnapshot, (
            group, region, path, _opt(ewma), _opt(p50), _opt(p95), _opt(p99), _opt(low), _opt(jitter), _opt(loss),
            samples, lost, healthy, HEALTH_OF_CODE[code], "measured", _opt(updated),
        ))
        return made

    def _as_lists(self) -> list[list[Any]]:
        samples = self.samples
        with np.errstate(invalid="ignore", divide="ignore"):
            loss = np.where(samples > 0, self.wlost / np.minimum(samples, self.window), _NAN)
        m = self.metrics
        # jitter needs two RTTs, and a window that holds one (a restored row may have samples and an empty window)
        jitter = np.where((samples - self.lost >= 2) & ~np.isnan(m["ewma_ms"]), self.jitter, _NAN)
        return [m["ewma_ms"].tolist(), m["p50_ms"].tolist(), m["p95_ms"].tolist(), m["p99_ms"].tolist(),
                m["min_ms"].tolist(), jitter.tolist(), loss.tolist(), samples.tolist(), self.lost.tolist(),
                self.healthy.tolist(), self.code.tolist(), self.updated.tolist()]


def _opt(x: Any) -> Any:
    return None if x != x else x  # NaN stands for None


class _Rows(Mapping[tuple[str, str, str], RowSnapshot]):
    """A column snapshot's rows by (group, region, path), in the order they came, made on reading."""

    __slots__ = ("_c",)

    def __init__(self, columns: Columns) -> None:
        self._c = columns

    def __getitem__(self, key: tuple[str, str, str]) -> RowSnapshot:
        c = self._c
        i = c.index.get(key)
        if i is None or i >= c.n:
            raise KeyError(key)
        return c.row(i)

    def __iter__(self) -> Iterator[RowKey]:
        return iter(self._c.keys[: self._c.n])

    def __len__(self) -> int:
        return self._c.n


class _GroupRows(Mapping[tuple[str, str], RowSnapshot]):
    """One group's rows of a column snapshot by (region, path), in key order, made on reading."""

    __slots__ = ("_c", "_places")

    def __init__(self, columns: Columns, places: Mapping[tuple[str, str], int]) -> None:
        self._c = columns
        self._places = places

    def __getitem__(self, place: tuple[str, str]) -> RowSnapshot:
        return self._c.row(self._places[place])

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(self._places)

    def __len__(self) -> int:
        return len(self._places)


class _ByGroup(Mapping[str, Mapping[tuple[str, str], RowSnapshot]]):
    __slots__ = ("_c",)

    def __init__(self, columns: Columns) -> None:
        self._c = columns

    def __getitem__(self, group: str) -> Mapping[tuple[str, str], RowSnapshot]:
        return _GroupRows(self._c, self._c.places[group])

    def __iter__(self) -> Iterator[str]:
        return iter(self._c.places)

    def __len__(self) -> int:
        return len(self._c.places)


@dataclass(frozen=True, slots=True)
class TableSnapshot:
    """Every row at one instant; read-only, safe to share without locks."""

    taken_at: float
    rows: Mapping[tuple[str, str, str], RowSnapshot] = None  # type: ignore[assignment]
    # group -> (region, path) -> row, each group's rows in key order; built from `rows` when not given.
    by_group: Mapping[str, Mapping[tuple[str, str], RowSnapshot]] = None  # type: ignore[assignment]
    # the same rows as columns (what LatencyTable.snapshot() makes); None for a snapshot built from rows
    columns: Columns | None = None

    def __post_init__(self) -> None:
        if self.columns is not None:
            if self.rows is None:
                object.__setattr__(self, "rows", _Rows(self.columns))
            if self.by_group is None:
                object.__setattr__(self, "by_group", _ByGroup(self.columns))
        if self.rows is None:
            object.__setattr__(self, "rows", MappingProxyType({}))
        if self.by_group is None:
            object.__setattr__(self, "by_group", _index_by_group(self.rows))

    def get(self, group: str, region: str, path: str) -> RowSnapshot | None:
        """The row for (group, region, path), or None."""
        return self.rows.get((group, region, path))

    def group_rows(self, group: str) -> Mapping[tuple[str, str], RowSnapshot]:
        """The rows of one group keyed by (region, path), in key order; empty for an unknown group."""
        return self.by_group.get(group, _EMPTY_GROUP)

    def group_token(self, group: str) -> object:
        """An object that is the same (`is`) in two snapshots only if none of the group's rows changed in between."""
        if self.columns is not None:
            return self.columns.tokens.get(group)
        return self.by_group.get(group)

    def for_group(self, group: str) -> tuple[RowSnapshot, ...]:
        """The rows of one group, in key order."""
        return tuple(self.by_group.get(group, _EMPTY_GROUP).values())

    def to_json(self) -> dict[str, Any]:
        """The table as GET /v1/table shows it."""
        return {"rows": [r.to_json() for _, r in sorted(self.rows.items())]}


_DATA = 3  # a row's data array: w_sum, w_total, jitter, then the window's RTTs in ascending order

_PercentileIndex = tuple[Callable[[Sequence[float]], tuple[float, ...]], float, float, float]


def _percentile_index(n: int) -> _PercentileIndex:
    """For n RTTs: a getter of the p50/p95/p99 neighbours and the minimum in the data array, and the 3 fractions."""
    # Ranks and fractions are computed exactly as probes.stats.percentile computes them.
    ranks: list[int] = []
    fractions: list[float] = []
    for q in (50, 95, 99):
        pos = (n - 1) * q / 100.0
        lo = math.floor(pos)
        ranks += (_DATA + lo, _DATA + min(lo + 1, n - 1))
        fractions.append(pos - lo)
    return itemgetter(*ranks, _DATA), fractions[0], fractions[1], fractions[2]


class _Row:
    """Mutable per-row state; only the table touches it. What snapshots show is also kept in the table's columns."""

    __slots__ = (
        "i", "updated_at", "state", "data", "samples", "lost", "loss_bits", "key", "place", "group",
        "window", "next_out", "ewma_at", "fail_run", "good_run",
    )

    def __init__(self, i: int, key: RowKey, place: tuple[str, str], group: "_Group") -> None:
        self.i = i  # the row's position in the table's columns
        self.updated_at: float | None = None
        self.state = HealthState.UNKNOWN
        # EWMA = w_sum/w_total, a time-decayed mean (alpha = 1 - exp(-dt/tau) at regular spacing dt).
        # data: w_sum, w_total, RFC 3550 jitter, then the last window_samples RTTs in ascending order.
        self.data = array("d", (0.0, 0.0, 0.0))
        self.samples = 0
        self.lost = 0
        self.loss_bits = 0  # bit i set: the i-th latest sample was lost (i < window_samples)
        self.key = key
        self.place = place
        self.group = group
        self.window = array("d")  # the same RTTs in arrival order; once full a ring, next_out the oldest
        self.next_out = 0
        self.ewma_at = 0.0
        self.fail_run = 0
        self.good_run = 0


class _Group:
    """Mutable per-group state: its rows, and whether they changed since the last snapshot."""

    __slots__ = ("name", "gid", "rows", "dirty", "reshaped")

    def __init__(self, name: str, gid: int) -> None:
        self.name = name
        self.gid = gid
        self.rows: dict[tuple[str, str], _Row] = {}  # by (region, path)
        self.dirty = False  # a row changed since the last snapshot (the group is then listed in the table's _changed)
        self.reshaped = False  # rows were added since the last snapshot


_new_tuple = tuple.__new__


# export_state(): the format number and each row's fields, in order. window: the RTT ring as float64 bytes in the
# exporting machine's byte order (array("d").tobytes()); next_out: the index of the oldest RTT once the ring is full.
_STATE_FORMAT = 1
_STATE_FIELDS = (
    "group", "region", "path", "state", "fail_run", "good_run", "samples", "lost", "loss_bits",
    "updated_at", "ewma_at", "w_sum", "w_total", "jitter", "window", "next_out",
)


def _column(buffer: array, n: int, dtype: Any) -> np.ndarray:
    """A copy of the first n items of an array('d'/'q'/'b') column (the buffer is released at once)."""
    return np.frombuffer(buffer, dtype, n).copy() if n else np.zeros(0, dtype)


class LatencyTable:
    """Per (group, region, path) statistics and health, fed by samples and rounds, read through snapshots.

    Each row keeps its own state (for the arithmetic), and writes what a snapshot shows into the table's columns as it
    changes: a snapshot is then a copy of the columns, whatever the number of rows.
    """

    def __init__(self, config: TableConfig | None = None) -> None:
        self.config = config or TableConfig()
        self._rows: dict[RowKey, _Row] = {}
        self._groups: dict[str, _Group] = {}
        self._places: dict[tuple[str, str], tuple[str, str]] = {}
        self._stale_after_s = self.config.stale_after_intervals * self.config.interval_s
        self._window = self.config.window_samples
        self._loss_mask = (1 << self._window) - 1
        self._pct_index: dict[int, _PercentileIndex] = {}
        self._keys: list[RowKey] = []
        self._index: dict[tuple[str, str, str], int] = {}
        self._changed: list[_Group] = []
        # the columns, one item per row: metrics NaN until the first RTT, updated NaN until the first sample
        self._ewma, self._p50, self._p95, self._p99, self._min = (array("d") for _ in range(5))
        self._jitter = array("d")
        self._updated = array("d")
        self._samples, self._lost, self._wlost = array("q"), array("q"), array("q")
        self._state = array("b")
        self._gid = array("q")
        self._tokens: dict[str, object] = {}
        self._group_places: dict[str, Mapping[tuple[str, str], int]] = {}
        self._last: TableSnapshot | None = None

    def _row(self, key: tuple[str, str, str]) -> _Row:
        row = self._rows.get(key)  # type: ignore[call-overload]
        if row is None:
            key = RowKey(*key)
            group = self._groups.get(key.group)
            if group is None:
                group = self._groups[key.group] = _Group(key.group, len(self._groups))
            place = (key.region, key.path)
            place = self._places.setdefault(place, place)  # one tuple per (region, path): fewer objects
            i = len(self._keys)
            row = self._rows[key] = _Row(i, key, place, group)
            group.rows[place] = row
            group.reshaped = True
            self._touch(group)
            self._keys.append(key)
            self._index[key] = i
            for col in (self._ewma, self._p50, self._p95, self._p99, self._min, self._updated):
                col.append(_NAN)
            self._jitter.append(0.0)
            self._samples.append(0)
            self._lost.append(0)
            self._wlost.append(0)
            self._state.append(_UNKNOWN)
            self._gid.append(group.gid)
        return row

    def _touch(self, group: _Group) -> None:
        if not group.dirty:
            group.dirty = True
            self._changed.append(group)

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
                row = self._row(key)
                self._touch(row.group)
                (row.state, row.fail_run, row.good_run, row.samples, row.lost, row.loss_bits,
                 row.updated_at, row.ewma_at, w_sum, w_total, jitter) = values
                row.loss_bits &= self._loss_mask
                row.window = window
                row.next_out = next_out
                row.data = data = array("d", (w_sum, w_total, jitter))
                data.fromlist(sorted(ordered))  # stable: equal RTTs keep arrival order, as insort does
                self._sync(row)
        return len(parsed)

    def _sync(self, row: _Row) -> None:
        """Write every column of the row from its state."""
        i = row.i
        self._samples[i] = row.samples
        self._lost[i] = row.lost
        self._wlost[i] = row.loss_bits.bit_count()
        self._updated[i] = _NAN if row.updated_at is None else row.updated_at
        self._state[i] = _CODE[row.state]
        data = row.data
        self._jitter[i] = data[2]
        if len(data) > _DATA:
            self._ewma[i] = data[0] / data[1]
            self._percentiles(row)
        else:
            self._ewma[i] = self._p50[i] = self._p95[i] = self._p99[i] = self._min[i] = _NAN

    def _percentiles(self, row: _Row) -> None:
        """Write the row's p50, p95, p99 and minimum columns from its sorted window (at least one RTT)."""
        data = row.data
        n = len(data) - _DATA
        try:
            pick, f50, f95, f99 = self._pct_index[n]
        except KeyError:
            pick, f50, f95, f99 = self._pct_index[n] = _percentile_index(n)
        a50, b50, a95, b95, a99, b99, low = pick(data)
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
        i = row.i
        self._p50[i] = p50
        self._p95[i] = p95
        self._p99[i] = p99
        self._min[i] = low

    def add_sample(self, key: tuple[str, str, str], sample: Sample, now: float) -> None:
        """Fold one probe result into its row; a lost sample counts towards loss and nothing else."""
        row = self._rows.get(key)  # type: ignore[call-overload]
        if row is None:
            row = self._row(key)
        group = row.group
        if not group.dirty:
            group.dirty = True
            self._changed.append(group)
        i = row.i
        row.samples = self._samples[i] = row.samples + 1
        row.updated_at = self._updated[i] = now
        rtt = sample.rtt_ms
        if rtt is None:
            bits = row.loss_bits
            if bits >> (self._window - 1):
                self._wlost[i] -= 1  # the oldest outcome, a loss, leaves the window
            row.loss_bits = ((bits << 1) | 1) & self._loss_mask
            self._wlost[i] += 1
            row.lost = self._lost[i] = row.lost + 1
            return
        bits = row.loss_bits
        if bits:
            if bits >> (self._window - 1):
                self._wlost[i] -= 1
            row.loss_bits = (bits << 1) & self._loss_mask
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
            w_sum = data[0] = data[0] * decay + rtt
            w_total = data[1] = w_total * decay + 1.0
        else:
            w_sum = data[0] = data[0] + rtt
            w_total = data[1] = w_total + 1.0
        self._ewma[i] = w_sum / w_total
        row.ewma_at = now
        if last is not None:
            # RFC 3550 section 6.4.1: J += (|D| - J) / 16, D the difference of consecutive transit times.
            j = data[2]
            self._jitter[i] = data[2] = j + (abs(rtt - last) - j) / 16.0
        self._percentiles(row)

    def add_round(self, key: tuple[str, str, str], round_loss_ratio: float, now: float) -> None:
        """Step the row's health machine by one round: it fails when its loss ratio reaches loss_threshold."""
        row = self._row(key)
        group = row.group
        if not group.dirty:
            group.dirty = True
            self._changed.append(group)
        cfg = self.config
        row.updated_at = self._updated[row.i] = now
        state = row.state
        if round_loss_ratio >= cfg.loss_threshold:
            row.fail_run += 1
            row.good_run = 0
            if state is not HealthState.DOWN and row.fail_run >= cfg.fail_after:
                row.state = HealthState.DOWN
                self._state[row.i] = _DOWN
        else:
            row.good_run += 1
            row.fail_run = 0
            # A fresh row that answers is usable at once; a down one must prove itself recover_after times.
            if state is HealthState.UNKNOWN or (state is HealthState.DOWN and row.good_run >= cfg.recover_after):
                row.state = HealthState.UP
                self._state[row.i] = _UP

    def add_round_result(self, key: tuple[str, str, str], rnd: "Round", now: float) -> None:
        """Fold a scheduler Round: each of its samples, then the round itself."""
        for s in rnd.samples:
            self.add_sample(key, s, now)
        self.add_round(key, rnd.loss_ratio, now)

    def snapshot(self, now: float) -> TableSnapshot:
        """An immutable view of every row at `now`: copies of the columns; unchanged ones are reused."""
        with gc_paused():
            return self._snapshot(now)

    def _snapshot(self, now: float) -> TableSnapshot:
        n = len(self._keys)
        updated = _column(self._updated, n, np.float64)
        with np.errstate(invalid="ignore"):
            stale = (now - updated) > self._stale_after_s  # NaN (never updated) is never stale
        last = self._last
        changed, self._changed = self._changed, []
        flipped: Iterable[int] = ()
        if last is not None:
            before = last.columns.stale_mask  # type: ignore[union-attr]
            m = len(before)
            flips = np.flatnonzero(stale[:m] != before)
            if not changed and not len(flips):
                self._last = TableSnapshot(taken_at=now, rows=last.rows, by_group=last.by_group, columns=last.columns)
                return self._last
            if len(flips):
                flipped = np.unique(_column(self._gid, n, np.int64)[flips]).tolist()
        groups = list(self._groups.values())
        touched = {g.gid: g for g in changed}
        for gid in flipped:
            touched.setdefault(gid, groups[gid])
        if touched:
            tokens = self._tokens = self._tokens.copy()
            reshaped = [g for g in touched.values() if g.reshaped]
            if reshaped:
                places = self._group_places = self._group_places.copy()
                for g in reshaped:
                    # (region, path) -> position, in key order
                    places[g.name] = MappingProxyType({p: g.rows[p].i for p in sorted(g.rows)})
                    g.reshaped = False
            for g in touched.values():
                g.dirty = False
                tokens[g.name] = object()
        metrics = {
            "ewma_ms": _column(self._ewma, n, np.float64),
            "p50_ms": _column(self._p50, n, np.float64),
            "p95_ms": _column(self._p95, n, np.float64),
            "p99_ms": _column(self._p99, n, np.float64),
            "min_ms": _column(self._min, n, np.float64),
        }
        columns = Columns(
            n, self._keys, self._index, self._group_places, self._tokens, metrics,
            _column(self._jitter, n, np.float64), _column(self._samples, n, np.int64),
            _column(self._lost, n, np.int64), _column(self._wlost, n, np.int64),
            _column(self._state, n, np.int8), updated, stale, self.config.unknown_healthy, self._window,
        )
        self._last = TableSnapshot(taken_at=now, columns=columns)
        return self._last


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

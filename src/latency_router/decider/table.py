"""The latency table: per (group, region, path) statistics and health, published as immutable snapshots."""

from __future__ import annotations

import enum
import math
from collections import deque
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, NamedTuple

from latency_router.probes.base import Sample
from latency_router.probes.stats import percentile

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
    def from_settings(cls, probing: Any, health: Any, **overrides: Any) -> "TableConfig":
        """Build from the config's [probing] and [health] sections (anything with the same attribute names)."""
        kw: dict[str, Any] = {
            "interval_s": probing.interval_s,
            "loss_threshold": probing.loss_threshold,
            "fail_after": health.fail_after,
            "recover_after": health.recover_after,
        }
        kw.update(overrides)
        return cls(**kw)


@dataclass(frozen=True, slots=True)
class RowSnapshot:
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


@dataclass(frozen=True, slots=True)
class TableSnapshot:
    """Every row at one instant; read-only, safe to share without locks."""

    taken_at: float
    rows: Mapping[tuple[str, str, str], RowSnapshot]

    def get(self, group: str, region: str, path: str) -> RowSnapshot | None:
        """The row for (group, region, path), or None."""
        return self.rows.get((group, region, path))

    def for_group(self, group: str) -> tuple[RowSnapshot, ...]:
        """The rows of one group, in key order."""
        return tuple(r for k, r in sorted(self.rows.items()) if k[0] == group)

    def to_json(self) -> dict[str, Any]:
        """The table as GET /v1/table shows it."""
        return {"rows": [r.to_json() for _, r in sorted(self.rows.items())]}


class _Row:
    """Mutable per-row state; only the table touches it."""

    __slots__ = (
        "key", "rtts", "outcomes", "lost_in_window", "w_sum", "w_total", "ewma_at", "jitter", "last_rtt",
        "samples", "lost", "updated_at", "state", "fail_run", "good_run", "version", "cache",
    )

    def __init__(self, key: RowKey, window: int) -> None:
        self.key = key
        self.rtts: deque[float] = deque(maxlen=window)
        self.outcomes: deque[int] = deque(maxlen=window)  # 1 for a lost sample, 0 for an RTT
        self.lost_in_window = 0
        # The EWMA is a decayed weighted mean sum(w*x)/sum(w): samples at the same instant weigh alike,
        # and with regular spacing dt it equals the classic EWMA with alpha = 1 - exp(-dt/tau).
        self.w_sum = 0.0
        self.w_total = 0.0
        self.ewma_at = 0.0
        self.jitter: float | None = None
        self.last_rtt: float | None = None
        self.samples = 0
        self.lost = 0
        self.updated_at: float | None = None
        self.state = HealthState.UNKNOWN
        self.fail_run = 0
        self.good_run = 0
        self.version = 0
        self.cache: tuple[int, bool, RowSnapshot] | None = None


class LatencyTable:
    """Per (group, region, path) statistics and health, fed by samples and rounds, read through snapshots."""

    def __init__(self, config: TableConfig | None = None) -> None:
        self.config = config or TableConfig()
        self._rows: dict[RowKey, _Row] = {}
        self._stale_after_s = self.config.stale_after_intervals * self.config.interval_s
        self._last: TableSnapshot | None = None
        self._last_parts: tuple[tuple[int, bool], ...] = ()

    def _row(self, key: tuple[str, str, str]) -> _Row:
        row = self._rows.get(key)  # type: ignore[call-overload]
        if row is None:
            row = self._rows[RowKey(*key)] = _Row(RowKey(*key), self.config.window_samples)
        return row

    def ensure(self, key: tuple[str, str, str]) -> None:
        """Create the row if it is missing, so it shows as unknown before any data."""
        self._row(key)

    def add_sample(self, key: tuple[str, str, str], sample: Sample, now: float) -> None:
        """Fold one probe result into its row; a lost sample counts towards loss and nothing else."""
        row = self._rows.get(key)  # type: ignore[call-overload]
        if row is None:
            row = self._row(key)
        outcomes = row.outcomes
        if len(outcomes) == outcomes.maxlen:
            row.lost_in_window -= outcomes[0]
        row.samples += 1
        row.updated_at = now
        row.version += 1
        rtt = sample.rtt_ms
        if rtt is None:
            outcomes.append(1)
            row.lost_in_window += 1
            row.lost += 1
            return
        outcomes.append(0)
        row.rtts.append(rtt)
        dt = now - row.ewma_at
        if row.w_total and dt > 0:
            decay = math.exp(-dt / self.config.ewma_tau_s)
            row.w_sum = row.w_sum * decay + rtt
            row.w_total = row.w_total * decay + 1.0
        else:
            row.w_sum += rtt
            row.w_total += 1.0
        row.ewma_at = now
        last = row.last_rtt
        if last is not None:
            # RFC 3550 section 6.4.1: J += (|D| - J) / 16, D the difference of consecutive transit times.
            j = row.jitter or 0.0
            row.jitter = j + (abs(rtt - last) - j) / 16.0
        row.last_rtt = rtt

    def add_round(self, key: tuple[str, str, str], round_loss_ratio: float, now: float) -> None:
        """Step the row's health machine by one round: it fails when its loss ratio reaches loss_threshold."""
        row = self._row(key)
        cfg = self.config
        row.updated_at = now
        row.version += 1
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

    def _is_stale(self, row: _Row, now: float) -> bool:
        return row.updated_at is not None and now - row.updated_at > self._stale_after_s

    def _build(self, row: _Row, stale: bool) -> RowSnapshot:
        cfg = self.config
        health = HealthState.STALE if stale else row.state
        if health is HealthState.UNKNOWN:
            healthy = cfg.unknown_healthy
        else:
            healthy = health is HealthState.UP
        ordered = sorted(row.rtts)
        have = bool(ordered)
        return RowSnapshot(
            group=row.key.group,
            region=row.key.region,
            path=row.key.path,
            ewma_ms=row.w_sum / row.w_total if row.w_total else None,
            p50_ms=percentile(ordered, 50) if have else None,
            p95_ms=percentile(ordered, 95) if have else None,
            p99_ms=percentile(ordered, 99) if have else None,
            min_ms=ordered[0] if have else None,
            jitter_ms=row.jitter,
            loss=row.lost_in_window / len(row.outcomes) if row.outcomes else None,
            samples=row.samples,
            lost=row.lost,
            healthy=healthy,
            health=health,
            basis="measured",
            updated_at=row.updated_at,
        )

    def snapshot(self, now: float) -> TableSnapshot:
        """An immutable view of every row at `now`; rows unchanged since the last call are reused, not rebuilt."""
        parts = []
        built: dict[tuple[str, str, str], RowSnapshot] = {}
        for key, row in self._rows.items():
            stale = self._is_stale(row, now)
            cache = row.cache
            if cache is None or cache[0] != row.version or cache[1] != stale:
                cache = row.cache = (row.version, stale, self._build(row, stale))
            built[key] = cache[2]
            parts.append((row.version, stale))
        signature = tuple(parts)
        if self._last is not None and signature == self._last_parts:
            rows = self._last.rows  # nothing changed: share the read-only mapping
        else:
            rows = MappingProxyType(built)
        self._last = TableSnapshot(taken_at=now, rows=rows)
        self._last_parts = signature
        return self._last

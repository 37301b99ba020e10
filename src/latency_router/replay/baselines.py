"""Baselines that replay scores beside the config's services: nearest, round-robin and a Route 53-like latency record set."""

from __future__ import annotations

import math
from collections.abc import Sequence

from latency_router.config.models import Config, GroupConfig
from latency_router.decider.table import TableSnapshot
from latency_router.decider.plan import great_circle_km
from latency_router.replay.metrics import Choice

PRIMARY_PATH = "direct"


def primary_path(config: Config, region: str) -> str:
    """The region's 'direct' path, or its first path when it has none of that name."""
    paths = [p.name for p in config.region(region).paths]
    return PRIMARY_PATH if PRIMARY_PATH in paths else paths[0]


class Nearest:
    """Static geolocation: the region nearest to the group's lat/lon by great-circle distance, direct path, health ignored."""

    name = "nearest"

    def __init__(self, config: Config, groups: Sequence[GroupConfig], regions: Sequence[str]) -> None:
        self.covered = tuple(g.lat is not None and g.lon is not None for g in groups)
        located = [config.region(r) for r in regions]
        fixed: list[Choice] = []
        for g in groups:
            if g.lat is None or g.lon is None:
                fixed.append(None)
                continue
            best = min(located, key=lambda r: great_circle_km(g.lat, g.lon, r.lat, r.lon))  # type: ignore[arg-type]
            fixed.append((best.name, primary_path(config, best.name)))
        self._fixed = tuple(fixed)

    def choose(self, snapshot: TableSnapshot, now: float) -> tuple[Choice, ...]:
        return self._fixed


class RoundRobin:
    """The regions in turn, one step per evaluation, each group offset by its index; direct path, health ignored."""

    name = "round-robin"

    def __init__(self, config: Config, groups: Sequence[GroupConfig], regions: Sequence[str]) -> None:
        self._choices = tuple((r, primary_path(config, r)) for r in regions)
        self._n_groups = len(groups)
        self._turn = 0
        self.covered = (True,) * len(groups)

    def choose(self, snapshot: TableSnapshot, now: float) -> tuple[Choice, ...]:
        n = len(self._choices)
        out = tuple(self._choices[(self._turn + gi) % n] for gi in range(self._n_groups))
        self._turn += 1
        return out


class Route53Like:
    """Route 53 latency records: rank regions by a latency table refreshed every refresh_s, filter on live health, direct path.

    Models Route 53's latency routing (latency data that AWS refreshes on its own, slow schedule, here the table's EWMA
    as it stood at the last refresh), its health checks (the table's live health: fail_after failed rounds), its rule
    that when every record is unhealthy all are answered as if healthy, and its lack of any hysteresis or accelerator.
    """

    name = "route53-like"

    def __init__(self, config: Config, groups: Sequence[GroupConfig], regions: Sequence[str], refresh_s: float) -> None:
        self._groups = tuple(g.name for g in groups)
        self._keys = tuple((r, primary_path(config, r)) for r in regions)
        self._refresh_s = refresh_s
        self._ranking: TableSnapshot | None = None
        self._ranked_at = -math.inf
        self.covered = (True,) * len(groups)

    def choose(self, snapshot: TableSnapshot, now: float) -> tuple[Choice, ...]:
        if now - self._ranked_at >= self._refresh_s:
            self._ranking, self._ranked_at = snapshot, now
        ranking = self._ranking.rows if self._ranking is not None else {}
        live = snapshot.rows
        out: list[Choice] = []
        for g in self._groups:
            scored = []
            for i, (region, path) in enumerate(self._keys):
                key = (g, region, path)
                old, now_row = ranking.get(key), live.get(key)
                rtt = old.ewma_ms if old is not None and old.ewma_ms is not None else None
                if rtt is None and now_row is not None:
                    rtt = now_row.ewma_ms  # a record measured only since the last refresh
                healthy = now_row.healthy if now_row is not None else True  # no health check: always healthy
                scored.append((not healthy, rtt if rtt is not None else math.inf, i))
            if not scored:
                out.append(None)
                continue
            healthy_any = [s for s in scored if not s[0]]
            # all unhealthy: Route 53 answers as though every record were healthy
            best = min(healthy_any or [(False, s[1], s[2]) for s in scored])
            out.append(self._keys[best[2]])
        return tuple(out)

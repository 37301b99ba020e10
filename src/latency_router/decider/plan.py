"""A service's config compiled for one group: what every step of its chain needs, worked out once rather than per decision."""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Callable, Mapping

from latency_router.decider.steps import SORTERS, Step

if TYPE_CHECKING:
    from latency_router.config.models import Config, GroupConfig, ServiceConfig

EARTH_RADIUS_KM = 6371.0
DEFAULT_COUNTS = {"multivalue": 8, "sticky": 2}  # Route 53 multivalue answers up to 8 records


@dataclass(frozen=True, slots=True)
class RegionPlan:
    """A region of the service: its paths as (name, answer), the primary (free) path first."""

    name: str
    paths: tuple[tuple[str, str], ...]
    primary_key: tuple[str, str] = ("", "")  # (region, primary path): the row key, built once
    others: tuple[tuple[str, str, tuple[str, str]], ...] = ()  # (path, answer, row key) of the other paths

    def __post_init__(self) -> None:
        object.__setattr__(self, "primary_key", (self.name, self.paths[0][0]))
        object.__setattr__(self, "others", tuple((p, a, (self.name, p)) for p, a in self.paths[1:]))


@dataclass(frozen=True, slots=True)
class Plan:
    """Everything one (service, group) decision reads besides the table snapshot, the clock and the policy state."""

    service: str
    group: str
    policy: str
    steps: tuple[Step, ...]
    regions: tuple[RegionPlan, ...]
    order: Mapping[str, int]  # region -> position in the service's region list (the last tie-break)
    primary: Mapping[str, str]  # region -> its primary (free) path
    answers: Mapping[tuple[str, str], str]  # (region, path) -> the answer it hands out
    forced_path: str | None  # a path every candidate must use, or None for the measured choice
    allowed: frozenset[str] | None  # the regions the group's fence allows, None when no fence matches
    geo_order: tuple[str, ...]  # geolocation: the group's mapped region, then the default ('*')
    geo_mapped: str | None  # the group's own geolocation entry, if it has one
    priority_rank: Mapping[str, int]
    distance_km: Mapping[str, float]  # great-circle distance scaled by Route 53's bias; empty without a location
    weights: Mapping[str, float]
    count: int  # answers a multivalue or sticky selector gives
    metric: str  # the RowSnapshot field the ranking reads
    metric_of: Callable[[Any], float | None]
    latency_ranked: bool  # hysteresis compares RTTs (latency sorter) rather than ranks
    margin_ms: float
    margin_ratio: float
    evaluations: int
    dwell_s: float
    path_margin_ms: float
    path_margin_ratio: float
    ttl: int
    all_down: str
    fallback: tuple[str, ...]
    row_groups: tuple[str, ...]  # where the group's rows are: under its own name, else its vantage's
    drained: frozenset[str] = frozenset()  # regions an operator took out of every decision (admin drain)


def great_circle_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Haversine distance in km between two points in degrees."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    a = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(a)))


def compile_plan(config: "Config", service: "ServiceConfig", group: "GroupConfig") -> Plan:
    """Work out, once, what the service's chain needs for this group."""
    steps = service.steps
    names = service.regions or tuple(r.name for r in config.regions)
    regions = []
    for name in names:
        region = config.region(name)
        paths = [(p.name, p.answer) for p in region.paths]
        if service.path != "auto":
            paths = [p for p in paths if p[0] == service.path]
        else:
            paths.sort(key=lambda p: p[0] != service.primary_path)  # stable: the primary first, then config order
        regions.append(RegionPlan(name, tuple(paths)))
    allowed = next((frozenset(f.regions) for f in service.fences if f.matches(group)), None)
    geo = service.geolocation
    geo_order = tuple(dict.fromkeys(r for r in (geo.get(group.name), geo.get("*")) if r is not None))
    priority = service.priority or names
    distance: dict[str, float] = {}
    if group.lat is not None and group.lon is not None:
        for name in names:
            region = config.region(name)
            km = great_circle_km(group.lat, group.lon, region.lat, region.lon)
            # Route 53 geoproximity: biased distance = distance x (1 - bias / 100)
            distance[name] = km * (1 - service.bias.get(name, 0) / 100)
    counted = next((s for s in steps if s.name in DEFAULT_COUNTS), None)
    count = 1
    if counted is not None:
        count = counted.count or service.answers or DEFAULT_COUNTS[counted.name]
    sorter = next((s.name for s in steps if s.name in SORTERS), None)
    h = service.hysteresis
    return Plan(
        service=service.name,
        group=group.name,
        policy=service.policy_name,
        steps=steps,
        regions=tuple(regions),
        order=MappingProxyType({n: i for i, n in enumerate(names)}),
        primary=MappingProxyType({r.name: r.paths[0][0] for r in regions}),
        answers=MappingProxyType({(r.name, p): a for r in regions for p, a in r.paths}),
        forced_path=None if service.path == "auto" else service.path,
        allowed=allowed,
        geo_order=geo_order,
        geo_mapped=geo.get(group.name),
        priority_rank=MappingProxyType({n: i for i, n in enumerate(priority)}),
        distance_km=MappingProxyType(distance),
        weights=MappingProxyType({n: float(service.weights.get(n, 1 if not service.weights else 0)) for n in names}),
        count=count,
        metric=f"{service.metric}_ms",
        metric_of=operator.attrgetter(f"{service.metric}_ms"),
        latency_ranked=sorter == "latency",
        margin_ms=h.margin_s * 1000.0,
        margin_ratio=h.margin_ratio,
        evaluations=h.evaluations,
        dwell_s=h.dwell_s,
        path_margin_ms=service.path_margin_s * 1000.0,
        path_margin_ratio=service.path_margin_ratio,
        ttl=math.ceil(service.ttl_s),  # a DNS TTL is whole seconds: 500ms is 1, never 0
        all_down=service.all_down,
        fallback=service.fallback,
        # until remote agents exist every group is measured by a vantage, by default the local agent (DESIGN.md)
        row_groups=tuple(dict.fromkeys(n for n in (group.name, group.vantage or config.agent.name) if n)),
    )

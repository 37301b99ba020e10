"""The Decider: every (service, group) decided from one table snapshot, each policy's state kept explicitly between evaluations."""

from __future__ import annotations

import dataclasses
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from latency_router.decider.decision import WEIGHT_SCALE, Decision, share_weights
from latency_router.decider.pins import Pin, apply_pin
from latency_router.decider.plan import Plan, compile_plan
from latency_router.gcpause import gc_paused
from latency_router.decider.policy import INITIAL, PolicyState, decide, rows_for
from latency_router.decider.vector import CandidateBuilder, source_group

if TYPE_CHECKING:
    from latency_router.config.models import Config, GroupConfig, ServiceConfig

Key = tuple[str, str]  # (service, group)


def config_groups(config: "Config") -> tuple["GroupConfig", ...]:
    """The config's groups, plus the default group (measured by the local agent) when the config does not define it."""
    from latency_router.config.models import GroupConfig

    groups = tuple(config.groups)
    if any(g.name == config.default_group for g in groups):
        return groups
    return (*groups, GroupConfig(name=config.default_group, vantage=config.agent.name))


class Decider:
    """Decides every (service, group) from table snapshots; the latest decisions are read with lookup()."""

    def __init__(self, config: "Config", services: "Iterable[ServiceConfig] | None" = None) -> None:
        self.config = config
        self.services: tuple[ServiceConfig, ...] = tuple(config.services if services is None else services)
        self.groups = config_groups(config)
        self.plans: dict[Key, Plan] = {
            (s.name, g.name): compile_plan(config, s, g) for s in self.services for g in self.groups
        }
        self._states: dict[Key, PolicyState] = {}
        self._rows_seen: dict[Key, Any] = {}  # the group token (see rows_token) each decision was last made from
        self._builder = CandidateBuilder()
        self._live: Mapping[Key, Decision] = MappingProxyType({})  # the policies' own decisions, before pins
        self._decisions: Mapping[Key, Decision] = MappingProxyType({})  # what is handed out: pins applied
        self._drained: frozenset[str] = frozenset()
        self._pins: dict[Key, Pin] = {}
        self._snapshot: Any = None

    def evaluate(self, snapshot: Any, now: float, warming: bool = False) -> Mapping[Key, Decision]:
        """One evaluation of every (service, group); returns (and keeps) the read-only map of decisions.

        `warming`: not every path has been probed since start; every decision is then provisional (see decide()).
        """
        states, seen, last = self._states, self._rows_seen, self._live
        out: dict[Key, Decision] = {}
        with gc_paused():
            columns = getattr(snapshot, "columns", None)
            prepared = self._builder.prepare(self.plans, columns) if columns is not None else None
            for key, plan in self.plans.items():
                token = rows_token(snapshot, plan)
                state = states.get(key, INITIAL)
                old = last.get(key)
                # The same rows (no row of the group changed), no move last time and no challenger on a streak:
                # decide() would return the same decision, since only a streak makes it read the clock (dwell).
                if (token is not None and token is seen.get(key) and old is not None and state.streak == 0
                        and old.basis != "provisional" and not warming):
                    out[key] = old._replace(evaluated_at=now)
                    continue
                rows = rows_for(snapshot, plan)
                built = prepared.get(key) if prepared is not None else None
                decision, states[key] = decide(rows, plan, now, state, warming, built)
                out[key] = decision
                # a decision that just moved explains the move; the next one from the same rows will not
                seen[key] = token if decision.changed_at != now else None
        self._live = MappingProxyType(out)
        self._snapshot = snapshot
        self._publish()
        return self._decisions

    def _publish(self) -> None:
        """Hand out the live decisions with the pins applied."""
        if not self._pins:
            self._decisions = self._live
            return
        out = dict(self._live)
        for key, pin in self._pins.items():
            if key in out:
                rows = rows_for(self._snapshot, self.plans[key]) if self._snapshot is not None else {}
                out[key] = apply_pin(out[key], pin, self.plans[key], rows)
        self._decisions = MappingProxyType(out)

    @property
    def drained(self) -> frozenset[str]:
        """The regions taken out of every decision."""
        return self._drained

    @property
    def pins(self) -> Mapping[Key, Pin]:
        """The pinned (service, group) pairs."""
        return MappingProxyType(self._pins)

    def set_drained(self, regions: Iterable[str]) -> None:
        """Take these regions (and only these) out of every decision from the next evaluation on."""
        drained = frozenset(regions)
        if drained == self._drained:
            return
        self._drained = drained
        self.plans = {k: dataclasses.replace(p, drained=drained) for k, p in self.plans.items()}
        self._rows_seen.clear()  # the same rows now give another decision

    def pin(self, service: str, group: str, region: str, path: str) -> None:
        """Pin (service, group) to (region, path): KeyError naming what is unknown. Takes effect at once."""
        plan = self.plans.get((service, group))
        if plan is None:
            raise KeyError(f"unknown (service, group): ({service}, {group})")
        if (region, path) not in plan.answers:
            raise KeyError(f"service {service} has no path {path} in region {region}")
        self._pins[(service, group)] = Pin(region, path)
        self._publish()

    def unpin(self, service: str, group: str) -> bool:
        """Remove a pin; False when there was none. Takes effect at once."""
        found = self._pins.pop((service, group), None) is not None
        self._publish()
        return found

    def adopt(self, old: "Decider") -> None:
        """Carry over, from the Decider of the previous config, what still applies: the state and last decision of
        every (service, group) whose plan is unchanged, the drained regions and the pins that still name real things."""
        live = {}
        for key, plan in self.plans.items():
            before = old.plans.get(key)
            # metric_of is an attrgetter, equal only to itself: the metric's name stands for it
            if before is not None and dataclasses.replace(before, drained=plan.drained, metric_of=plan.metric_of) == plan:
                if key in old._states:
                    self._states[key] = old._states[key]
                if key in old._live:
                    live[key] = old._live[key]
        self._live = MappingProxyType(live)
        regions = {r for p in self.plans.values() for r, _ in p.answers}
        self.set_drained(old._drained & regions)
        self._pins = {k: pin for k, pin in old._pins.items() if k in self.plans and pin in self.plans[k].answers}
        self._snapshot = old._snapshot
        self._publish()

    @property
    def decisions(self) -> Mapping[Key, Decision]:
        """The latest decisions, by (service, group)."""
        return self._decisions

    def lookup(self, service: str, group: str) -> Decision | None:
        """The latest decision for (service, group), or None."""
        return self._decisions.get((service, group))

    def state(self, service: str, group: str) -> PolicyState:
        """The policy state carried for (service, group)."""
        return self._states.get((service, group), INITIAL)


def rows_token(snapshot: Any, plan: Plan) -> object:
    """What stays the same object exactly while the plan's rows do not change: a column snapshot's group token, else
    the rows mapping itself (a snapshot built from rows); None when there are no rows."""
    columns = getattr(snapshot, "columns", None)
    if columns is not None:
        name = source_group(columns, plan)
        return None if name is None else columns.tokens.get(name)
    rows = rows_for(snapshot, plan)
    return rows if rows else None


def service_weights(decisions: Iterable[Decision], sizes: Mapping[str, float]) -> dict[tuple[str, str, str], int]:
    """Each (region, path, answer)'s share of the service's clients, on 0-255: group sizes times their answers' weights."""
    share: dict[tuple[str, str, str], float] = {}
    for d in decisions:
        size = sizes.get(d.group, 1.0)
        if d.fallback in ("static", "last-known-good"):
            # a fallback's answers carry no candidate weights: the group's share splits evenly over them
            for answer in d.answers:
                key = (d.region or "", d.path or "", answer)
                share[key] = share.get(key, 0.0) + size / len(d.answers)
            continue
        for c in d.candidates:
            if c.weight > 0:
                key = (c.region, c.path, c.answer)
                share[key] = share.get(key, 0.0) + size * c.weight / WEIGHT_SCALE
    keys = sorted(share)
    return dict(zip(keys, share_weights(len(keys), [share[k] for k in keys])))

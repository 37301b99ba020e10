"""The Decider: every (service, group) decided from one table snapshot, each policy's state kept explicitly between evaluations."""

from __future__ import annotations

from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from latency_router.decider.decision import WEIGHT_SCALE, Decision, share_weights
from latency_router.decider.plan import Plan, compile_plan
from latency_router.gcpause import gc_paused
from latency_router.decider.policy import INITIAL, PolicyState, decide, rows_for

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
        self._rows_seen: dict[Key, Any] = {}  # the rows mapping each decision was last made from
        self._decisions: Mapping[Key, Decision] = MappingProxyType({})

    def evaluate(self, snapshot: Any, now: float) -> Mapping[Key, Decision]:
        """One evaluation of every (service, group); returns (and keeps) the read-only map of decisions."""
        states, seen, last = self._states, self._rows_seen, self._decisions
        out: dict[Key, Decision] = {}
        with gc_paused():
            for key, plan in self.plans.items():
                rows = rows_for(snapshot, plan)
                state = states.get(key, INITIAL)
                old = last.get(key)
                # The same rows (the table reuses an unchanged group's mapping), no move last time and no challenger on a
                # streak: decide() would return the same decision, since only a streak makes it read the clock (dwell).
                if rows is seen.get(key) and old is not None and state.streak == 0 and old.basis != "provisional":
                    out[key] = old._replace(evaluated_at=now)
                    continue
                decision, states[key] = decide(rows, plan, now, state)
                out[key] = decision
                # a decision that just moved explains the move; the next one from the same rows will not
                seen[key] = rows if decision.changed_at != now else None
        self._decisions = MappingProxyType(out)
        return self._decisions

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

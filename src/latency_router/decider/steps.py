"""The names of the filter-chain steps and of the named policies built from them: the one list both config and decider read."""

from __future__ import annotations

from typing import NamedTuple

# a filter drops candidates (geolocation also puts the group's mapped region first)
FILTERS: tuple[str, ...] = ("healthy", "fence", "geolocation")
# a sorter orders the candidates that are left
SORTERS: tuple[str, ...] = ("latency", "proximity", "priority")
# a selector ends the chain: it picks the answers and gives each candidate its weight
SELECTORS: tuple[str, ...] = ("first", "weighted", "multivalue", "sticky")
STEP_NAMES: tuple[str, ...] = FILTERS + SORTERS + SELECTORS
# selectors that take a count ("multivalue 3"); None means the service's `answers` or the selector's default
COUNTED: tuple[str, ...] = ("multivalue", "sticky")

NAMED_POLICIES: dict[str, tuple[str, ...]] = {
    "latency": ("healthy", "fence", "latency", "first"),
    "failover": ("healthy", "fence", "priority", "first"),
    "weighted": ("healthy", "fence", "weighted"),
    "geolocation": ("healthy", "fence", "geolocation", "first"),
    "geoproximity": ("healthy", "fence", "proximity", "first"),
    "multivalue": ("healthy", "fence", "latency", "multivalue"),
}
POLICY_NAMES: tuple[str, ...] = tuple(NAMED_POLICIES)


class Step(NamedTuple):
    """One step of a chain: its name and, for a counted selector, how many answers."""

    name: str
    count: int | None = None

    def __str__(self) -> str:
        return self.name if self.count is None else f"{self.name} {self.count}"


def parse_step(text: str) -> Step:
    """'healthy' -> Step('healthy'); 'multivalue 3' -> Step('multivalue', 3); ValueError in words otherwise."""
    parts = text.split()
    if not parts:
        raise ValueError("empty step")
    name, args = parts[0], parts[1:]
    if name not in STEP_NAMES:
        raise ValueError(f"unknown step {name!r} (expected one of: {', '.join(STEP_NAMES)})")
    if not args:
        return Step(name)
    if name not in COUNTED or len(args) != 1 or not args[0].isdigit() or not 1 <= int(args[0]) <= 255:
        if name not in COUNTED:
            raise ValueError(f"step {name!r} takes no argument")
        raise ValueError(f"step {name!r} takes one count from 1 to 255, got {' '.join(args)!r}")
    return Step(name, int(args[0]))


def parse_chain(texts: tuple[str, ...] | list[str]) -> tuple[Step, ...]:
    """Parse and check a chain: filters and at most one sorter, then exactly one selector at the end."""
    steps = tuple(parse_step(t) for t in texts)
    if not steps:
        raise ValueError("a chain needs at least a selector")
    names = [s.name for s in steps]
    if steps[-1].name not in SELECTORS:
        raise ValueError(f"a chain ends with a selector (one of: {', '.join(SELECTORS)}), not {steps[-1].name!r}")
    if any(n in SELECTORS for n in names[:-1]):
        raise ValueError("a chain has exactly one selector, at its end")
    if sum(n in SORTERS for n in names) > 1:
        raise ValueError(f"a chain has at most one sorter (one of: {', '.join(SORTERS)})")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ValueError(f"step {repeated[0]!r} appears more than once")
    return steps


def named_chain(policy: str) -> tuple[Step, ...]:
    """The chain of a named policy."""
    return parse_chain(NAMED_POLICIES[policy])

"""Checks that span tables (unique names, services and lab events naming regions and paths), run on raw TOML data."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]


def key_path(loc: Loc) -> str:
    """('regions', 2, 'paths', 0, 'probe') -> 'regions[2].paths[0].probe'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _items(data: Any, key: str) -> list[tuple[int, Mapping]]:
    """(index, table) for each table in an array of tables; anything malformed is skipped (its type error is reported elsewhere)."""
    value = data.get(key) if isinstance(data, Mapping) else None
    if not isinstance(value, (list, tuple)):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, Mapping)]


def _names(loc: Loc, items: list[tuple[int, Mapping]], what: str, problems: list[Problem]) -> dict[str, Mapping]:
    """Index tables by name, reporting each repeated name at its second and later uses."""
    seen: dict[str, Mapping] = {}
    for i, item in items:
        name = item.get("name")
        if not isinstance(name, str) or not name:
            continue
        if name in seen:
            problems.append(((*loc, i, "name"), f"duplicate {what} name {name!r}"))
        else:
            seen[name] = item
    return seen


def cross_reference_problems(data: Mapping[str, Any]) -> list[Problem]:
    """Every problem that involves more than one table, as (key path, message)."""
    problems: list[Problem] = []
    regions = _names(("regions",), _items(data, "regions"), "region", problems)
    paths: dict[str, dict[str, Mapping]] = {}
    for i, region in _items(data, "regions"):
        found = _names(("regions", i, "paths"), _items(region, "paths"), "path", problems)
        if region.get("name") in regions and regions[region["name"]] is region:
            paths[region["name"]] = found
    _names(("groups",), _items(data, "groups"), "group", problems)
    _names(("services",), _items(data, "services"), "service", problems)

    for i, service in _items(data, "services"):
        names = service.get("regions")
        if not isinstance(names, (list, tuple)):
            continue
        for j, name in enumerate(names):
            if isinstance(name, str) and name not in regions:
                problems.append((("services", i, "regions", j), f"unknown region {name!r}"))

    lab = data.get("lab")
    if isinstance(lab, Mapping):
        problems.extend(_lab_problems(lab, paths))
    return problems


def _lab_problems(lab: Mapping, paths: dict[str, dict[str, Mapping]]) -> list[Problem]:
    problems: list[Problem] = []
    if paths and not any(isinstance(p.get("lab"), Mapping) for found in paths.values() for p in found.values()):
        problems.append((("lab",), "no path has a lab table (add e.g. lab = {delay = \"20ms\"} to a [[regions.paths]])"))
    for i, event in _items(lab, "events"):
        region, path = event.get("region"), event.get("path")
        if not isinstance(region, str):
            continue
        if region not in paths:
            problems.append((("lab", "events", i, "region"), f"unknown region {region!r}"))
            continue
        if not isinstance(path, str):
            continue
        if path not in paths[region]:
            problems.append((("lab", "events", i, "path"), f"region {region!r} has no path {path!r}"))
        elif not isinstance(paths[region][path].get("lab"), Mapping):
            problems.append((("lab", "events", i, "path"), f"path {path!r} of region {region!r} has no lab table"))
    return problems

"""Checks that span tables (unique names, vantages, services and lab events naming regions and paths), run on raw TOML data.

They run even when fields fail to validate, so every value here may be of any type: each check reads only
what has the type it expects and skips the rest (the field's own type error is reported elsewhere).
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from typing import Any

from latency_router.config.fields import is_name, show

Loc = tuple[str | int, ...]
Problem = tuple[Loc, str]

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")
DEFAULT_AGENT_NAME = "local"


def _toml_key(key: str) -> str:
    """A key as TOML writes it: bare when it can be, else a quoted string on one line."""
    if _BARE_KEY.fullmatch(key):
        return key
    escaped = "".join(
        c if c.isprintable() and c not in '"\\' else "\\" + c if c in '"\\' else f"\\U{ord(c):08X}" for c in key
    )
    return f'"{escaped}"'


def key_path(loc: Loc) -> str:
    """('regions', 2, 'paths', 0, 'probe') -> 'regions[2].paths[0].probe'; odd keys quoted as in TOML."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            key = _toml_key(str(part))
            out += f".{key}" if out else key
    return out


def _items(data: Any, key: str) -> list[tuple[int, Mapping]]:
    """(index, table) for each table in an array of tables; anything malformed is skipped."""
    value = data.get(key) if isinstance(data, Mapping) else None
    if not isinstance(value, (list, tuple)):
        return []
    return [(i, item) for i, item in enumerate(value) if isinstance(item, Mapping)]


def _text(table: Mapping, key: str) -> str | None:
    """The value at `key` when it is a non-empty string, else None."""
    value = table.get(key)
    return value if isinstance(value, str) and value else None


def _names(loc: Loc, items: list[tuple[int, Mapping]], what: str, problems: list[Problem]) -> dict[str, Mapping]:
    """Index tables by name, reporting each repeated name at its second and later uses."""
    seen: dict[str, Mapping] = {}
    for i, item in items:
        name = _text(item, "name")
        if name is None:
            continue
        if name in seen:
            problems.append(((*loc, i, "name"), f"duplicate {what} name {show(name)}"))
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
        name = _text(region, "name")
        if name is not None and regions[name] is region:
            paths[name] = found
    _names(("groups",), _items(data, "groups"), "group", problems)
    _names(("services",), _items(data, "services"), "service", problems)
    problems.extend(_vantage_problems(data))
    problems.extend(_service_problems(data, regions))
    problems.extend(_fence_overlap_problems(data))
    lab = data.get("lab")
    if isinstance(lab, Mapping):
        problems.extend(_lab_problems(lab, paths))
    dns = data.get("dns")
    if isinstance(dns, Mapping):
        problems.extend(_dns_problems(data, dns))
    return problems


def _dns_problems(data: Mapping[str, Any], dns: Mapping[str, Any]) -> list[Problem]:
    """DNS records that name an unknown provider or service, lie outside the provider's zone, repeat a name at one
    provider, or whose service hands out host names (from a path or its fallback: an A/AAAA record holds addresses);
    RFC 2136 view keys of unknown groups, and per-group records at an RFC 2136 provider without a view key for a group
    with CIDRs (its answers could never be written)."""
    problems: list[Problem] = []
    providers = _names(("dns", "providers"), _items(dns, "providers"), "provider", problems)
    provider_at: dict[str, int] = {}  # provider name -> its index (the first table of that name)
    for j, table in _items(dns, "providers"):
        name = _text(table, "name")
        if name is not None and providers.get(name) is table:
            provider_at[name] = j
    problems.extend(_view_problems(data, dns))
    services = {_text(s, "name"): s for _, s in _items(data, "services")}
    answers_of_region = {
        _text(r, "name"): [_text(p, "answer") for _, p in _items(r, "paths")] for _, r in _items(data, "regions")
    }
    first_at: dict[tuple[str, str], int] = {}  # (provider, normalised name) -> the record that has it first
    for i, record in _items(dns, "records"):
        provider = _text(record, "provider")
        if provider is not None and provider not in providers:
            problems.append((("dns", "records", i, "provider"), f"unknown provider {show(provider)}"))
        service = _text(record, "service")
        if service is not None and service not in services:
            problems.append((("dns", "records", i, "service"), f"unknown service {show(service)}"))
        name, zone = _text(record, "name"), _text(providers.get(provider) or {}, "zone")
        if name and zone:
            n, z = _fqdn(name), _fqdn(zone)
            if n != z and not n.endswith("." + z):
                problems.append((("dns", "records", i, "name"), f"{show(name)} is not in the provider's zone {show(zone)}"))
        if name and provider is not None:
            first = first_at.setdefault((provider, _fqdn(name)), i)
            if first != i:
                problems.append((("dns", "records", i, "name"),
                                 f"{show(name)} is given twice for provider {show(provider)} (first at "
                                 f"{key_path(('dns', 'records', first, 'name'))}); one record per name and provider"))
        if service in services:
            problems.extend(_host_name_answers(("dns", "records", i, "service"), service, services[service],
                                               answers_of_region))
        if provider in provider_at and record.get("mode") == "per-group":
            problems.extend(_missing_views(("dns", "records", i, "mode"), data, provider, provider_at[provider],
                                           providers[provider]))
    return problems


def _group_names(data: Mapping[str, Any]) -> set[str]:
    """The config's group names and the default group's."""
    names = {name for _, g in _items(data, "groups") if (name := _text(g, "name"))}
    default_group = data.get("default_group", "default")
    if isinstance(default_group, str):
        names.add(default_group)
    return names


def _view_problems(data: Mapping[str, Any], dns: Mapping[str, Any]) -> list[Problem]:
    """An RFC 2136 provider's view key for a group the config does not have."""
    groups = _group_names(data)
    problems: list[Problem] = []
    for j, table in _items(dns, "providers"):
        views = table.get("views")
        if table.get("kind") != "rfc2136" or not isinstance(views, Mapping):
            continue
        for group in views:
            if is_name(group) and group not in groups:  # an invalid name is reported by the field itself
                problems.append((("dns", "providers", j, "views", group),
                                 f"unknown group {show(group)} (a view key is for one of the config's groups)"))
    return problems


def _missing_views(loc: Loc, data: Mapping[str, Any], provider: str, index: int, table: Mapping) -> list[Problem]:
    """The groups with CIDRs that a per-group record at an RFC 2136 provider has no view key for."""
    if table.get("kind") != "rfc2136":
        return []
    views = table.get("views", {})
    if not isinstance(views, Mapping):
        return []  # reported by the field itself
    missing = [name for _, g in _items(data, "groups")
               if (name := _text(g, "name")) and isinstance(g.get("cidrs"), (list, tuple)) and g["cidrs"]
               and name not in views]
    if not missing:
        return []
    listed = ", ".join(show(name) for name in dict.fromkeys(missing))
    return [(loc, f"per-group answers at rfc2136 provider {show(provider)} need a view key for every group with CIDRs; "
                  f"none for {listed} (add {'it' if len(missing) == 1 else 'them'} to "
                  f"{key_path(('dns', 'providers', index, 'views'))})")]


def _fqdn(name: str) -> str:
    """A domain name as record sets key it: lower case, one trailing dot."""
    return name.lower().rstrip(".") + "."


def _host_name_answers(loc: Loc, service: str, table: Mapping, answers_of_region: Mapping[str | None, list]) -> list[Problem]:
    """The first host name the service may hand out (a path's answer in its regions, or its static fallback), if any."""
    regions = table.get("regions") or list(answers_of_region)
    if isinstance(regions, (list, tuple)):
        for region in regions:
            for answer in answers_of_region.get(region, []) if isinstance(region, str) else []:
                if answer is not None and not _is_ip(answer):
                    return [(loc, f"service {show(service)} answers the host name {show(answer)} (region {region}); "
                                  "an A/AAAA record holds addresses")]
    fallback = table.get("fallback")
    if isinstance(fallback, (list, tuple)):
        for answer in fallback:
            if isinstance(answer, str) and not _is_ip(answer):
                return [(loc, f"service {show(service)} has the host name {show(answer)} in its fallback; "
                              "an A/AAAA record holds addresses")]
    return []


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _vantage_problems(data: Mapping[str, Any]) -> list[Problem]:
    """A group measured by a vantage that does not exist (for now the only vantage is the local agent)."""
    agent = data.get("agent", {})
    if not isinstance(agent, Mapping):
        return []
    local = agent.get("name", DEFAULT_AGENT_NAME)
    if not is_name(local):
        return []  # the agent's own problem is reported at agent.name
    problems: list[Problem] = []
    for i, group in _items(data, "groups"):
        vantage = group.get("vantage")
        if is_name(vantage) and vantage != local:  # an invalid name is reported by the field itself
            problems.append((("groups", i, "vantage"), f"unknown vantage {show(vantage)} (known: {local})"))
    return problems


def _service_problems(data: Mapping[str, Any], regions: Mapping[str, Mapping]) -> list[Problem]:
    """A service naming a region, group or path that does not exist, or naming a region twice."""
    problems: list[Problem] = []
    groups = {name for _, g in _items(data, "groups") if (name := _text(g, "name"))}
    default_group = data.get("default_group", "default")
    if isinstance(default_group, str):
        groups.add(default_group)
    for i, service in _items(data, "services"):
        names = service.get("regions")
        used = set(regions)
        if isinstance(names, (list, tuple)):
            used = {n for n in names if isinstance(n, str) and n in regions}
            listed: set[str] = set()
            for j, name in enumerate(names):
                if not isinstance(name, str):
                    continue
                if name in listed:
                    problems.append((("services", i, "regions", j), f"region {show(name)} is listed twice"))
                elif name not in regions:
                    problems.append((("services", i, "regions", j), f"unknown region {show(name)}"))
                listed.add(name)
        problems.extend(_service_region_refs(("services", i), service, regions, used))
        problems.extend(_service_group_refs(("services", i), service, groups))
        path = service.get("path")
        if is_name(path) and path != "auto":  # an invalid name is reported once, by the field itself
            for name in sorted(used):
                if path not in _path_names(regions[name]):
                    problems.append((("services", i, "path"), f"region {show(name)} has no path {show(path)}"))
        primary = service.get("primary_path")
        if is_name(primary) and used and not any(primary in _path_names(regions[n]) for n in used):
            problems.append((("services", i, "primary_path"), f"no region of the service has a path {show(primary)}"))
    return problems


def _path_names(region: Mapping) -> set[str | None]:
    paths = region.get("paths")
    return {_text(p, "name") for p in paths if isinstance(p, Mapping)} if isinstance(paths, (list, tuple)) else set()


def _region_ref(loc: Loc, name: Any, regions: Mapping[str, Mapping], used: set[str]) -> Problem | None:
    if not isinstance(name, str):
        return None
    if name not in regions:
        return (loc, f"unknown region {show(name)}")
    if name not in used:
        return (loc, f"region {show(name)} is not one of the service's regions")
    return None


def _service_region_refs(loc: Loc, service: Mapping, regions: Mapping[str, Mapping], used: set[str]) -> list[Problem]:
    """priority, weights, bias, geolocation and fences may only name the service's regions."""
    found: list[Problem | None] = []
    priority = service.get("priority")
    if isinstance(priority, (list, tuple)):
        found += [_region_ref((*loc, "priority", j), n, regions, used) for j, n in enumerate(priority)]
        found += [
            ((*loc, "priority", j), f"region {show(n)} is listed twice")
            for j, n in enumerate(priority)
            if isinstance(n, str) and n in priority[:j]
        ]
    for key in ("weights", "bias"):
        table = service.get(key)
        if isinstance(table, Mapping):
            found += [_region_ref((*loc, key, n), n, regions, used) for n in table]
    geo = service.get("geolocation")
    if isinstance(geo, Mapping):
        found += [_region_ref((*loc, "geolocation", g), n, regions, used) for g, n in geo.items()]
    for k, fence in _items(service, "fences"):
        names = fence.get("regions")
        if isinstance(names, (list, tuple)):
            found += [_region_ref((*loc, "fences", k, "regions", j), n, regions, used) for j, n in enumerate(names)]
    return [p for p in found if p is not None]


def _cidr(text: Any) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    try:
        return ipaddress.ip_network(text) if isinstance(text, str) else None
    except ValueError:
        return None  # reported by the field itself


def _fence_overlap_problems(data: Mapping[str, Any]) -> list[Problem]:
    """A fence CIDR that covers part of a group's CIDR: fences apply to whole groups, so that group must be split."""
    problems: list[Problem] = []
    group_nets = [
        (_text(g, "name"), net)
        for _, g in _items(data, "groups")
        if isinstance(g.get("cidrs"), (list, tuple))
        for net in map(_cidr, g["cidrs"])
        if net is not None
    ]
    for i, service in _items(data, "services"):
        for k, fence in _items(service, "fences"):
            cidrs = fence.get("cidrs")
            if not isinstance(cidrs, (list, tuple)):
                continue
            for j, fence_net in enumerate(map(_cidr, cidrs)):
                if fence_net is None:
                    continue
                for name, net in group_nets:
                    if net.version == fence_net.version and net.overlaps(fence_net) and not net.subnet_of(fence_net):  # type: ignore[arg-type]
                        problems.append((
                            ("services", i, "fences", k, "cidrs", j),
                            f"covers only part of {net} of group {show(name)}: a fence applies to whole groups (split the group)",
                        ))
    return problems


def _service_group_refs(loc: Loc, service: Mapping, groups: set[str]) -> list[Problem]:
    """geolocation keys ('*' is the default) and fence groups must be groups of the config."""
    problems: list[Problem] = []
    geo = service.get("geolocation")
    if isinstance(geo, Mapping):
        problems += [
            ((*loc, "geolocation", g), f"unknown group {show(g)} (use '*' for the default)")
            for g in geo
            if g != "*" and g not in groups
        ]
    for k, fence in _items(service, "fences"):
        names = fence.get("groups")
        if isinstance(names, (list, tuple)):
            problems += [
                ((*loc, "fences", k, "groups", j), f"unknown group {show(n)}")
                for j, n in enumerate(names)
                if isinstance(n, str) and n not in groups
            ]
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
            problems.append((("lab", "events", i, "region"), f"unknown region {show(region)}"))
            continue
        if not isinstance(path, str):
            continue
        if path not in paths[region]:
            problems.append((("lab", "events", i, "path"), f"region {show(region)} has no path {show(path)}"))
        elif not isinstance(paths[region][path].get("lab"), Mapping):
            problems.append((("lab", "events", i, "path"), f"path {show(path)} of region {show(region)} has no lab table"))
    return problems

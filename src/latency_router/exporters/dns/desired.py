"""What DNS should serve for a service: its decisions turned into record sets, weighted or per client group.

- mode "weighted": one scope-None record set per address family, with the service's weights (`service_weights`:
  every group's answers times the group's size), renormalised to 0-255 within each family.
- mode "per-group": besides the weighted set for everyone else (clients of no group, or behind a resolver that sends
  no client subnet), one scoped set per group with CIDRs: that group's answers with their candidate weights (equal
  weights when the answers carry none, as a static fallback's), and the group's networks.

A family's set is made only when some answer is of that family, so a service answering IPv4 only has no AAAA set.
A decision with no answer at all gives an empty set (one per address family the service's paths and fallback have), which the plan
refuses unless forced. A host-name answer cannot go into an A or AAAA record: ValueError names the service and answer.
"""

from __future__ import annotations

import ipaddress
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Literal, Mapping, Sequence

from latency_router.decider.decision import Decision, share_weights
from latency_router.decider.engine import config_groups, service_weights
from latency_router.exporters.dns.model import Answer, RecordSet, RType, canonical_address

if TYPE_CHECKING:
    from latency_router.config.models import Config

Mode = Literal["weighted", "per-group"]
MODES: tuple[str, ...] = ("weighted", "per-group")
FAMILIES: tuple[RType, ...] = ("A", "AAAA")


def normalize_name(name: str) -> str:
    """A domain name as record sets key it: lower case, ending in '.'; ValueError for an empty or malformed name."""
    if not isinstance(name, str) or not name.strip(". "):
        raise ValueError(f"name: expected a domain name such as 'api.example.com', got {name!r}")
    fqdn = name.lower() if name.endswith(".") else name.lower() + "."
    labels = fqdn[:-1].split(".")
    if len(fqdn) > 254 or any(not 0 < len(label) <= 63 for label in labels):
        raise ValueError(f"name: {name!r} is not a valid domain name (labels of 1-63 characters, 253 in all)")
    if any(c.isspace() for c in fqdn):
        raise ValueError(f"name: {name!r} contains white space")
    return fqdn


@dataclass(frozen=True, slots=True)
class DnsRecord:
    """One name latency-router keeps in DNS: the service it answers for, how (mode) and its TTL (None: the service's)."""

    name: str
    service: str
    mode: Mode = "weighted"
    ttl: int | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", normalize_name(self.name))
        if self.mode not in MODES:
            raise ValueError(f"mode: expected one of {', '.join(MODES)}, got {self.mode!r}")
        if self.ttl is not None and (isinstance(self.ttl, bool) or not isinstance(self.ttl, int) or self.ttl < 0):
            raise ValueError(f"ttl: expected a whole number of seconds >= 0, got {self.ttl!r}")


def desired_record_sets(
    decisions: Mapping[tuple[str, str], Decision], config: "Config", records: Sequence[DnsRecord]
) -> list[RecordSet]:
    """The record sets the given records should hold for these decisions, in a stable order."""
    groups = config_groups(config)
    sizes = {g.name: g.size for g in groups}
    ttls = {s.name: math.ceil(s.ttl_s) for s in config.services}  # as the decision's ttl: 0.5 s is 1, never 0
    out: list[RecordSet] = []
    names: set[str] = set()
    for record in records:
        if record.service not in ttls:
            raise ValueError(f"{record.name}: service: unknown service {record.service!r}")
        if record.name in names:
            raise ValueError(f"{record.name}: name: given twice (one record per name)")
        names.add(record.name)
        ttl = record.ttl if record.ttl is not None else ttls[record.service]
        service = [decisions[(record.service, g.name)] for g in groups if (record.service, g.name) in decisions]
        ids = _set_ids(service)
        everyone = service_weights(service, sizes)
        weights: dict[str, int] = {}
        for (_, _, answer), weight in everyone.items():
            value = _address(record.service, answer)
            weights[value] = weights.get(value, 0) + weight
        fallback_families = _service_families(config, record.service)
        out += _family_sets(record.name, ttl, None, (), weights, ids, fallback_families)
        if record.mode == "per-group":
            for group in groups:
                decision = decisions.get((record.service, group.name))
                if not group.cidrs or decision is None:
                    continue  # a group without networks cannot be told apart in DNS: it gets the scope-None set
                networks = tuple(str(n) for n in group.cidrs)
                own = _group_weights(record.service, decision)
                out += _family_sets(record.name, ttl, group.name, networks, own, ids, fallback_families)
    return out


def _address(service: str, answer: str) -> str:
    """The answer as an address in its canonical text; ValueError naming service and answer for a host name or an
    address with a zone id."""
    try:
        address = ipaddress.ip_address(answer)
    except ValueError:
        raise ValueError(
            f"service {service}: answer {answer!r} is not an IP address; an A or AAAA record cannot hold a host name"
        ) from None
    try:
        return canonical_address(str(address))
    except ValueError as exc:
        raise ValueError(f"service {service}: {exc}") from None


def _rtype(value: str) -> RType:
    return "A" if ipaddress.ip_address(value).version == 4 else "AAAA"


def _service_families(config: "Config", service: str) -> tuple[RType, ...]:
    """The families of every address the service may answer with (its regions' paths, its fallback); ("A",) if none."""
    svc = next(s for s in config.services if s.name == service)
    regions = [r for r in config.regions if not svc.regions or r.name in svc.regions]
    found: set[RType] = set()
    for answer in (*(p.answer for r in regions for p in r.paths), *svc.fallback):
        try:
            found.add(_rtype(answer))
        except ValueError:
            continue  # a host name: an error only once a decision hands it out
    return tuple(f for f in FAMILIES if f in found) or ("A",)


def _set_ids(decisions: Iterable[Decision]) -> dict[str, str]:
    """answer -> "region/path" of the first candidate (in region order) that hands it out."""
    ids: dict[str, str] = {}
    for d in decisions:
        for c in d.candidates:
            try:
                ids.setdefault(str(ipaddress.ip_address(c.answer)), f"{c.region}/{c.path}")
            except ValueError:
                continue
    return ids


def _group_weights(service: str, decision: Decision) -> dict[str, int]:
    """A group's answers with their candidate weights, or equal weights when none of them carries one."""
    by_answer: dict[str, int] = {}
    for c in decision.candidates:
        if c.weight > 0:
            by_answer[c.answer] = by_answer.get(c.answer, 0) + c.weight
    out: dict[str, int] = {}
    for answer in decision.answers:
        value = _address(service, answer)
        out[value] = out.get(value, 0) + by_answer.get(answer, 0)
    return out  # all 0 (a fallback's answers): _family_sets shares them equally


def _family_sets(
    name: str,
    ttl: int,
    scope: str | None,
    networks: tuple[str, ...],
    weights: Mapping[str, int],
    ids: Mapping[str, str],
    fallback_families: tuple[RType, ...],
) -> list[RecordSet]:
    """One record set per family among the weights (renormalised to 0-255 each, equal when all are 0); empty sets when
    there is no answer."""
    if not weights:
        return [RecordSet(name, rtype, ttl, (), scope, networks) for rtype in fallback_families]
    out = []
    for rtype in FAMILIES:
        values = sorted((v for v in weights if _rtype(v) == rtype), key=ipaddress.ip_address)
        if not values:
            continue
        shares = share_weights(len(values), [float(weights[v]) for v in values])
        # a path has one answer, so "region/path" ids are unique; an answer of no candidate (static) is named by itself
        answers = tuple(Answer(v, w, ids.get(v, f"static/{v}")) for v, w in zip(values, shares))
        out.append(RecordSet(name, rtype, ttl, answers, scope, networks))
    return out

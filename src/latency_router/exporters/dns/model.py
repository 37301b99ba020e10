"""What the DNS exporters speak: record sets as latency-router wants them, as a provider holds them, and a plan between.

One shape for every provider (octoDNS-like). A record set is keyed by (name, type, scope):
- `name` is a fully qualified, lower-case domain name ending in '.';
- `rtype` is "A" or "AAAA" (an answer's address family decides which);
- `scope` is None for the record set every client gets (weighted answers), or a group name for the answers that
  group's clients get (per-group answers: ECS-aware on PowerDNS, a per-view key on RFC 2136, a CIDR or geolocation
  record set on Route 53). A scoped record set carries the group's networks.
Each answer has a weight on 0-255 (the decider's scale) and a stable set id (Route 53's SetIdentifier; other
providers may ignore it). Weights of 0 are legal (Route 53: never answered unless all are 0). An answer's value is
kept in its canonical text; an address or network with a zone id ('%...') is refused, since no record can hold one.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Literal, Mapping, Protocol, Sequence

RType = Literal["A", "AAAA"]
Key = tuple[str, str, str | None]  # (name, rtype, scope)
WEIGHT_MAX = 255


def canonical_address(value: object) -> str:
    """An IPv4 or IPv6 address in its canonical text; ValueError naming the value for anything else, a zone id
    ('fe80::1%eth0': ipaddress keeps any text after the '%') included."""
    if not isinstance(value, str):
        raise ValueError(f"answer {value!r}: expected an IP address as a string")
    try:
        address = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"answer {value!r} is not an IP address") from None
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id is not None:
        raise ValueError(f"answer {value!r} has a zone id (the part after '%'): a DNS answer is an address without one")
    return str(address)


@dataclass(frozen=True, slots=True, order=True)
class Answer:
    """One address handed out, with its weight (0-255) and the stable id that names it at the provider."""

    value: str
    weight: int = 1
    set_id: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "value", canonical_address(self.value))
        if not 0 <= self.weight <= WEIGHT_MAX:
            raise ValueError(f"weight {self.weight} of {self.value} is outside 0-{WEIGHT_MAX}")


@dataclass(frozen=True, slots=True)
class RecordSet:
    """Every answer of one (name, type, scope), with the TTL they are served with."""

    name: str
    rtype: RType
    ttl: int
    answers: tuple[Answer, ...]
    scope: str | None = None  # None: every client; else a group name
    networks: tuple[str, ...] = ()  # a scoped set's client networks (CIDRs), for providers that select by them

    def __post_init__(self) -> None:
        # a zone id is free text ('fe80::%x/64' parses) that would reach a server's config or a LUA program; the rest of
        # a network's checks are the providers' (each names what it cannot hold)
        for network in self.networks if isinstance(self.networks, (tuple, list)) else ():
            if isinstance(network, str) and "%" in network:
                raise ValueError(f"network {network!r} of {self.name} {self.rtype}: a CIDR is written without a zone id")

    @property
    def key(self) -> Key:
        return (self.name, self.rtype, self.scope)

    def weights(self) -> dict[str, int]:
        """value -> weight."""
        return {a.value: a.weight for a in self.answers}


@dataclass(frozen=True, slots=True)
class Change:
    """One write: create (old None), update, or delete (new None) of a record set."""

    old: RecordSet | None
    new: RecordSet | None

    @property
    def key(self) -> Key:
        return (self.new or self.old).key  # type: ignore[union-attr]

    @property
    def action(self) -> str:
        return "create" if self.old is None else "delete" if self.new is None else "update"


@dataclass(frozen=True, slots=True)
class Plan:
    """The changes that bring a provider from its current state to the desired one, and why any were held back."""

    provider: str
    changes: tuple[Change, ...] = ()
    skipped: tuple[str, ...] = ()  # changes below the churn threshold, one line each
    refused: tuple[str, ...] = ()  # safety refusals (no answer left, too much weight moved), one line each

    @property
    def empty(self) -> bool:
        return not self.changes


class Provider(Protocol):
    """A DNS server latency-router writes to. Safety (plan checks, rate limits, retries) lives in the shared code.

    Optional: `async list_keys(names: Sequence[str]) -> list[Key]`, every key of an A or AAAA record set the provider
    holds at these names (FQDN, lower case, trailing dot). The runner (looked up with getattr) asks it once per name,
    so that sets an earlier run wrote and no longer wanted are planned as deletes; without it they are left alone.
    """

    name: str

    async def current(self, keys: Sequence[Key]) -> Mapping[Key, RecordSet]:
        """What the provider serves now for these keys (absent keys: no such record set)."""

    async def apply(self, changes: Sequence[Change]) -> None:
        """Write the changes (all, or raise)."""

    async def verify(self, desired: Sequence[RecordSet]) -> list[str]:
        """Read back (over DNS where the provider answers DNS); one line per record set that differs, [] when all match."""

    async def aclose(self) -> None:
        """Release connections."""

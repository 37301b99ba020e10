"""What a decision is: the chosen region, path and answers, the reason in words, and the ranked candidates behind it."""

from __future__ import annotations

import hashlib
import ipaddress
from typing import Any, NamedTuple

WEIGHT_SCALE = 255  # DNS weights (Route 53, LUA pickwrandom) run from 0 to 255


class Candidate(NamedTuple):
    """One region as a decision saw it, over the path chosen for it, with the numbers the ranking used."""

    region: str
    path: str
    answer: str
    rtt_ms: float | None  # the service's metric (EWMA by default) of this (group, region, path) row
    health: str  # up, down, unknown or stale; "none" when the table has no row
    healthy: bool
    weight: int = 0  # this candidate's share of the group's answers, 0-255
    path_margin_ms: float | None = None  # how much this path beats the region's best other path (negative: slower)
    excluded: str | None = None  # why a filter dropped it (unhealthy, fenced, not mapped), None when ranked

    def to_json(self) -> dict[str, Any]:
        """The candidate as the HTTP API shows it."""
        return {
            "region": self.region,
            "path": self.path,
            "answer": self.answer,
            "rtt_ms": _ms(self.rtt_ms),
            "health": self.health,
            "healthy": self.healthy,
            "weight": self.weight,
            "path_margin_ms": _ms(self.path_margin_ms),
            "excluded": self.excluded,
        }


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


class Decision(NamedTuple):
    """For one (service, group): where clients go, over which path, why, and what else was considered."""

    service: str
    group: str
    policy: str
    region: str | None
    path: str | None
    answers: tuple[str, ...]
    rtt_ms: float | None
    ttl: int
    basis: str  # measured, unknown (no data yet), static (a static fallback) or none (no answer)
    reason: str
    fallback: str | None  # the all-down behaviour that fired, or None
    path_margin_ms: float | None
    candidates: tuple[Candidate, ...]
    evaluated_at: float
    changed_at: float
    # a sticky selector's pool: the client's prefix picks one of these (rendezvous hashing), see for_client
    sticky_pool: tuple[Candidate, ...] = ()

    @property
    def answer(self) -> str | None:
        """The first answer, or None when there is none."""
        return self.answers[0] if self.answers else None

    def for_client(self, client: str | None) -> "Decision":
        """This decision for one client: a sticky pool picks by the client's /24 (IPv4) or /48 (IPv6) prefix."""
        if not self.sticky_pool or client is None:
            return self
        chosen = sticky_pick(self.sticky_pool, client_prefix(client))
        if chosen.region == self.region and chosen.path == self.path:
            return self
        others = tuple(c.answer for c in self.sticky_pool if c is not chosen)
        return self._replace(
            region=chosen.region,
            path=chosen.path,
            answers=(chosen.answer, *others),
            rtt_ms=chosen.rtt_ms,
            path_margin_ms=chosen.path_margin_ms,
            reason=f"{self.reason}; this client's prefix sticks to {chosen.region} via {chosen.path}",
        )

    def to_json(self) -> dict[str, Any]:
        """The decision as GET /v1/decision shows it."""
        return {
            "service": self.service,
            "group": self.group,
            "policy": self.policy,
            "region": self.region,
            "path": self.path,
            "answer": self.answer,
            "answers": list(self.answers),
            "rtt_ms": _ms(self.rtt_ms),
            "ttl": self.ttl,
            "basis": self.basis,
            "reason": self.reason,
            "fallback": self.fallback,
            "path_margin_ms": _ms(self.path_margin_ms),
            "candidates": [c.to_json() for c in self.candidates],
            "evaluated_at": self.evaluated_at,
            "changed_at": self.changed_at,
        }


def decision_from_json(d: dict[str, Any]) -> Decision:
    """A Decision from its to_json() form (as GET /v1/decision answers it); KeyError or TypeError on another shape."""
    fields = {k: d[k] for k in Decision._fields if k not in ("answers", "candidates", "sticky_pool")}
    candidates = tuple(Candidate(**{k: c[k] for k in Candidate._fields}) for c in d["candidates"])
    return Decision(**fields, answers=tuple(d["answers"]), candidates=candidates)


def client_prefix(client: str) -> str:
    """The prefix a sticky choice hashes: the client's /24 for IPv4, /48 for IPv6 (ValueError for a bad address)."""
    address = ipaddress.ip_address(client)
    if address.version == 6 and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    bits = 24 if address.version == 4 else 48
    return str(ipaddress.ip_network(f"{address}/{bits}", strict=False))


def sticky_pick(pool: tuple[Candidate, ...], key: str) -> Candidate:
    """Rendezvous hashing: the highest hash of (key, region, path) wins, so a key moves only when its winner leaves."""

    def score(c: Candidate) -> bytes:
        return hashlib.blake2b(f"{key}|{c.region}|{c.path}".encode(), digest_size=8).digest()

    return max(pool, key=score)


def share_weights(n: int, raw: list[float] | None = None) -> list[int]:
    """Split WEIGHT_SCALE over n candidates in proportion to raw (equal when None), largest remainder first."""
    if n == 0:
        return []
    values = raw if raw is not None else [1.0] * n
    total = sum(values)
    if total <= 0:
        values, total = [1.0] * n, float(n)
    exact = [WEIGHT_SCALE * v / total for v in values]
    floors = [int(x) for x in exact]
    left = WEIGHT_SCALE - sum(floors)
    # ties by position keep the result deterministic
    for i in sorted(range(n), key=lambda i: (floors[i] - exact[i], i))[:left]:
        floors[i] += 1
    return floors

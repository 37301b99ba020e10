"""What the lab emulates: one spec per path (address, ports, impairments) and the scheduled events."""

from __future__ import annotations

import ipaddress
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

MODES = ("auto", "nfqueue", "userspace")


@dataclass(frozen=True, slots=True)
class LabPathSpec:
    """One emulated path: its own 127.x.y.z address, its listeners' ports and its impairments."""

    region: str
    path: str
    address: str
    delay_s: float = 0.0
    jitter_s: float = 0.0
    loss: float = 0.0
    udp_port: int = 7007
    tcp_port: int = 7080
    http_port: int = 8080

    def __post_init__(self) -> None:
        try:
            ip = ipaddress.ip_address(self.address)
        except ValueError:
            raise ValueError(f"{self.key}: lab address {self.address!r} is not an IPv4 address") from None
        if ip.version != 4 or not ip.is_loopback:
            raise ValueError(f"{self.key}: lab address {self.address} must be in 127.0.0.0/8")
        if self.address == "127.0.0.1":
            # clients send from 127.0.0.1, so a rule on it would delay every request too
            raise ValueError(f"{self.key}: lab address must not be 127.0.0.1 (the clients' source); use e.g. 127.0.1.1")
        if not (self.delay_s >= 0 and self.jitter_s >= 0 and math.isfinite(self.delay_s)):
            raise ValueError(f"{self.key}: delay and jitter must be finite and not negative")
        if self.jitter_s > self.delay_s:
            raise ValueError(f"{self.key}: jitter must not exceed delay")
        if not 0.0 <= self.loss <= 1.0:
            raise ValueError(f"{self.key}: loss must be in [0, 1]")

    @property
    def key(self) -> str:
        return f"{self.region}/{self.path}"


@dataclass(frozen=True, slots=True)
class LabEventSpec:
    """A scheduled change on one path: an outage from start to end, or a delay step added from start on."""

    region: str
    path: str
    kind: Literal["outage", "step"]
    start_s: float
    end_s: float | None = None
    delay_s: float | None = None

    def __post_init__(self) -> None:
        if self.kind == "outage":
            if self.end_s is None or self.end_s <= self.start_s:
                raise ValueError(f"{self.region}/{self.path}: an outage needs an end after its start")
        elif self.kind == "step":
            if self.delay_s is None:
                raise ValueError(f"{self.region}/{self.path}: a step needs its delay")
        else:
            raise ValueError(f"{self.region}/{self.path}: unknown event kind {self.kind!r}")


@dataclass(frozen=True, slots=True)
class Impairment:
    """A path's impairments with its own events, evaluated at a time since the lab started."""

    delay_s: float
    jitter_s: float
    loss: float
    outages: tuple[tuple[float, float], ...] = ()
    steps: tuple[tuple[float, float], ...] = ()

    def down(self, t_s: float) -> bool:
        """Whether an outage drops everything at t_s."""
        return any(a <= t_s < b for a, b in self.outages)

    def delay_at(self, t_s: float) -> float:
        """The mean RTT added at t_s: base delay plus every step already started (jitter is centred on it)."""
        return max(0.0, self.delay_s + sum(d for a, d in self.steps if t_s >= a))

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Impairment":
        return cls(d["delay_s"], d["jitter_s"], d["loss"],
                   tuple(tuple(x) for x in d["outages"]), tuple(tuple(x) for x in d["steps"]))


def impairments(paths: list[LabPathSpec], events: list[LabEventSpec]) -> dict[str, Impairment]:
    """Fold the events into one Impairment per path address; an event naming no lab path is an error."""
    by_key = {p.key: p for p in paths}
    outages: dict[str, list[tuple[float, float]]] = {p.key: [] for p in paths}
    steps: dict[str, list[tuple[float, float]]] = {p.key: [] for p in paths}
    for ev in events:
        key = f"{ev.region}/{ev.path}"
        if key not in by_key:
            raise ValueError(f"lab event names {key}, which is not a lab path")
        if ev.kind == "outage":
            outages[key].append((ev.start_s, float(ev.end_s)))  # type: ignore[arg-type]
        else:
            steps[key].append((ev.start_s, float(ev.delay_s)))  # type: ignore[arg-type]
    return {
        p.address: Impairment(p.delay_s, p.jitter_s, p.loss, tuple(sorted(outages[p.key])), tuple(sorted(steps[p.key])))
        for p in paths
    }


def check_unique(paths: list[LabPathSpec]) -> None:
    """Each path needs its own address (the delayer finds the path by source address) and its own name."""
    seen: dict[str, str] = {}
    names: set[str] = set()
    for p in paths:
        if p.address in seen:
            raise ValueError(f"{p.key}: lab address {p.address} is already used by {seen[p.address]}")
        if p.key in names:
            raise ValueError(f"{p.key}: duplicate lab path")
        seen[p.address] = p.key
        names.add(p.key)

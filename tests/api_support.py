"""A Backend for the API tests built from real parts: a Config, a LatencyTable, a Decider and a GroupIndex, on a fake clock.

Drain and pin go through the Decider's own set_drained/pin/unpin; the names are checked here the way the daemon
checks them (AdminError naming the field), and the admin state is kept in a plain set and dict.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from latency_router.api.backend import AdminError
from latency_router.config.models import Config
from latency_router.decider.decision import Decision
from latency_router.decider.engine import Decider, config_groups
from latency_router.decider.groups import GroupIndex
from latency_router.decider.table import LatencyTable, TableConfig, TableSnapshot
from latency_router.probes.base import LossReason, Sample

AGENT = "lab"
EU, US, AP = "eu-west-1", "us-east-1", "ap-southeast-1"

# the lab example's regions and groups (examples/lab.toml) with two services: one plain, one sticky
LAB_TOML = f"""
[agent]
name = "{AGENT}"

[[regions]]
name = "{EU}"
lat = 53.35
lon = -6.26
paths = [
  {{name = "direct", probe = "udp://127.0.1.1:7007", answer = "203.0.113.10"}},
  {{name = "accelerator", probe = "udp://127.0.1.2:7007", answer = "198.51.100.1"}},
]

[[regions]]
name = "{US}"
lat = 38.9
lon = -77.04
paths = [
  {{name = "direct", probe = "udp://127.0.2.1:7007", answer = "203.0.113.20"}},
  {{name = "accelerator", probe = "udp://127.0.2.2:7007", answer = "198.51.100.2"}},
]

[[regions]]
name = "{AP}"
lat = 1.29
lon = 103.85
paths = [
  {{name = "direct", probe = "udp://127.0.3.1:7007", answer = "2001:db8:30::1"}},
  {{name = "accelerator", probe = "udp://127.0.3.2:7007", answer = "2001:db8:31::1"}},
]

[[groups]]
name = "eu"
cidrs = ["192.0.2.0/25"]
lat = 50.1
lon = 8.7

[[groups]]
name = "us"
cidrs = ["192.0.2.128/25", "2001:db8:1::/48"]
lat = 40.71
lon = -74.01

[[groups]]
name = "apac"
cidrs = ["2001:db8:2::/48"]
lat = 1.35
lon = 103.82

[[services]]
name = "api"
policy = "latency"

[[services]]
name = "spread"
chain = ["healthy", "latency", "sticky 3"]
"""

Rtts = Mapping[tuple[str, str], float | None]  # (region, path) -> RTT in ms, None for a lost probe

# what each table group measures: the vantage (for groups without rows of their own), eu and us their own
MEASURED: dict[str, Rtts] = {
    AGENT: {(EU, "direct"): 20.0, (EU, "accelerator"): 15.0, (US, "direct"): 80.0, (US, "accelerator"): 70.0,
            (AP, "direct"): 180.0, (AP, "accelerator"): 150.0},
    "eu": {(EU, "direct"): 12.0, (EU, "accelerator"): 14.0, (US, "direct"): 85.0, (US, "accelerator"): 75.0,
           (AP, "direct"): 190.0, (AP, "accelerator"): 160.0},
    "us": {(EU, "direct"): 90.0, (EU, "accelerator"): 80.0, (US, "direct"): 10.0, (US, "accelerator"): 12.0,
           (AP, "direct"): 200.0, (AP, "accelerator"): 170.0},
}


def lab_config(toml: str = LAB_TOML) -> Config:
    """The test config, validated by the real model."""
    return Config.model_validate(tomllib.loads(toml))


class LabBackend:
    """The Backend protocol over real table and decider objects; `fail` names methods that raise (to test the 500 path)."""

    def __init__(self, config: Config | None = None, now: float = 1000.0) -> None:
        self._config = config or lab_config()
        cfg = self._config
        self.table_ = LatencyTable(TableConfig.from_settings(cfg.probing, cfg.health, cfg.table))
        self.decider = Decider(cfg)
        self.index = GroupIndex.from_config(cfg)
        self.now = now
        self.snapshot: TableSnapshot = self.table_.snapshot(now)
        self.drained: set[str] = set()
        self.pins: dict[tuple[str, str], tuple[str, str]] = {}
        self.alive: tuple[bool, str] = (True, "every loop is running")
        self.ready: tuple[bool, str] = (True, "every target has finished a round")
        self.fail: set[str] = set()
        self.metrics_registry = CollectorRegistry()
        self._decisions_gauge = Gauge(
            "latency_router_decisions", "Decisions handed out", registry=self.metrics_registry
        )

    # --- feeding it ----------------------------------------------------------------------------------------

    def feed(self, measured: Mapping[str, Rtts] = MEASURED, rounds: int = 3, step_s: float = 1.0) -> None:
        """Rounds of one sample per (table group, region, path), each followed by a snapshot and an evaluation."""
        for _ in range(rounds):
            self.now += step_s
            for group, rtts in measured.items():
                for (region, path), rtt_ms in rtts.items():
                    key = (group, region, path)
                    if rtt_ms is None:
                        sample = Sample.lost("udp://lab", "udp", self.now, LossReason.TIMEOUT)
                    else:
                        sample = Sample(target="udp://lab", kind="udp", sent_at=self.now, rtt_ms=rtt_ms)
                    self.table_.add_sample(key, sample, self.now)
                    self.table_.add_round(key, 0.0 if rtt_ms is not None else 1.0, self.now)
            self.evaluate()

    def evaluate(self) -> None:
        """Publish a snapshot and decide from it, as the daemon's decide loop does."""
        self.snapshot = self.table_.snapshot(self.now)
        decisions = self.decider.evaluate(self.snapshot, self.now)
        self._decisions_gauge.set(len(decisions))

    def _maybe_fail(self, name: str) -> None:
        if name in self.fail:
            raise RuntimeError(f"injected failure in {name}")

    # --- the Backend protocol ------------------------------------------------------------------------------

    @property
    def config(self) -> Config:
        return self._config

    def group_of(self, client: str) -> str:
        self._maybe_fail("group_of")
        return self.index.lookup(client)

    def decision(self, service: str, group: str) -> Decision | None:
        self._maybe_fail("decision")
        return self.decider.lookup(service, group)

    def decisions(self) -> Mapping[tuple[str, str], Decision]:
        return self.decider.decisions

    def table(self) -> TableSnapshot:
        self._maybe_fail("table")
        return self.snapshot

    def exporters(self) -> list[dict[str, Any]]:
        return [{"provider": "pdns", "state": "retrying", "last_success_at": 1.5, "last_error": "pdns: HTTP 503",
                 "last_error_at": 2.5, "consecutive_failures": 1, "writes_total": 3, "failures_total": 1,
                 "last_plan": {"create": 1, "update": 0, "delete": 0}, "refused": [], "record_sets": 2}]

    def regions(self) -> list[dict[str, Any]]:
        self._maybe_fail("regions")
        out = []
        for region in self._config.regions:
            paths = []
            for path in region.paths:
                row = self.snapshot.get(self._config.agent.name, region.name, path.name)
                health = "none" if row is None else str(row.health)
                paths.append({"name": path.name, "answer": path.answer, "probe": path.probe, "health": health})
            out.append({"name": region.name, "lat": region.lat, "lon": region.lon,
                        "drained": region.name in self.drained, "paths": paths})
        return out

    def readiness(self) -> tuple[bool, str]:
        return self.ready

    def liveness(self) -> tuple[bool, str]:
        return self.alive

    def _region(self, region: str) -> None:
        if region not in {r.name for r in self._config.regions}:
            raise AdminError(f"region: unknown region {region!r}")

    def _pair(self, service: str, group: str) -> None:
        if service not in {s.name for s in self._config.services}:
            raise AdminError(f"service: unknown service {service!r}")
        if group not in {g.name for g in config_groups(self._config)}:
            raise AdminError(f"group: unknown group {group!r}")

    def drain(self, region: str) -> None:
        self._region(region)
        self.drained.add(region)
        self.decider.set_drained(self.drained)
        self.evaluate()

    def undrain(self, region: str) -> None:
        self._region(region)
        self.drained.discard(region)
        self.decider.set_drained(self.drained)
        self.evaluate()

    def pin(self, service: str, group: str, region: str, path: str | None) -> None:
        self._pair(service, group)
        self._region(region)
        plan = self.decider.plans[(service, group)]
        if path is None:
            path = plan.primary.get(region, "")
        try:
            self.decider.pin(service, group, region, path)
        except KeyError as exc:
            raise AdminError(f"path: {exc.args[0]}") from None
        self.pins[(service, group)] = (region, path)

    def unpin(self, service: str, group: str) -> None:
        self._pair(service, group)
        self.decider.unpin(service, group)
        self.pins.pop((service, group), None)

    def admin_state(self) -> dict[str, Any]:
        return {
            "drained": sorted(self.drained),
            "pins": [{"service": s, "group": g, "region": r, "path": p} for (s, g), (r, p) in sorted(self.pins.items())],
        }

    def metrics(self) -> tuple[bytes, str]:
        self._maybe_fail("metrics")
        return generate_latest(self.metrics_registry), CONTENT_TYPE_LATEST


def fed_backend() -> LabBackend:
    """A LabBackend with three rounds of the MEASURED table in it and decisions made."""
    backend = LabBackend()
    backend.feed()
    return backend

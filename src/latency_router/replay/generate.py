"""Generate replay samples CSVs from the WonderProxy ping data set, with injected noise, loss and events.

Model (every number below is a parameter recorded in the sidecar JSON):
- groups: `n_clients` WonderProxy servers drawn with `seed` among those not in regions.txt;
  regions: the region cities of regions.txt (or a chosen subset).
- direct truth: the measured *avg* RTT client -> region (avg, not min: noise is symmetric around the truth,
  so the truth must be the day's typical RTT; min is a best case that no sample stream centres on).
  Fallback where the pair was not measured: the reverse direction (region -> client); a client with
  a region measured in neither direction is not eligible and is never drawn.
- accelerator truth: `accel_factor` x the fibre floor (great-circle km / 100 km per ms) plus an edge hop of
  `edge_fixed_ms` + the fibre floor to the client's nearest region city (cloud edges sit at least that close).
- every truth is clamped at its pair's fibre floor (no real pair is faster).
- a sample is `truth x (1 + noise_frac x N(0, 1))`, lost with probability `loss`.
- events: `Outage` (no rtt and no truth: the region is unreachable), `Step` (+delta_ms from t_s on),
  `Oscillation` (a square wave: +amplitude_ms during the first half of every period).
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import json
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from latency_router.decider.plan import great_circle_km

PATHS = ("direct", "accelerator")
FIBRE_KM_PER_MS = 100.0  # light in fibre covers about 100 km of great-circle distance per ms of RTT
FORMAT_VERSION = 1
_DATA_FILES = ("servers.csv", "pings.csv", "regions.txt")

# the project root is the parent of src/; the shared data sits beside it
DEFAULT_DATA_DIR = Path(__file__).resolve().parents[3].parent / "shared" / "data"


@dataclass(frozen=True)
class Outage:
    """A region (or one of its paths, if `path` is set) unreachable for t_start_s <= t < t_end_s."""

    region: str
    t_start_s: float
    t_end_s: float
    path: str | None = None
    kind: str = field(default="outage", init=False)


@dataclass(frozen=True)
class Step:
    """The truth of (region, path) rises by delta_ms from t_s on."""

    region: str
    path: str
    t_s: float
    delta_ms: float
    kind: str = field(default="step", init=False)


@dataclass(frozen=True)
class Oscillation:
    """The truth of (region, path) gains amplitude_ms during the first half of every period, within [t_start_s, t_end_s)."""

    region: str
    path: str
    period_s: float
    amplitude_ms: float
    t_start_s: float = 0.0
    t_end_s: float | None = None
    kind: str = field(default="oscillation", init=False)


Event = Outage | Step | Oscillation
_EVENT_KINDS: dict[str, type] = {"outage": Outage, "step": Step, "oscillation": Oscillation}


def event_to_dict(event: Event) -> dict[str, Any]:
    """Return the event as a JSON-ready dict with its `kind`."""
    return dataclasses.asdict(event)


def event_from_dict(data: dict[str, Any]) -> Event:
    """Build an event from a dict written by event_to_dict, or raise ValueError."""
    values = dict(data)
    kind = values.pop("kind", None)
    cls = _EVENT_KINDS.get(kind)  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"event kind {kind!r} is not one of {sorted(_EVENT_KINDS)}")
    try:
        return cls(**values)
    except TypeError as exc:
        raise ValueError(f"{kind} event: {exc}") from None


@dataclass(frozen=True)
class ScenarioParams:
    """Everything the generator's output depends on, besides the data files."""

    seed: int = 7
    n_clients: int = 50
    regions: tuple[str, ...] | None = None  # None: every city of regions.txt
    duration_s: float = 600.0
    interval_s: float = 1.0
    noise_frac: float = 0.03
    loss: float = 0.005
    accel_factor: float = 1.7
    edge_fixed_ms: float = 2.0
    events: tuple[Event, ...] = ()

    def __post_init__(self) -> None:
        problems = []
        if self.n_clients < 1:
            problems.append(f"n_clients: must be at least 1, got {self.n_clients}")
        if not self.duration_s > 0 or not self.interval_s > 0:
            problems.append("duration_s and interval_s: must be positive")
        if not 0 <= self.noise_frac < 1:
            problems.append(f"noise_frac: must be in [0, 1), got {self.noise_frac}")
        if not 0 <= self.loss <= 1:
            problems.append(f"loss: must be in [0, 1], got {self.loss}")
        if self.accel_factor < 1 or self.edge_fixed_ms < 0:
            problems.append("accel_factor: must be at least 1; edge_fixed_ms: must be at least 0")
        for i, ev in enumerate(self.events):
            problems.extend(f"events[{i}]: {p}" for p in _event_problems(ev))
        if problems:
            raise ValueError("; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as a JSON-ready dict."""
        out = dataclasses.asdict(self)
        out["regions"] = list(self.regions) if self.regions is not None else None
        out["events"] = [event_to_dict(e) for e in self.events]
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ScenarioParams:
        """Build parameters from a dict written by to_dict (unknown keys are an error)."""
        values = dict(data)
        unknown = set(values) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"unknown scenario parameters: {sorted(unknown)}")
        if values.get("regions") is not None:
            values["regions"] = tuple(values["regions"])
        values["events"] = tuple(event_from_dict(e) for e in values.get("events", ()))
        return cls(**values)


def _event_problems(ev: Event) -> list[str]:
    path = getattr(ev, "path", None)
    problems = [] if path is None or path in PATHS else [f"path {path!r} is not one of {list(PATHS)}"]
    if isinstance(ev, Outage) and not ev.t_end_s > ev.t_start_s:
        problems.append("t_end_s must be after t_start_s")
    if isinstance(ev, Oscillation):
        if not ev.period_s > 0:
            problems.append("period_s must be positive")
        if ev.t_end_s is not None and not ev.t_end_s > ev.t_start_s:
            problems.append("t_end_s must be after t_start_s")
    return problems


def acceptance_params() -> ScenarioParams:
    """Return DESIGN.md's acceptance scenario: 50 clients (seed 7), 600 s, 3 % noise, 0.5 % loss, an outage and a step."""
    return ScenarioParams(
        events=(
            Outage(region="Frankfurt", t_start_s=200.0, t_end_s=320.0),
            Step(region="Washington", path="direct", t_s=400.0, delta_ms=40.0),
        )
    )


@dataclass(frozen=True)
class Server:
    """One WonderProxy server: its id, name and location."""

    id: str
    name: str
    lat: float
    lon: float


def fibre_floor_ms(a: Server, b: Server) -> float:
    """Return the fastest physically plausible RTT between two servers (great-circle km / 100 km per ms)."""
    return great_circle_km(a.lat, a.lon, b.lat, b.lon) / FIBRE_KM_PER_MS


@dataclass(frozen=True)
class WonderProxyData:
    """The WonderProxy servers, their measured avg RTTs and the region city names."""

    servers: dict[str, Server]  # by name
    avg_ms: dict[tuple[str, str], float]  # (source id, destination id) -> avg RTT
    region_names: tuple[str, ...]
    fingerprint: str  # sha256 over the three files, to refuse regenerating from other data


def load_wonderproxy(data_dir: Path | str | None = None) -> WonderProxyData:
    """Read servers.csv, pings.csv and regions.txt from <data_dir>/wonderproxy (default ../shared/data)."""
    folder = Path(data_dir if data_dir is not None else DEFAULT_DATA_DIR) / "wonderproxy"
    digest = hashlib.sha256()
    for name in _DATA_FILES:
        digest.update((folder / name).read_bytes())
    with (folder / "servers.csv").open(newline="") as fh:
        servers = {
            row["name"]: Server(row["id"], row["name"], float(row["latitude"]), float(row["longitude"]))
            for row in csv.DictReader(fh)
        }
    known_ids = {s.id for s in servers.values()}
    avg_ms: dict[tuple[str, str], float] = {}
    with (folder / "pings.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            src, dst = row["source"], row["destination"]
            # pings.csv names a few ids absent from servers.csv: without a location they are unusable
            if src in known_ids and dst in known_ids and row["avg"]:
                avg_ms[(src, dst)] = float(row["avg"])
    region_names = tuple(line.strip() for line in (folder / "regions.txt").read_text().splitlines() if line.strip())
    missing = [r for r in region_names if r not in servers]
    if missing:
        raise ValueError(f"regions.txt names cities absent from servers.csv: {missing}")
    return WonderProxyData(servers, avg_ms, region_names, digest.hexdigest())


def _direct_ms(data: WonderProxyData, client: Server, region: Server) -> tuple[float, str] | None:
    """Return (avg RTT, 'forward' | 'reverse') for the pair, or None where neither direction was measured."""
    forward = data.avg_ms.get((client.id, region.id))
    if forward is not None:
        return forward, "forward"
    reverse = data.avg_ms.get((region.id, client.id))
    return (reverse, "reverse") if reverse is not None else None


@dataclass(frozen=True)
class Scenario:
    """The resolved scenario: chosen clients and regions, and the noiseless base truth per (group, region, path)."""

    params: ScenarioParams
    clients: tuple[Server, ...]
    regions: tuple[Server, ...]
    base_ms: dict[tuple[str, str, str], float]  # (group, region, path) -> truth before events
    floor_ms: dict[tuple[str, str], float]  # (group, region) -> fibre floor
    reverse_pairs: tuple[tuple[str, str], ...]  # (group, region) pairs that used the reverse direction
    fingerprint: str


def build_scenario(params: ScenarioParams, data: WonderProxyData) -> Scenario:
    """Choose the clients and regions for params and compute each (group, region, path)'s base truth."""
    names = params.regions if params.regions is not None else data.region_names
    unknown = [r for r in names if r not in data.region_names]
    if unknown or len(set(names)) != len(names) or not names:
        raise ValueError(f"regions: must be distinct cities of regions.txt, got unknown {unknown} in {list(names)}")
    regions = tuple(data.servers[n] for n in names)
    for ev in params.events:
        if ev.region not in names:
            raise ValueError(f"event {event_to_dict(ev)}: region {ev.region!r} is not among the scenario's regions")
    region_set = set(data.region_names)
    # a client must have every scenario region measured in one direction or the other
    eligible = sorted(
        (s for s in data.servers.values() if s.name not in region_set and all(_direct_ms(data, s, r) for r in regions)),
        key=lambda s: s.name,
    )
    if params.n_clients > len(eligible):
        raise ValueError(f"n_clients: {params.n_clients} asked, only {len(eligible)} eligible clients in the data")
    drawn = random.Random(f"{params.seed}:clients").sample(eligible, params.n_clients)
    clients = tuple(sorted(drawn, key=lambda s: s.name))
    all_regions = [data.servers[n] for n in data.region_names]
    base: dict[tuple[str, str, str], float] = {}
    floors: dict[tuple[str, str], float] = {}
    reverse: list[tuple[str, str]] = []
    for c in clients:
        # the accelerator's edge is at most as far as the client's nearest region city
        edge_ms = params.edge_fixed_ms + min(fibre_floor_ms(c, r) for r in all_regions)
        for r in regions:
            floor = fibre_floor_ms(c, r)
            direct, direction = _direct_ms(data, c, r)  # type: ignore[misc]
            if direction == "reverse":
                reverse.append((c.name, r.name))
            floors[(c.name, r.name)] = floor
            base[(c.name, r.name, "direct")] = max(floor, direct)
            base[(c.name, r.name, "accelerator")] = max(floor, params.accel_factor * floor + edge_ms)
    return Scenario(params, clients, regions, base, floors, tuple(reverse), data.fingerprint)


def _offset_ms(events: Iterable[Event], t: float) -> float:
    """Return the sum of step and oscillation offsets active at t."""
    total = 0.0
    for ev in events:
        if isinstance(ev, Step) and t >= ev.t_s:
            total += ev.delta_ms
        elif isinstance(ev, Oscillation) and t >= ev.t_start_s and (ev.t_end_s is None or t < ev.t_end_s):
            if ((t - ev.t_start_s) % ev.period_s) < ev.period_s / 2:
                total += ev.amplitude_ms
    return total


def _is_down(events: Iterable[Event], t: float) -> bool:
    return any(isinstance(ev, Outage) and ev.t_start_s <= t < ev.t_end_s for ev in events)


def _time_text(t: float) -> str:
    text = f"{t:.6f}".rstrip("0")
    return text.rstrip(".")


def write_samples(scenario: Scenario, out_csv: Path | str) -> int:
    """Write the samples CSV (t_s,group,region,path,rtt_ms,truth_ms), streaming one instant at a time; return the row count."""
    params = scenario.params
    rng = random.Random(f"{params.seed}:samples")
    gauss, uniform = rng.gauss, rng.random
    noise, loss = params.noise_frac, params.loss
    keys = [(r.name, p) for r in scenario.regions for p in PATHS]
    events_by_key = {
        k: [ev for ev in params.events if ev.region == k[0] and getattr(ev, "path", None) in (None, k[1])] for k in keys
    }
    # rows per group in a fixed order: (prefix text, base truth, fibre floor, index into keys)
    layout = [
        [
            (f"{c.name},{r},{p},", scenario.base_ms[(c.name, r, p)], scenario.floor_ms[(c.name, r)], i)
            for i, (r, p) in enumerate(keys)
        ]
        for c in scenario.clients
    ]
    n_steps = int(math.floor(params.duration_s / params.interval_s + 1e-9))
    rows = 0
    Path(out_csv).parent.mkdir(parents=True, exist_ok=True)
    with Path(out_csv).open("w", newline="") as fh:
        fh.write("t_s,group,region,path,rtt_ms,truth_ms\n")
        for step in range(n_steps):
            t = step * params.interval_s
            t_text = _time_text(t) + ","
            offsets = [_offset_ms(events_by_key[k], t) for k in keys]
            down = [_is_down(events_by_key[k], t) for k in keys]
            lines = []
            append = lines.append
            for group_rows in layout:
                for prefix, base, floor, i in group_rows:
                    if down[i]:
                        append(f"{t_text}{prefix},\n")  # unreachable: no RTT and no truth
                        continue
                    truth = base + offsets[i]
                    if truth < floor:
                        truth = floor
                    # draw both numbers for every sample so a loss does not shift later samples' noise
                    lost = uniform() < loss
                    z = gauss(0.0, 1.0)
                    if lost:
                        append(f"{t_text}{prefix},{truth:.3f}\n")
                    else:
                        rtt = truth * (1.0 + noise * z)
                        append(f"{t_text}{prefix}{max(rtt, 0.001):.3f},{truth:.3f}\n")
            fh.write("".join(lines))
            rows += len(lines)
    return rows


def params_path_for(out_csv: Path | str) -> Path:
    """Return the sidecar JSON path for a samples CSV: samples.csv -> samples.params.json."""
    return Path(out_csv).with_suffix(".params.json")


def generate(params: ScenarioParams, out_csv: Path | str, data_dir: Path | str | None = None) -> Path:
    """Write the samples CSV and its sidecar params JSON; return the JSON's path."""
    data = load_wonderproxy(data_dir)
    scenario = build_scenario(params, data)
    rows = write_samples(scenario, out_csv)
    sidecar = {
        "format": "latency-router replay samples",
        "version": FORMAT_VERSION,
        "params": params.to_dict(),
        "data": {"source": "WonderProxy/WonderNetwork pings 2020-07-19", "sha256": scenario.fingerprint},
        "clients": [dataclasses.asdict(c) for c in scenario.clients],
        "regions": [dataclasses.asdict(r) for r in scenario.regions],
        "paths": list(PATHS),
        "reverse_direction_pairs": [list(p) for p in scenario.reverse_pairs],
        "rows": rows,
    }
    out_json = params_path_for(out_csv)
    out_json.write_text(json.dumps(sidecar, indent=2) + "\n")
    return out_json


def regenerate(params_json: Path | str, out_csv: Path | str, data_dir: Path | str | None = None) -> Path:
    """Regenerate a samples CSV from a sidecar JSON, refusing data files that differ from the original's."""
    sidecar = json.loads(Path(params_json).read_text())
    params = ScenarioParams.from_dict(sidecar["params"])
    expected = sidecar.get("data", {}).get("sha256")
    actual = load_wonderproxy(data_dir).fingerprint
    if expected is not None and expected != actual:
        raise ValueError(f"data files differ from those the scenario was generated from (sha256 {actual} != {expected})")
    return generate(params, out_csv, data_dir)

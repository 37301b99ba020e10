"""The daemon's Prometheus metrics: its own registry, and a collector that reads the table, decisions and engine at scrape time.

Every name starts with `latency_router_`, ends in its unit (`_seconds`, `_ratio`) and counters in `_total`.
Label values come from the config (group, region, path, service, probe kind) or from closed sets (health
states, loss reasons, reload results), never from clients or free text.
"""

from __future__ import annotations

import logging
import math
import platform
import threading
import time
from bisect import bisect_left
from collections.abc import Collection, Iterator, Mapping
from itertools import accumulate
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.utils import floatToGoString

from latency_router.decider.table import HealthState
from latency_router.probes.base import LossReason

if TYPE_CHECKING:
    from latency_router.decider.decision import Decision
    from latency_router.decider.table import TableSnapshot
    from latency_router.probes.scheduler import Round

__all__ = ["FAMILIES", "OUTCOMES", "RTT_BUCKETS_S", "Metrics", "MetricsSource"]

log = logging.getLogger(__name__)

# Upper bounds of the probe RTT histogram, 50 us to 10 s in 1-2-3-5 steps: loopback and LAN RTTs stay resolved.
RTT_BUCKETS_S: tuple[float, ...] = (
    0.00005, 0.0001, 0.0002, 0.0003, 0.0005,
    0.001, 0.002, 0.003, 0.005,
    0.01, 0.02, 0.03, 0.05,
    0.1, 0.2, 0.3, 0.5,
    1.0, 2.0, 3.0, 5.0, 10.0,
)
# A probe's outcome: ok, or one of the loss reasons; nothing else becomes a label value.
OUTCOMES: tuple[str, ...] = ("ok", *(str(r) for r in LossReason))
_RELOAD_RESULTS = ("success", "failure")
_SECTIONS = ("table", "decisions", "engine", "exporters")


class MetricsSource(Protocol):
    """What the collector reads at scrape time; the daemon implements it."""

    def table(self) -> TableSnapshot:
        """The latest table snapshot."""
        ...

    def decisions(self) -> Mapping[tuple[str, str], Decision]:
        """The current decisions by (service, group)."""
        ...

    def engine_stats(self) -> Mapping[str, Any]:
        """Scheduler.stats(), plus "socket_drops" from EngineCounters."""
        ...


class _Family(NamedTuple):
    kind: str  # gauge, counter or histogram
    help: str  # one plain line: it goes out unescaped
    labels: tuple[str, ...]


_ROW = ("group", "region", "path")
_PROBE = ("region", "path", "kind")

# Every family this module exposes, by its exposed name (counters with their _total); the one list of them.
FAMILIES: dict[str, _Family] = {
    "latency_router_probe_rtt_seconds": _Family(
        "histogram", "Round-trip time of each answered probe, by region, path and probe kind.", _PROBE),
    "latency_router_probe_results_total": _Family(
        "counter", "Probes sent, by region, path, kind and outcome (ok or the loss reason).", (*_PROBE, "outcome")),
    "latency_router_table_rtt_ewma_seconds": _Family(
        "gauge", "Time-decayed mean RTT of a table row.", _ROW),
    "latency_router_table_rtt_p50_seconds": _Family(
        "gauge", "Median RTT over a table row's window.", _ROW),
    "latency_router_table_rtt_p95_seconds": _Family(
        "gauge", "95th percentile RTT over a table row's window.", _ROW),
    "latency_router_table_rtt_p99_seconds": _Family(
        "gauge", "99th percentile RTT over a table row's window.", _ROW),
    "latency_router_table_rtt_min_seconds": _Family(
        "gauge", "Lowest RTT over a table row's window.", _ROW),
    "latency_router_table_jitter_seconds": _Family(
        "gauge", "RFC 3550 interarrival jitter of a table row.", _ROW),
    "latency_router_table_loss_ratio": _Family(
        "gauge", "Lost probes over probes sent in a table row's window.", _ROW),
    "latency_router_table_samples_total": _Family(
        "counter", "Samples folded into a table row, lost ones included.", _ROW),
    "latency_router_table_samples_lost_total": _Family(
        "counter", "Lost samples folded into a table row.", _ROW),
    "latency_router_table_row_health": _Family(
        "gauge", "A table row's health state: 1 for the current state, 0 for the others.", (*_ROW, "state")),
    "latency_router_table_row_healthy": _Family(
        "gauge", "1 when the policies take a table row for healthy, else 0.", _ROW),
    "latency_router_decision_info": _Family(
        "gauge", "The current decision of a (service, group): always 1, the choice is in the labels.",
        ("service", "group", "region", "path", "basis", "fallback")),
    "latency_router_decision_rtt_seconds": _Family(
        "gauge", "The expected RTT of the current decision of a (service, group).", ("service", "group")),
    "latency_router_decision_changes_total": _Family(
        "counter", "Times the decision of a (service, group) moved to another region or path.", ("service", "group")),
    "latency_router_engine_loop_lag_p50_seconds": _Family(
        "gauge", "Median event-loop lag over the lag monitor's recent window.", ()),
    "latency_router_engine_loop_lag_p99_seconds": _Family(
        "gauge", "99th percentile event-loop lag over the lag monitor's recent window.", ()),
    "latency_router_engine_loop_lag_max_seconds": _Family(
        "gauge", "Largest event-loop lag over the lag monitor's recent window.", ()),
    "latency_router_engine_targets": _Family(
        "gauge", "Probe targets the engine runs.", ()),
    "latency_router_engine_probes_in_flight": _Family(
        "gauge", "Probes sent and not yet back.", ()),
    "latency_router_engine_probes_in_flight_limit": _Family(
        "gauge", "The most probes allowed in flight at once.", ()),
    "latency_router_engine_probes_waiting": _Family(
        "gauge", "Probes due and waiting for an in-flight slot.", ()),
    "latency_router_engine_probes_sent_total": _Family(
        "counter", "Probes the engine sent.", ()),
    "latency_router_engine_samples_total": _Family(
        "counter", "Samples the engine took, by outcome (ok or the loss reason).", ("outcome",)),
    "latency_router_engine_late_probes_total": _Family(
        "counter", "Probes sent late because the event loop was busy.", ()),
    "latency_router_engine_skipped_probes_total": _Family(
        "counter", "Probes left out because the event loop stalled past their slot.", ()),
    "latency_router_engine_skipped_rounds_total": _Family(
        "counter", "Rounds left out because the event loop fell a whole interval behind.", ()),
    "latency_router_engine_consumer_errors_total": _Family(
        "counter", "Samples or rounds whose consumer raised.", ()),
    "latency_router_engine_socket_drops_total": _Family(
        "counter", "Datagrams the kernel dropped on the engine's sockets (receive buffer full).", ()),
    "latency_router_engine_late_replies_total": _Family(
        "counter", "Replies that came back after their probe's timeout.", ()),
    "latency_router_config_reloads_total": _Family(
        "counter", "Config reloads, by result (success or failure).", ("result",)),
    "latency_router_config_last_reload_successful": _Family(
        "gauge", "1 when the last config load or reload succeeded, else 0.", ()),
    "latency_router_config_last_reload_success_timestamp_seconds": _Family(
        "gauge", "Unix time of the last successful config load or reload.", ()),
    "latency_router_build_info": _Family(
        "gauge", "Always 1; the version of latency-router and of Python in the labels.", ("version", "python")),
    "latency_router_dns_exporter_up": _Family(
        "gauge", "1 while the DNS provider holds what the decisions want (state ok), else 0.", ("provider",)),
    "latency_router_dns_exporter_state": _Family(
        "gauge", "1 for the DNS exporter's current state (ok, pending, retrying, failed, refused), 0 for the others.",
        ("provider", "state")),
    "latency_router_dns_writes_total": _Family("counter", "Writes the DNS exporter made to its provider.", ("provider",)),
    "latency_router_dns_failures_total": _Family(
        "counter", "Failed attempts (a provider error or a read-back that differed).", ("provider",)),
    "latency_router_dns_last_success_timestamp_seconds": _Family(
        "gauge", "Unix time the provider last held what the decisions wanted.", ("provider",)),
    "latency_router_metrics_collect_errors_total": _Family(
        "counter", "Scrapes where reading a section (table, decisions, engine) raised; see the log.", ("section",)),
}

# (family, RowSnapshot field in milliseconds)
_ROW_SECONDS = (
    ("latency_router_table_rtt_ewma_seconds", "ewma_ms"),
    ("latency_router_table_rtt_p50_seconds", "p50_ms"),
    ("latency_router_table_rtt_p95_seconds", "p95_ms"),
    ("latency_router_table_rtt_p99_seconds", "p99_ms"),
    ("latency_router_table_rtt_min_seconds", "min_ms"),
    ("latency_router_table_jitter_seconds", "jitter_ms"),
)
# (family, key of engine_stats())
_ENGINE_VALUES = (
    ("latency_router_engine_targets", "targets"),
    ("latency_router_engine_probes_in_flight", "probes_in_flight"),
    ("latency_router_engine_probes_in_flight_limit", "max_in_flight"),
    ("latency_router_engine_probes_waiting", "probes_waiting_for_slot"),
    ("latency_router_engine_probes_sent_total", "probes_sent"),
    ("latency_router_engine_late_probes_total", "late_probes"),
    ("latency_router_engine_skipped_probes_total", "skipped_probes"),
    ("latency_router_engine_skipped_rounds_total", "skipped_rounds"),
    ("latency_router_engine_consumer_errors_total", "consumer_errors"),
    ("latency_router_engine_socket_drops_total", "socket_drops"),
    ("latency_router_engine_late_replies_total", "late_replies"),
)
# (family, key of engine_stats()["loop_lag_ms"]), the first key present wins
_LAG = (
    ("latency_router_engine_loop_lag_p50_seconds", ("p50",)),
    ("latency_router_engine_loop_lag_p99_seconds", ("p99",)),
    ("latency_router_engine_loop_lag_max_seconds", ("window_max", "max")),
)


_LE = tuple(floatToGoString(b) for b in RTT_BUCKETS_S) + ("+Inf",)
_OUTCOME_INDEX = {o: i for i, o in enumerate(OUTCOMES)}

Labels = tuple[str, ...]


def _number(value: Any) -> float | None:
    """A finite number as float, else None: a missing or broken value is left out, never exposed as NaN."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _outcome(sample: Any) -> str:
    if sample.loss is None:
        return "ok"
    try:
        return str(LossReason(sample.loss))
    except ValueError:
        return str(LossReason.ERROR)


def _escape(text: str) -> str:
    return text.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


class _Histogram:
    """Counts per bucket (not cumulative; the last one is +Inf), their sum, and the probe results by outcome."""

    __slots__ = ("counts", "sum", "outcomes")

    def __init__(self) -> None:
        self.counts = [0] * (len(RTT_BUCKETS_S) + 1)
        self.sum = 0.0
        # every outcome exists from the first round on, so rate() has a series before the first loss
        self.outcomes = [0] * len(OUTCOMES)


class _Scrape:
    """One scrape's values: (label values, value) per family, and the histogram's (labels, cumulative counts, sum)."""

    __slots__ = ("values", "histograms")

    def __init__(self) -> None:
        self.values: dict[str, list[tuple[Labels, float]]] = {
            name: [] for name, spec in FAMILIES.items() if spec.kind != "histogram"
        }
        self.histograms: list[tuple[Labels, list[int], float]] = []

    def text(self) -> str:
        """The Prometheus text format (0.0.4), written directly: a table of thousands of rows renders in milliseconds."""
        out: list[str] = []
        add = out.append
        # label values recur across families (a row's in each of its gauges): format each set once per label names
        braces: dict[tuple[str, ...], dict[Labels, str]] = {}
        for name, spec in FAMILIES.items():
            add(f"# HELP {name} {spec.help}\n# TYPE {name} {spec.kind}\n")
            names = spec.labels
            if spec.kind == "histogram":
                for labels, counts, total in self.histograms:
                    inner = ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, labels))
                    out.extend([f'{name}_bucket{{{inner},le="{le}"}} {count}\n' for le, count in zip(_LE, counts)])
                    add(f"{name}_count{{{inner}}} {counts[-1]}\n{name}_sum{{{inner}}} {total!r}\n")
                continue
            cache = braces.setdefault(names, {})
            for labels, _ in self.values[name]:
                if labels not in cache:
                    cache[labels] = "{" + ",".join(f'{n}="{_escape(v)}"' for n, v in zip(names, labels)) + "}" if names else ""
            out.extend([f"{name}{cache[labels]} {value!r}\n" for labels, value in self.values[name]])
        return "".join(out)

    def families(self) -> Iterator[Metric]:
        """The same values as prometheus_client metric families."""
        for name, spec in FAMILIES.items():
            if spec.kind == "counter":
                family: Metric = CounterMetricFamily(name, spec.help, labels=spec.labels)
            elif spec.kind == "histogram":
                family = HistogramMetricFamily(name, spec.help, labels=spec.labels)
                for labels, counts, total in self.histograms:
                    family.add_metric(list(labels), list(zip(_LE, counts)), total)
                yield family
                continue
            else:
                family = GaugeMetricFamily(name, spec.help, labels=spec.labels)
            for labels, value in self.values[name]:
                family.add_metric(list(labels), value)
            yield family


class Metrics:
    """The daemon's metrics: probe histograms and counters it is fed, plus the table, decisions and engine read at scrape time.

    Also a prometheus_client Collector, registered in its own `registry` (never the global one) beside the standard
    process metrics.
    """

    def __init__(
        self,
        source: MetricsSource,
        *,
        version: str,
        loaded_at_unix: float | None = None,
        process_metrics: bool = True,
    ) -> None:
        # loaded_at_unix: when the config in force was loaded (default now); the reload gauges start from it.
        self.source = source
        self.version = version
        self.python = platform.python_version()
        self._lock = threading.Lock()  # the daemon may render in a worker thread while the loop observes rounds
        self._probes: dict[Labels, _Histogram] = {}
        self._changes: dict[tuple[str, str], int] = {}
        self._reloads = dict.fromkeys(_RELOAD_RESULTS, 0)
        self._collect_errors = dict.fromkeys(_SECTIONS, 0)
        self._last_reload_ok = True
        loaded = time.time() if loaded_at_unix is None else loaded_at_unix
        self._last_reload_success_unix = self._checked_time("loaded_at_unix", loaded)
        self.registry = CollectorRegistry()
        self.registry.register(self)
        self._process: ProcessCollector | None = None
        if process_metrics:
            self._process = ProcessCollector(registry=self.registry)

    @staticmethod
    def _checked_time(name: str, value: Any) -> float:
        number = _number(value)
        if number is None or number < 0:
            raise ValueError(f"{name} must be a finite, non-negative Unix time, got {value!r}")
        return number

    # What the daemon calls.

    def observe_round(self, region: str, path: str, kind: str, rnd: Round) -> None:
        """Count a finished round's probes by outcome and put each RTT into the histogram."""
        key = (region, path, kind)
        with self._lock:
            probe = self._probes.get(key)
            if probe is None:
                probe = self._probes[key] = _Histogram()
            for sample in rnd.samples:
                probe.outcomes[_OUTCOME_INDEX[_outcome(sample)]] += 1
                rtt_ms = _number(sample.rtt_ms) if sample.loss is None else None
                if rtt_ms is not None:
                    rtt_s = rtt_ms / 1e3
                    probe.counts[bisect_left(RTT_BUCKETS_S, rtt_s)] += 1
                    probe.sum += rtt_s

    def decision_changed(self, service: str, group: str) -> None:
        """Count one move of the (service, group) decision to another region or path."""
        key = (service, group)
        with self._lock:
            self._changes[key] = self._changes.get(key, 0) + 1

    def reload(self, ok: bool, when_unix: float) -> None:
        """Record a config reload: its result, and when ok its time."""
        when = self._checked_time("when_unix", when_unix)
        with self._lock:
            self._reloads["success" if ok else "failure"] += 1
            self._last_reload_ok = bool(ok)
            if ok:
                self._last_reload_success_unix = when

    def retain(
        self,
        paths: Collection[tuple[str, str]] | None = None,
        decisions: Collection[tuple[str, str]] | None = None,
    ) -> None:
        """Drop the series of (region, path)s and (service, group)s a reload removed; None keeps all of that kind."""
        with self._lock:
            if paths is not None:
                keep = set(paths)
                for key in [k for k in self._probes if (k[0], k[1]) not in keep]:
                    del self._probes[key]
            if decisions is not None:
                keep = set(decisions)
                for key in [k for k in self._changes if k not in keep]:
                    del self._changes[key]

    def render(self) -> tuple[bytes, str]:
        """The exposition in the Prometheus text format, and its Content-Type header value."""
        text = self._scrape().text()
        if self._process is not None:
            text += generate_latest(self._process).decode()  # type: ignore[arg-type]
        return text.encode(), CONTENT_TYPE_PLAIN_0_0_4

    # The Collector interface, for anyone reading `registry`.

    def describe(self) -> Iterator[Metric]:
        """Every family, empty: lets the registry catch a name clash when registering."""
        return _Scrape().families()

    def collect(self) -> Iterator[Metric]:
        """Every family, read now from the source and from what was observed."""
        return self._scrape().families()

    # Reading.

    def _scrape(self) -> _Scrape:
        out = _Scrape()
        for section, read in (("table", self._table), ("decisions", self._decisions), ("engine", self._engine),
                              ("exporters", self._exporters)):
            try:
                read(out.values)
            except Exception:  # noqa: BLE001 - a broken section must not fail the whole scrape
                self._collect_errors[section] += 1
                log.exception("metrics: reading the %s failed", section)
        self._observed(out)
        return out

    def _observed(self, out: _Scrape) -> None:
        with self._lock:
            probes = [(k, list(p.counts), p.sum, list(p.outcomes)) for k, p in self._probes.items()]
            reloads = dict(self._reloads)
            last_ok, last_success = self._last_reload_ok, self._last_reload_success_unix
        v = out.values
        results = v["latency_router_probe_results_total"]
        for key, counts, total, outcomes in sorted(probes):
            cumulative = list(accumulate(counts))
            out.histograms.append((key, cumulative, total))
            results.extend(((*key, outcome), n) for outcome, n in zip(OUTCOMES, outcomes))
        for result in _RELOAD_RESULTS:
            v["latency_router_config_reloads_total"].append(((result,), reloads[result]))
        v["latency_router_config_last_reload_successful"].append(((), 1 if last_ok else 0))
        v["latency_router_config_last_reload_success_timestamp_seconds"].append(((), last_success))
        v["latency_router_build_info"].append(((self.version, self.python), 1))
        for section in _SECTIONS:
            v["latency_router_metrics_collect_errors_total"].append(((section,), self._collect_errors[section]))

    def _table(self, v: dict[str, list[tuple[Labels, float]]]) -> None:
        snapshot = self.source.table()
        seconds = [(v[name], field) for name, field in _ROW_SECONDS]
        loss_out = v["latency_router_table_loss_ratio"]
        samples_out = v["latency_router_table_samples_total"]
        lost_out = v["latency_router_table_samples_lost_total"]
        health_out = v["latency_router_table_row_health"]
        healthy_out = v["latency_router_table_row_healthy"]
        states = [(s, (str(s),)) for s in HealthState]
        for key, row in sorted(snapshot.rows.items()):
            labels = tuple(key)
            for target, field in seconds:
                ms = _number(getattr(row, field))
                if ms is not None:
                    target.append((labels, ms / 1e3))
            loss = _number(row.loss)
            if loss is not None:
                loss_out.append((labels, loss))
            count = _number(row.samples)
            if count is not None:
                samples_out.append((labels, count))
            count = _number(getattr(row, "lost", None))
            if count is not None:
                lost_out.append((labels, count))
            state = HealthState(row.health)
            health_out.extend(((*labels, *name), 1 if each is state else 0) for each, name in states)
            healthy_out.append((labels, 1 if row.healthy else 0))

    def _decisions(self, v: dict[str, list[tuple[Labels, float]]]) -> None:
        decisions = self.source.decisions()
        with self._lock:
            changes = dict(self._changes)
        for (service, group), d in sorted(decisions.items()):
            key = (service, group)
            v["latency_router_decision_info"].append(
                ((service, group, d.region or "", d.path or "", d.basis, d.fallback or ""), 1))
            rtt_ms = _number(d.rtt_ms)
            if rtt_ms is not None:
                v["latency_router_decision_rtt_seconds"].append((key, rtt_ms / 1e3))
            v["latency_router_decision_changes_total"].append((key, changes.get(key, 0)))

    def _exporters(self, v: dict[str, list[tuple[Labels, float]]]) -> None:
        read = getattr(self.source, "exporters", None)
        if read is None:
            return
        from latency_router.exporters.dns.runner import STATES

        for status in read():
            labels = (str(status["provider"]),)
            v["latency_router_dns_exporter_up"].append((labels, 1 if status["state"] == "ok" else 0))
            v["latency_router_dns_exporter_state"].extend(
                ((*labels, state), 1 if status["state"] == state else 0) for state in STATES)
            v["latency_router_dns_writes_total"].append((labels, status["writes_total"]))
            v["latency_router_dns_failures_total"].append((labels, status["failures_total"]))
            if status.get("last_success_at") is not None:
                v["latency_router_dns_last_success_timestamp_seconds"].append((labels, status["last_success_at"]))

    def _engine(self, v: dict[str, list[tuple[Labels, float]]]) -> None:
        stats = self.source.engine_stats()
        for name, key in _ENGINE_VALUES:
            value = _number(stats.get(key))
            if value is not None:
                v[name].append(((), value))
        lag = stats.get("loop_lag_ms")
        if isinstance(lag, Mapping):
            for name, keys in _LAG:
                ms = next((x for x in (_number(lag.get(k)) for k in keys) if x is not None), None)
                if ms is not None:
                    v[name].append(((), ms / 1e3))
        ok = _number(stats.get("samples_ok"))
        reasons = stats.get("loss_reasons")
        if ok is None and not isinstance(reasons, Mapping):
            return
        by_outcome = dict.fromkeys(OUTCOMES, 0.0)
        by_outcome["ok"] = ok or 0.0
        for reason, count in reasons.items() if isinstance(reasons, Mapping) else ():
            n = _number(count)
            if n is not None:
                # a reason outside LossReason is counted as an error: label values stay a closed set
                by_outcome[reason if reason in by_outcome and reason != "ok" else str(LossReason.ERROR)] += n
        v["latency_router_engine_samples_total"].extend(((o,), n) for o, n in by_outcome.items())

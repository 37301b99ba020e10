"""What the deploy and metrics tests share: every PromQL expression in deploy/, the metric names an expression reads,
and a Metrics instance over a real latency table and decider."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any


from support import installed
import yaml

from latency_router.config import Config, parse_config
from latency_router.decider.decision import Decision
from latency_router.decider.engine import Decider
from latency_router.decider.table import LatencyTable, TableConfig, TableSnapshot
from latency_router.exporters.prometheus import Metrics
from latency_router.probes.base import LossReason, Sample
from latency_router.probes.scheduler import Round, Scheduler

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
PROMETHEUS_YML = DEPLOY / "prometheus" / "prometheus.yml"
RULES_YML = DEPLOY / "prometheus" / "rules.yml"
RULES_TEST_YML = DEPLOY / "prometheus" / "rules_test.yml"
DASHBOARD_JSON = DEPLOY / "grafana" / "latency-router.json"
SYSTEMD_UNIT = DEPLOY / "systemd" / "latency-router.service"

# Grafana's built-in variables, as a query without Grafana would write them.
GRAFANA_BUILTINS = {"__rate_interval": "1m", "__interval": "15s", "__range": "1h"}
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)")
_THRESHOLD = re.compile(r"^(?P<value>.*?)\s*(?:==|!=|>=|<=|>|<)\s*(?:bool\s+)?[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?\s*$", re.S)
_LABEL_VALUES = re.compile(r"^\s*label_values\(\s*(?P<selector>.*),\s*\w+\s*\)\s*$", re.S)


def promtool() -> str:
    """promtool's path; CI installs it (scripts/setup-system), so only a local run without it may skip."""
    return installed("promtool", "prometheus")


def substitute(expr: str) -> str:
    """The expression with Grafana's variables filled in: built-in intervals by durations, the dashboard's own by '.*'."""

    def value(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2)
        return GRAFANA_BUILTINS.get(name, ".*")

    return _VARIABLE.sub(value, expr)


def without_threshold(expr: str) -> str:
    """An alert expression without its final top-level comparison to a number; ValueError when it has none."""
    m = _THRESHOLD.match(expr.strip())
    value = m.group("value") if m else ""
    if not value or value.count("(") != value.count(")"):
        raise ValueError(f"no top-level threshold comparison at the end of {expr!r}")
    return value


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard, as loaded from its JSON."""
    return json.loads(DASHBOARD_JSON.read_text())


def panels(board: Mapping[str, Any] | None = None) -> Iterator[dict[str, Any]]:
    """Every panel, rows' nested panels included."""
    for panel in (board or dashboard()).get("panels", []):
        yield panel
        yield from panel.get("panels", [])


def alert_rules() -> list[dict[str, Any]]:
    """Every alerting rule of rules.yml."""
    doc = yaml.safe_load(RULES_YML.read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def all_exprs(substituted: bool = True) -> list[tuple[str, str]]:
    """(name, PromQL) of every dashboard query and variable, every alert, and every alert without its threshold.

    Names: 'panel:<title>:<refId>', 'variable:<name>', 'alert:<name>', 'alert:<name>:value'. With `substituted`,
    Grafana variables are filled in (see substitute), so each expression runs as it is against Prometheus.
    """
    fill = substitute if substituted else (lambda e: e)
    out: list[tuple[str, str]] = []
    board = dashboard()
    for panel in panels(board):
        for target in panel.get("targets", []):
            if target.get("expr"):
                out.append((f"panel:{panel['title']}:{target['refId']}", fill(target["expr"])))
    for var in board.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], Mapping) else var["query"]
        m = _LABEL_VALUES.match(query)
        out.append((f"variable:{var['name']}", fill(m.group("selector") if m else query)))
    for rule in alert_rules():
        expr = " ".join(rule["expr"].split())
        out.append((f"alert:{rule['alert']}", expr))
        out.append((f"alert:{rule['alert']}:value", without_threshold(expr)))
    return out


_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\]]*\]")
_LABEL_LIST = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_IDENTIFIER = re.compile(r"(?<![\w:.$])([A-Za-z_:][\w:]*)(?![\w:])(?!\s*\()")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
             "inf", "nan", "Inf", "NaN"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (label names, functions, keywords and durations left out)."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _LABEL_LIST.sub(" ", text)
    return {m for m in _IDENTIFIER.findall(text) if m not in _KEYWORDS}


# The lab of the metrics tests: eu-west-1 answers on both paths, us-east-1's direct path is dead and its accelerator
# loses one probe in five, ap-southeast-1's direct path stops answering after t=3 (stale by the end) and its
# accelerator path is never probed (unknown, no statistics).
REGIONS = {"eu-west-1": (53.35, -6.26), "us-east-1": (38.9, -77.04), "ap-southeast-1": (1.29, 103.85)}
GROUPS = ("eu", "us")
END_S = 10.0


def lab_config() -> Config:
    """Three regions of two paths, two groups and one latency service."""
    parts = []
    for i, (name, (lat, lon)) in enumerate(REGIONS.items(), start=1):
        parts.append(
            f'[[regions]]\nname = "{name}"\nlat = {lat}\nlon = {lon}\n'
            f'[[regions.paths]]\nname = "direct"\nprobe = "udp://203.0.113.{i}:7007"\nanswer = "203.0.113.{i}"\n'
            f'[[regions.paths]]\nname = "accelerator"\nprobe = "udp://198.51.100.{i}:7007"\nanswer = "198.51.100.{i}"\n'
        )
    parts.append('[[groups]]\nname = "eu"\ncidrs = ["192.0.2.0/25"]\nlat = 50.1\nlon = 8.7\n')
    parts.append('[[groups]]\nname = "us"\ncidrs = ["192.0.2.128/25"]\nlat = 40.7\nlon = -74.0\n')
    parts.append('[[services]]\nname = "api"\npolicy = "latency"\nhysteresis = {dwell = "0s"}\n')
    return parse_config("\n".join(parts))


def lab_round(region: str, path: str, t: float) -> Round | None:
    """The round the lab's (region, path) reports at second t, or None when it reports none."""
    ok = lambda rtt: Sample("udp://lab", "udp", t, rtt_ms=rtt)  # noqa: E731
    lost = lambda reason=LossReason.TIMEOUT: Sample.lost("udp://lab", "udp", t, reason)  # noqa: E731
    i = int(t)
    match region, path:
        case "eu-west-1", "direct":
            samples = [ok(20.0 + 0.1 * ((i + k) % 3)) for k in range(5)]
        case "eu-west-1", "accelerator":
            samples = [ok((30.0 if t < 3 else 12.0) + 0.05 * k) for k in range(5)]
        case "us-east-1", "direct":
            samples = [lost(), lost(LossReason.REFUSED), lost(), lost(), lost()]
        case "us-east-1", "accelerator":
            samples = [ok(90.0), ok(91.0), lost(), ok(92.5), ok(0.04)]
        case "ap-southeast-1", "direct" if t <= 3:
            samples = [ok(180.0 + k) for k in range(5)]
        case _:
            return None
    return Round(f"{region}/{path}", i, t, tuple(samples))


class TableSource:
    """A MetricsSource over a real LatencyTable and Decider, fed the way the daemon feeds them."""

    def __init__(self, config: Config, engine: Mapping[str, Any]) -> None:
        self.config = config
        self.latency_table = LatencyTable(TableConfig(interval_s=1.0))
        self.decider = Decider(config)
        self.engine = dict(engine)
        self.now = 0.0

    def table(self) -> TableSnapshot:
        return self.latency_table.snapshot(self.now)

    def decisions(self) -> Mapping[tuple[str, str], Decision]:
        return self.decider.decisions

    def engine_stats(self) -> dict[str, Any]:
        return self.engine


def engine_stats() -> dict[str, Any]:
    """A real Scheduler's stats() with the values a busy engine would show, plus the daemon's socket_drops."""
    stats = Scheduler([], interval_s=1.0, timeout_s=0.5).stats()
    stats.update(
        targets=6, probes_in_flight=7, probes_waiting_for_slot=2, probes_sent=250, samples_ok=180, samples_lost=70,
        loss_reasons={"timeout": 66, "refused": 4}, late_probes=5, skipped_probes=1, skipped_rounds=0,
        loop_lag_ms={"last": 0.4, "p50": 0.25, "p99": 12.5, "window_max": 31.0, "max": 250.0, "count": 100},
        socket_drops=3, late_replies=2,
    )
    return stats


def lab_metrics(version: str = "1.2.3", loaded_at_unix: float = 1_700_000_000.0) -> tuple[Metrics, TableSource]:
    """Metrics after END_S seconds of the lab: rounds observed, the table fed and the decider run every second."""
    config = lab_config()
    source = TableSource(config, engine_stats())
    metrics = Metrics(source, version=version, loaded_at_unix=loaded_at_unix)
    table = source.latency_table
    for group in GROUPS:
        for region in config.regions:
            for path in region.paths:
                table.ensure((group, region.name, path.name))
    last: dict[tuple[str, str], tuple[str | None, str | None]] = {}
    for t in range(int(END_S) + 1):
        source.now = float(t)
        for region in config.regions:
            for path in region.paths:
                rnd = lab_round(region.name, path.name, float(t))
                if rnd is None:
                    continue
                metrics.observe_round(region.name, path.name, "udp", rnd)
                for group in GROUPS:  # every group is measured by the local vantage
                    table.add_round_result((group, region.name, path.name), rnd, float(t))
        for key, d in source.decider.evaluate(source.table(), float(t)).items():
            if key in last and last[key] != (d.region, d.path):
                metrics.decision_changed(*key)
            last[key] = (d.region, d.path)
    return metrics, source

"""deploy/: the Prometheus config and alert rules (promtool), the Grafana dashboard's queries against the metrics the
daemon really exposes, and the systemd unit."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from support import installed
import yaml
from prometheus_client.parser import text_string_to_metric_families

from deploy_support import (
    DASHBOARD_JSON, PROMETHEUS_YML, RULES_TEST_YML, RULES_YML, SYSTEMD_UNIT, alert_rules, all_exprs, dashboard,
    lab_metrics, metric_names, panels, promtool, substitute, without_threshold,
)

REQUIRED_ALERTS = {
    "LatencyRouterRegionDown", "LatencyRouterGroupDegraded", "LatencyRouterDecisionsFlapping",
    "LatencyRouterEngineLagging", "LatencyRouterTableStale",
}


def run_promtool(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=60)


@pytest.fixture(scope="module")
def exposed() -> set[str]:
    """Every sample name a Metrics over a real table, decider and engine stats exposes."""
    metrics, _ = lab_metrics()
    body, _ = metrics.render()
    return {s.name for f in text_string_to_metric_families(body.decode()) for s in f.samples}


# Prometheus

def test_prometheus_config_is_valid_and_scrapes_the_daemon():
    done = run_promtool("check", "config", str(PROMETHEUS_YML))
    assert done.returncode == 0, done.stdout + done.stderr
    config = yaml.safe_load(PROMETHEUS_YML.read_text())
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "latency-router"]
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9180"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    assert [PROMETHEUS_YML.parent / f for f in config["rule_files"]] == [RULES_YML]


def test_rules_are_valid():
    done = run_promtool("check", "rules", str(RULES_YML))
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_unit_tests_pass():
    done = run_promtool("test", "rules", str(RULES_TEST_YML))
    assert done.returncode == 0, done.stdout + done.stderr


def test_rules_unit_tests_can_fail(tmp_path):
    # the same tests against rules whose region-down threshold is wrong must fail
    (tmp_path / "rules.yml").write_text(RULES_YML.read_text().replace(
        "max by (job, instance, region) (latency_router_table_row_healthy) == 0",
        "min by (job, instance, region) (latency_router_table_row_healthy) == 0"))
    (tmp_path / "rules_test.yml").write_text(RULES_TEST_YML.read_text())
    done = run_promtool("test", "rules", str(tmp_path / "rules_test.yml"))
    assert done.returncode != 0 and "LatencyRouterRegionDown" in done.stdout + done.stderr


def test_every_alert_is_complete():
    rules = alert_rules()
    assert REQUIRED_ALERTS <= {r["alert"] for r in rules}
    for rule in rules:
        name = rule["alert"]
        assert re.fullmatch(r"\d+[smh]", str(rule.get("for", ""))), f"{name}: no for:"
        assert rule["labels"]["severity"] in ("critical", "warning", "info"), name
        assert rule["annotations"].get("summary") and rule["annotations"].get("description"), name
        assert without_threshold(" ".join(rule["expr"].split())), name


def test_every_alert_is_tested_firing_and_quiet():
    doc = yaml.safe_load(RULES_TEST_YML.read_text())
    fires, quiet = set(), set()
    for test in doc["tests"]:
        for case in test["alert_rule_test"]:
            (fires if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - fires == set(), "alerts never tested firing"
    assert names - quiet == set(), "alerts never tested quiet"


# Every expression: its syntax, and the metrics it reads

def test_all_exprs_lists_every_panel_query_and_alert():
    exprs = dict(all_exprs())
    assert len(exprs) == len(all_exprs()), "duplicate names"
    queries = [t for p in panels() for t in p.get("targets", []) if t.get("expr")]
    assert sum(n.startswith("panel:") for n in exprs) == len(queries) > 10
    for rule in alert_rules():
        assert f"alert:{rule['alert']}" in exprs
        value = exprs[f"alert:{rule['alert']}:value"]
        assert value != exprs[f"alert:{rule['alert']}"] and not re.search(r"(==|>|<)\s*[\d.]+\s*$", value)
    assert not any("$" in e for e in exprs.values()), "a Grafana variable was left in"


def test_every_expression_parses(tmp_path):
    # promtool parses each expression as a recording rule: the dashboard's (variables filled in) and the alerts'
    names, rules = [], []
    for i, (name, expr) in enumerate(all_exprs()):
        names.append(name)
        rules.append({"record": f"check:expr_{i}", "expr": expr})
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "exprs", "rules": rules}]}))
    done = run_promtool("check", "rules", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"{len(rules)} rules found" in done.stdout


def test_every_expression_reads_only_metrics_the_daemon_exposes(exposed):
    for name, expr in all_exprs():
        used = metric_names(expr)
        assert used, f"{name} reads no metric: {expr}"
        assert used <= exposed, f"{name} reads {sorted(used - exposed)}, which Metrics does not expose"


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        pytest.param('sum by (le) (rate(a_bucket{x=~".*", y!="z"}[1m]))', {"a_bucket"}, id="by-and-range"),
        pytest.param("a * on (g, r) group_left () (b < bool 0.1)", {"a", "b"}, id="matching-and-bool"),
        pytest.param("time() - max by (instance) (c_seconds)", {"c_seconds"}, id="functions-out"),
        pytest.param("histogram_quantile(0.99, sum without (job) (rate(d[5m] offset 1h)))", {"d"}, id="offset"),
        pytest.param('e{state="up"} * 3 or f{a="by (x)"} and g unless h', {"e", "f", "g", "h"}, id="set-ops"),
        pytest.param("i > 1e-05", {"i"}, id="exponent"),
    ],
)
def test_metric_names_of_an_expression(expr, names):
    assert metric_names(expr) == names


def test_a_misspelled_metric_would_be_caught(exposed):
    assert metric_names("rate(latency_router_probe_rtt_second_bucket[1m])") - exposed == {
        "latency_router_probe_rtt_second_bucket"
    }


@pytest.mark.parametrize(
    ("expr", "value"),
    [
        pytest.param("max by (r) (x) == 0", "max by (r) (x)", id="equals"),
        pytest.param("sum(a * (b < bool 0.1)) == 0", "sum(a * (b < bool 0.1))", id="inner-bool"),
        pytest.param("rate(x[1m]) > 0.05", "rate(x[1m])", id="greater"),
    ],
)
def test_without_threshold(expr, value):
    assert without_threshold(expr) == value


@pytest.mark.parametrize("expr", ["max(x)", "max(x > 1)", "x > y"], ids=["none", "inside", "not-a-number"])
def test_without_threshold_refuses_an_expression_without_one(expr):
    with pytest.raises(ValueError, match="threshold"):
        without_threshold(expr)


# Grafana

def test_dashboard_loads_and_uses_a_datasource_variable():
    board = dashboard()
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in panels(board)]
    assert len(ids) == len(set(ids)), "panel ids repeat"
    for panel in panels(board):
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"]), panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_dashboard_variables_are_defined_and_used_as_regexes():
    board = dashboard()
    defined = {v["name"] for v in board["templating"]["list"]}
    queries = [t["expr"] for p in panels(board) for t in p.get("targets", [])]
    queries += [v["definition"] for v in board["templating"]["list"] if v["type"] == "query"]
    for expr in queries:
        for name in re.findall(r"\$\{?(\w+)", expr):
            assert name in defined or name.startswith("__"), f"undefined ${name} in {expr}"
        # '.*' stands in for a variable in all_exprs(): right only where it is matched as a regex
        assert not re.search(r'[^=~]="\$', expr), expr
    assert substitute('a{b=~"$region"}[$__rate_interval]') == 'a{b=~".*"}[1m]'


def test_dashboard_covers_latency_loss_health_decisions_and_engine():
    board = dashboard()
    text = DASHBOARD_JSON.read_text()
    (heatmap,) = [p for p in panels(board) if p["type"] == "heatmap"]
    assert heatmap["targets"][0]["format"] == "heatmap"
    assert "latency_router_probe_rtt_seconds_bucket" in heatmap["targets"][0]["expr"]
    assert heatmap.get("repeat") == "path"
    assert any(p["type"] == "row" and p.get("repeat") == "region" for p in panels(board))
    for metric in (
        "latency_router_table_loss_ratio", "latency_router_table_row_health", "latency_router_decision_info",
        "latency_router_decision_changes_total", "latency_router_engine_loop_lag_p99_seconds",
        "latency_router_engine_probes_in_flight", "latency_router_engine_socket_drops_total",
        "latency_router_config_last_reload_successful",
    ):
        assert metric in text, f"no panel shows {metric}"


# systemd

def unit_sections(text: str) -> dict[str, list[tuple[str, str]]]:
    """The unit's sections as (key, value) lists: keys may repeat, as systemd allows."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None and "=" in line, f"not a key=value line in a section: {line!r}"
        key, _, value = line.partition("=")
        current.append((key.strip(), value.strip()))
    return sections


def test_systemd_unit_has_what_the_daemon_needs():
    sections = unit_sections(SYSTEMD_UNIT.read_text())
    assert set(sections) == {"Unit", "Service", "Install"}
    service = dict(sections["Service"])
    assert service["Type"] == "notify"
    assert service["ExecStart"] == "/usr/local/bin/latency-router run -c /etc/latency-router/config.toml"
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["StateDirectory"] == "latency-router"
    assert service["AmbientCapabilities"] == service["CapabilityBoundingSet"] == "CAP_NET_RAW"
    for key, expected in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                          "PrivateTmp": "yes"}.items():
        assert service[key] == expected, key
    assert "AF_UNIX" in service["RestrictAddressFamilies"]  # NOTIFY_SOCKET is a unix socket
    assert dict(sections["Install"])["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verify(tmp_path):
    analyze = installed("systemd-analyze", "systemd")
    # verify insists the binaries exist: point them at one that does
    unit = tmp_path / SYSTEMD_UNIT.name
    unit.write_text(SYSTEMD_UNIT.read_text().replace("/usr/local/bin/latency-router", str(Path(sys.executable))))
    done = subprocess.run([analyze, "verify", "--man=no", str(unit)], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    # an unknown key or bad value is only a warning: any output at all fails
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr

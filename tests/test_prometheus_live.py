"""A real Prometheus scrapes a running daemon on the lab: every PromQL expression of every dashboard panel and alert rule
evaluates without error and returns data. Alert expressions are checked with their threshold while the condition they
watch is injected (an outage of every path, a refused reload, decisions toggled by pins, event-loop stalls), and every
alert's value (the expression without its threshold) outside it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
import urllib.parse
import urllib.request

import pytest
import yaml

from daemon_support import Daemon, free_port, lab_config, outages
from deploy_support import RULES_YML, all_exprs

pytestmark = pytest.mark.root

# alerts whose condition this test injects; the others (a stale table) are checked through their value
INJECTED = {"LatencyRouterRegionDown", "LatencyRouterGroupDegraded", "LatencyRouterConfigReloadFailed",
            "LatencyRouterDecisionsFlapping", "LatencyRouterEngineLagging"}
OUTAGE_AT_S = 25.0
PATHS = [(r, p) for r in ("eu-west-1", "us-east-1", "ap-southeast-1") for p in ("direct", "accelerator")]


def query(port: int, expr: str) -> dict:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return json.load(resp)
    except urllib.error.HTTPError as exc:
        return json.load(exc)


def has_data(answer: dict) -> bool:
    data = answer.get("data", {})
    return answer.get("status") == "success" and (data.get("resultType") == "scalar" or bool(data.get("result")))


@pytest.fixture
def prometheus(tmp_path):
    binary = shutil.which("prometheus")
    assert binary, "prometheus is installed by scripts/setup-system (Debian package prometheus)"
    procs = []

    def start(target_port: int) -> int:
        port = free_port()
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(RULES_YML)],
            "scrape_configs": [{"job_name": "latency-router", "scrape_interval": "1s", "scrape_timeout": "900ms",
                                "static_configs": [{"targets": [f"127.0.0.1:{target_port}"]}]}],
        }
        (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
        log = (tmp_path / "prometheus.log").open("w")
        procs.append((subprocess.Popen(
            [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{port}", "--storage.tsdb.retention.time=1h"],
            stdout=log, stderr=subprocess.STDOUT), log))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/-/ready", timeout=1) as resp:
                    if resp.status == 200:
                        return port
            except OSError:
                time.sleep(0.2)
        raise AssertionError("prometheus did not become ready: " + (tmp_path / "prometheus.log").read_text()[-2000:])

    yield start
    for proc, log in procs:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_every_dashboard_and_alert_expression_returns_data_from_a_real_prometheus(tmp_path, prometheus):
    events = outages(PATHS, OUTAGE_AT_S)
    port = free_port()
    token_config = lab_config(port, events=events, token_env="LR_LIVE_TOKEN")
    workdir = tmp_path / "daemon"
    workdir.mkdir()
    daemon = Daemon(workdir, token_config, env={"LR_LIVE_TOKEN": "live-test-token"})
    try:
        daemon.wait_serving()
        lab_t0 = float(daemon.wait_until(lambda: re.search(r"event clock started at ([\d.]+)", daemon.stdout()), 20.0,
                                         "the lab's t0").group(1))
        prom = prometheus(port)
        daemon.wait_until(lambda: has_data(query(prom, "latency_router_table_rtt_ewma_seconds")), 20.0, "a first scrape")
        # outside the outage (it starts at OUTAGE_AT_S): every panel and every alert's value has data
        time.sleep(8)  # rate() and increase() over [1m] need two scrapes
        missing = {}
        for name, expr in all_exprs():
            if name.startswith("alert:") and not name.endswith(":value"):
                continue
            answer = query(prom, expr)
            assert answer.get("status") == "success", (name, expr, answer)
            if not has_data(answer):
                missing[name] = expr
        assert not missing, f"no data for: {missing}"
        assert time.time() < lab_t0 + OUTAGE_AT_S, "the checks outside the outage ran into it: start it later"

        # inject: decisions toggled by pins (more than 6 changes), a refused reload, event-loop stalls
        for i in range(8):
            path = "/v1/admin/pin" if i % 2 == 0 else "/v1/admin/unpin"
            body = {"service": "api", "group": "eu"} | ({"region": "ap-southeast-1"} if i % 2 == 0 else {})
            status, answer = daemon.request(path, method="POST", body=body, token="live-test-token")
            assert status == 200, answer
            time.sleep(1.1)  # one scrape per state, so increase() sees every change
        daemon.config_path.write_text(token_config.replace('samples = 5', 'samples = "many"'))
        daemon.signal(signal.SIGHUP)
        # 200 ms stalls of the whole daemon: its loop-lag monitor samples every 50 ms over 60 s (1,200 samples), so
        # more than 12 stalls are needed to lift its p99 over 50 ms
        for _ in range(24):
            os.kill(daemon.proc.pid, signal.SIGSTOP)
            time.sleep(0.2)
            os.kill(daemon.proc.pid, signal.SIGCONT)
            time.sleep(0.1)

        # during the outage of every path: each injected alert's expression, threshold included, returns data
        rules = {r["alert"]: r["expr"] for g in yaml.safe_load(RULES_YML.read_text())["groups"] for r in g["rules"]}
        assert INJECTED <= rules.keys()

        def firing():
            return {name for name in INJECTED if has_data(query(prom, rules[name]))}

        seen: set[str] = set()

        def all_fired():
            seen.clear()
            seen.update(firing())
            return seen == INJECTED

        try:
            daemon.wait_until(all_fired, OUTAGE_AT_S + 30.0, "every injected alert expression to return data", poll_s=1.0)
        except AssertionError:
            raise AssertionError(f"no data from: {sorted(INJECTED - seen)}") from None
        for name, expr in rules.items():
            assert query(prom, expr).get("status") == "success", (name, expr)
    finally:
        daemon.close()

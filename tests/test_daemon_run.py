"""`latency-router run` end to end on the lab: decisions over HTTP, failover, reload, persistence, shutdown, sd_notify."""

from __future__ import annotations

import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from daemon_support import Daemon, free_port, lab_config, outages

pytestmark = pytest.mark.root  # the lab runs in nfqueue mode as root (CI runs as root); user space otherwise

EU_ROWS = {("eu-west-1", "direct"): 20.0, ("eu-west-1", "accelerator"): 15.0}


@pytest.fixture
def daemons(tmp_path):
    started: list[Daemon] = []

    def start(config: str, name: str = "d", env=None) -> Daemon:
        workdir = tmp_path / f"{name}{len(started)}"
        workdir.mkdir()
        d = Daemon(workdir, config, env)
        started.append(d)
        return d

    yield start
    for d in started:
        d.close()


def decision(d: Daemon, query: str):
    status, body = d.request(f"/v1/decision?{query}")
    return body if status == 200 else None


def test_the_main_command_serves_decisions_that_match_the_labs_truth_within_10_s(daemons):
    d = daemons(lab_config(free_port()))
    started = time.monotonic()

    def measured():
        body = decision(d, "service=api&client=192.0.2.10")
        return body if body and body["basis"] == "measured" else None

    body = d.wait_until(measured, 10.0, "a measured decision")
    assert time.monotonic() - started <= 10.0
    # the lab injects 20 ms direct and 15 ms over the accelerator for eu-west-1, 70 ms and more elsewhere
    assert (body["group"], body["region"], body["path"], body["answer"]) == ("eu", "eu-west-1", "accelerator", "198.51.100.1")
    assert abs(body["rtt_ms"] - 15.0) < 3.0, body
    for client, group in [("192.0.2.200", "us"), ("2001:db8:2::1", "apac"), ("10.9.9.9", "default")]:
        other = decision(d, f"service=api&client={client}")
        assert (other["group"], other["region"], other["path"]) == (group, "eu-west-1", "accelerator")
    assert d.stop() == 0


def test_a_lab_outage_moves_decisions_within_the_failover_bound(daemons):
    outage_at = 8.0
    events = outages([("eu-west-1", "direct"), ("eu-west-1", "accelerator")], outage_at, 300.0)
    d = daemons(lab_config(free_port(), events=events))
    d.wait_serving()
    t0 = float(d.wait_until(lambda: re.search(r"event clock started at ([\d.]+)", d.stdout()), 20.0, "the lab's t0").group(1))

    def moved():
        body = decision(d, "service=api&group=eu")
        return body if body and body["region"] not in (None, "eu-west-1") else None

    body = d.wait_until(moved, outage_at + 15.0, "a move away from eu-west-1")
    # DESIGN.md: fail_after x interval + interval + timeout after the last good answer = 3 x 1 + 1 + 0.5 s
    bound = 3 * 1.0 + 1.0 + 0.5
    took = body["changed_at"] - (t0 + outage_at)
    print(f"left eu-west-1 {took:.2f} s after the outage began")
    assert 0 < took <= bound, f"left eu-west-1 {took:.2f} s after the outage began (bound {bound} s)"
    assert (body["region"], body["path"]) == ("us-east-1", "accelerator")
    assert "down: eu-west-1" in body["reason"]


def test_sighup_refuses_a_bad_config_keeps_serving_and_applies_a_good_one_keeping_history(daemons, tmp_path):
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify_path = tmp_path / "notify.sock"
    listener.bind(str(notify_path))
    listener.settimeout(0.2)
    port = free_port()
    good = lab_config(port)
    d = daemons(good, env={"NOTIFY_SOCKET": str(notify_path)})
    d.wait_serving()
    d.wait_until(lambda: decision(d, "service=api&group=eu"), 10.0, "a decision")

    def notes(until: str, timeout_s: float = 10.0) -> list[str]:
        seen: list[str] = []
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                seen += listener.recv(4096).decode().split("\n")
            except TimeoutError:
                continue
            if until in seen:
                return seen
        raise AssertionError(f"no {until} from the daemon; got {seen}")

    assert "READY=1" in notes("READY=1")
    d.config_path.write_text(good.replace('interval = "1s"', 'interval = "soon"'))
    d.signal(signal.SIGHUP)
    d.wait_until(lambda: "reload refused" in d.stderr(), 10.0, "the refusal")
    assert "probing.interval: invalid duration 'soon'" in d.stderr()
    assert "RELOADING=1" in notes("READY=1")
    assert decision(d, "service=api&group=eu")["region"] == "eu-west-1"
    status, metrics = d.request("/metrics")
    assert status == 200 and re.search(r'^latency_router_config_reloads_total\{result="failure"\} 1(\.0)?$', metrics, re.M), metrics

    def samples():
        return {(r["region"], r["path"]): r["samples"] for r in d.request("/v1/table")[1]["rows"]}

    before = d.wait_until(lambda: (n := samples()) and all(v > 0 for v in n.values()) and n, 10.0, "samples in every row")
    assert len(before) == 6
    d.config_path.write_text(good + '\n[[services]]\nname = "api2"\npolicy = "failover"\npriority = ["us-east-1", "eu-west-1"]\n')
    d.signal(signal.SIGHUP)
    body = d.wait_until(lambda: decision(d, "service=api2&group=eu"), 10.0, "the new service")
    assert body["region"] == "us-east-1" and body["policy"] == "failover"
    after = samples()
    assert all(after[k] >= before[k] for k in before), (before, after)  # unchanged targets kept their history
    assert re.search(r'^latency_router_config_reloads_total\{result="success"\} 1(\.0)?$', d.request("/metrics")[1], re.M)
    assert d.stop() == 0
    assert "STOPPING=1" in notes("STOPPING=1")
    listener.close()


def test_kill_9_then_a_restart_keeps_the_table_and_its_health(daemons, tmp_path):
    store = tmp_path / "state.db"
    dark = ("us-east-1", "direct")  # dark all along: down before the kill, and down again from its first round after
    events = outages([dark], 0.0)
    config = lab_config(free_port(), events=events).replace(
        'path = "latency-router-lab.db"\ninterval = "5s"', f'path = "{store}"\ninterval = "1s"')
    assert str(store) in config
    d = daemons(config)
    d.wait_serving()

    def table(daemon):
        return {(r["region"], r["path"]): r for r in daemon.request("/v1/table")[1]["rows"]}

    d.wait_until(lambda: (t := table(d)) and len(t) == 6 and all(r["samples"] >= 15 for r in t.values())
                 and t[dark]["health"] == "down", 20.0, "15 samples per row and the dark path down")
    time.sleep(1.5)  # at least one snapshot interval after the rows we compare against
    before = table(d)
    d.kill()  # SIGKILL: no shutdown, no last save
    again = daemons(config, name="again")
    again.wait_serving()
    restored = table(again)
    for key, row in before.items():
        # at most one interval (5 samples per round) lost
        assert restored[key]["samples"] >= row["samples"] - 5, (key, row, restored[key])
        # the restart took longer than 3 intervals: rows are stale until their next round, never unknown
        assert restored[key]["health"] in (row["health"], "stale"), (key, row, restored[key])
    assert "restored 6 rows" in again.stderr()
    # The dark path's first round after the restart finds it down: with its health reset it would stay unknown for
    # fail_after (3) failed rounds.
    seen = restored[dark]["samples"]
    first = again.wait_until(lambda: (r := table(again)[dark])["samples"] > seen and r, 10.0, "a round of the dark path",
                             poll_s=0.05)
    assert first["samples"] - seen <= 5 and first["health"] == "down", first
    assert again.stop() == 0
    assert "stopping: probes" in again.stderr()


def test_metrics_of_a_running_daemon_pass_promtool(daemons):
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by scripts/setup-system (Debian package prometheus)"
    d = daemons(lab_config(free_port()))
    d.wait_serving()
    d.wait_until(lambda: "latency_router_table_rtt_ewma_seconds" in d.request("/metrics")[1], 15.0, "table metrics")
    text = d.request("/metrics")[1]
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr
    assert d.stop() == 0

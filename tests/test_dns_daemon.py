"""The daemon on the lab keeps real DNS servers in step with its decisions.

PowerDNS: a lab outage reaches the answers within one probe interval plus 1 s, a PowerDNS that is down does not stop
deciding and is caught up within one retry when it returns (after 30 s down), and the API key shows nowhere (logs,
metrics, API answers). BIND by RFC 2136 (TSIG) and Route 53 (moto's server): a weighted record follows the decisions
and a lab outage. A wrong API key, or a PowerDNS that is down behind a URL with a password in it, is reported as a
failure and neither secret shows anywhere, with the daemon logging at DEBUG.
"""

from __future__ import annotations

import http.server
import ipaddress
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import boto3
import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import pytest

from bind_support import MAIN_KEY, running_bind
from daemon_support import Daemon, free_port, lab_config, outages
from moto_support import moto_server
from pdns_support import PowerDNS, dns_toml

pytestmark = pytest.mark.root

API_KEY = "pdns-api-key-that-must-not-leak-7f3a"
TOKEN = "admin-token-9c1e"
OUTAGE_AT_S = 14.0
DOWN_FOR_S = 30.0  # the issue: the DNS server killed for 30 s during a change
ZONE = "example.com."
NAME = "api.example.com."
EU, US, AP = "198.51.100.1", "198.51.100.2", "198.51.100.3"  # each region's accelerator answer in the lab example
GROUPS = ("eu", "us", "apac")  # the lab example's groups, each of size 1
INTERVAL_S = 1.0  # the lab example's [probing] interval
FOLLOW_S = INTERVAL_S + 3.0  # a decision change reaches BIND or Route 53 within one interval plus a few seconds
WEIGHTED_OUTAGE_AT_S = 12.0
# a weighted service: every group gets all three regions (over their accelerators, which are faster) by these weights
WEIGHTED_SERVICE = """[[services]]
name = "api"
policy = "weighted"
weights = {eu-west-1 = 170, us-east-1 = 60, ap-southeast-1 = 25}
"""
EU_OUTAGE = outages([("eu-west-1", "direct"), ("eu-west-1", "accelerator")], WEIGHTED_OUTAGE_AT_S)
TSIG_ENV = "LR_TSIG_KEY"
AWS_ACCESS = "AKIADAEMONTESTKEY0001"
AWS_SECRET = "daemon/Route53+Secret+DoNotShow"
WRONG_KEY = "s3cr3t-wr0ng-k3y-1234"
URL_PASSWORD = "hunter2"


def answers(server: tuple[str, int]) -> set[str]:
    """The A answers PowerDNS serves for NAME now (empty on any failure)."""
    try:
        reply = dns.query.udp(dns.message.make_query(NAME, "A"), server[0], port=server[1], timeout=0.5)
    except (OSError, dns.exception.DNSException):
        return set()
    return {rr.address for rrset in reply.answer if rrset.rdtype == dns.rdatatype.A for rr in rrset}


def test_the_daemon_keeps_powerdns_in_step_through_an_outage_and_a_dns_server_restart(tmp_path):
    pdns = PowerDNS(tmp_path / "pdns", API_KEY)
    (tmp_path / "pdns").mkdir()
    pdns.start()
    daemon = None
    try:
        pdns.create_zone(ZONE)
        events = outages([("eu-west-1", "direct"), ("eu-west-1", "accelerator")], OUTAGE_AT_S)
        port = free_port()
        config = lab_config(port, events=events, token_env="LR_TOKEN")
        config += dns_toml(pdns, ZONE, NAME)
        workdir = tmp_path / "daemon"
        workdir.mkdir()
        daemon = Daemon(workdir, config, env={"LR_PDNS_KEY": API_KEY, "LR_TOKEN": TOKEN})
        daemon.wait_serving()
        # every group goes to eu-west-1 over its accelerator: one answer
        daemon.wait_until(lambda: answers(pdns.dns_server) == {EU}, 15.0, "PowerDNS to answer eu-west-1")

        # the outage: the decision leaves eu-west-1, and DNS follows within one interval (1 s) plus 1 s
        def moved():
            status, body = daemon.request("/v1/decision?service=api&group=eu")
            return body if status == 200 and body["region"] == "us-east-1" else None

        decision = daemon.wait_until(moved, OUTAGE_AT_S + 15.0, "the decision to leave eu-west-1")
        daemon.wait_until(lambda: answers(pdns.dns_server) == {US}, 5.0, "PowerDNS to answer us-east-1", poll_s=0.02)
        lag = time.time() - decision["changed_at"]
        print(f"decision change to DNS answer: {lag:.2f} s (an upper bound: measured when the test saw it)")
        assert lag <= 1.0 + 1.0, f"DNS followed the decision {lag:.2f} s later"

        # PowerDNS goes down while the decision changes again: deciding goes on, the failure is reported
        pdns.stop()
        stopped = time.monotonic()
        status, _ = daemon.request("/v1/admin/drain", method="POST", body={"region": "us-east-1"}, token=TOKEN)
        assert status == 200
        assert daemon.request("/v1/decision?service=api&group=eu")[1]["region"] == "ap-southeast-1"

        def failing():
            exporters = daemon.request("/v1/exporters")[1]["exporters"]
            return exporters if exporters[0]["state"] in ("retrying", "failed") and exporters[0]["last_error"] else None

        status_down = daemon.wait_until(failing, 10.0, "the exporter to report the failure")[0]
        time.sleep(max(0.0, DOWN_FOR_S - (time.monotonic() - stopped)))  # the daemon keeps probing and deciding
        assert daemon.request("/healthz")[0] == 200
        assert daemon.request("/v1/decision?service=api&group=eu")[1]["region"] == "ap-southeast-1"
        metrics = daemon.request("/metrics")[1]
        assert re.search(r'^latency_router_dns_exporter_up\{provider="pdns"\} 0', metrics, re.M)
        # back: the newest answer is served within one retry (backoff at most 5 s) plus the write
        pdns.restart()
        back = time.monotonic()
        daemon.wait_until(lambda: answers(pdns.dns_server) == {AP}, 5.0 + 3.0, "PowerDNS to answer ap-southeast-1")
        print(f"caught up {time.monotonic() - back:.2f} s after PowerDNS returned; it reported: {status_down['last_error']}")
        daemon.wait_until(lambda: daemon.request("/v1/exporters")[1]["exporters"][0]["state"] == "ok", 10.0, "state ok")

        # the API key appears nowhere the daemon writes or answers
        seen = [daemon.stdout(), daemon.stderr(), daemon.request("/metrics")[1], str(daemon.request("/v1/exporters")[1]),
                str(daemon.request("/v1/regions")[1]), str(daemon.request("/v1/table")[1]),
                str(daemon.request("/v1/admin/state", token=TOKEN)[1]), str(daemon.request("/openapi.json")[1])]
        assert all(API_KEY not in text and TOKEN not in text for text in seen)
        assert daemon.stop() == 0
        assert API_KEY not in daemon.stderr() + daemon.stdout()
    finally:
        if daemon is not None:
            daemon.close()
        pdns.stop()


def test_dns_plan_is_a_dry_run_and_dns_apply_writes_what_it_planned(tmp_path):
    pdns = PowerDNS(tmp_path / "pdns", API_KEY)
    (tmp_path / "pdns").mkdir()
    pdns.start()
    daemon = None
    try:
        pdns.create_zone(ZONE)
        port = free_port()
        plain = lab_config(port)
        with_dns = plain + dns_toml(pdns, ZONE, NAME, dns_table=False)
        workdir = tmp_path / "daemon"
        workdir.mkdir()
        daemon = Daemon(workdir, plain)  # decides, writes no DNS
        daemon.wait_serving()
        daemon.wait_until(lambda: daemon.request("/readyz")[0] == 200 and
                          daemon.request("/v1/decision?service=api&group=eu")[1]["basis"] == "measured", 15.0, "ready")
        config = tmp_path / "dns.toml"
        config.write_text(with_dns)

        def cli(*args):
            return subprocess.run([sys.executable, "-m", "latency_router", "dns", *args, "-c", str(config)],
                                  capture_output=True, text=True, timeout=60, env={**os.environ, "LR_PDNS_KEY": API_KEY})

        plan = cli("plan")
        assert plan.returncode == 0, plan.stderr
        assert "plan for pdns: 1 to create, 0 to update, 0 to delete" in plan.stdout, plan.stdout
        assert "+ create api.example.com." in plan.stdout and "198.51.100.1" in plan.stdout
        assert answers(pdns.dns_server) == set()  # a dry run writes nothing
        applied = cli("apply")
        assert applied.returncode == 0, applied.stderr
        assert "read back: ok" in applied.stdout
        assert answers(pdns.dns_server) == {EU}
        again = cli("plan")
        assert again.returncode == 0 and "0 to create, 0 to update, 0 to delete" in again.stdout, again.stdout
        for out in (plan, applied, again):
            assert API_KEY not in out.stdout + out.stderr
        config.write_text(with_dns.replace("env:LR_PDNS_KEY", "env:LR_UNSET_KEY_FOR_TEST"))
        missing = cli("plan")
        assert missing.returncode == 2 and "dns.providers[0].api_key: environment variable LR_UNSET_KEY_FOR_TEST" in missing.stderr
        assert daemon.stop() == 0
    finally:
        if daemon is not None:
            daemon.close()
        pdns.stop()


# --- weighted records on BIND (RFC 2136) and Route 53 ----------------------------------------------------------------


def measured_weights(daemon: Daemon, *, without: str | None = None) -> tuple[dict[str, int], float] | None:
    """The service's weight per answer as the decisions' candidates give it (summed over the groups, all of size 1),
    and the latest decision change; None until every group's decision is measured (and, with `without`, gives that
    region no weight: both its paths are out)."""
    weights: dict[str, int] = {}
    changed_at = 0.0
    for group in GROUPS:
        status, body = daemon.request(f"/v1/decision?service=api&group={group}")
        if status != 200 or body["basis"] != "measured":
            return None
        changed_at = max(changed_at, body["changed_at"])
        for c in body["candidates"]:
            if c["weight"] > 0:
                if c["region"] == without:
                    return None
                weights[c["answer"]] = weights.get(c["answer"], 0) + c["weight"]
    return (weights, changed_at) if weights else None


def top_answers(weights: Mapping[str, int], n: int) -> set[str]:
    """What plain DNS should serve: the n heaviest answers (ties by address)."""
    ranked = sorted(weights, key=lambda a: (-weights[a], ipaddress.ip_address(a)))
    return set(ranked[:n])


def leaks(texts: Mapping[str, str], secrets: tuple[str, ...]) -> list[str]:
    """One line per (place, secret) where the secret shows, with the text around it."""
    out = []
    for where, text in texts.items():
        for secret in secrets:
            at = text.find(secret)
            if at >= 0:
                out.append(f"{where}: {secret!r} in ...{text[max(0, at - 150):at + 60]!r}...")
    return out


def exporter(daemon: Daemon, name: str) -> dict[str, Any]:
    """GET /v1/exporters' entry for this provider."""
    found = [e for e in daemon.request("/v1/exporters")[1]["exporters"] if e["provider"] == name]
    assert len(found) == 1, found
    return found[0]


def settled(daemon: Daemon, name: str) -> dict[str, Any] | None:
    """The exporter's entry once its state is ok (its last write read back as wanted, nothing newer pending)."""
    state = exporter(daemon, name)
    return state if state["state"] == "ok" else None


def failures_total(daemon: Daemon, name: str) -> float:
    metrics = daemon.request("/metrics")[1]
    match = re.search(rf'^latency_router_dns_failures_total\{{provider="{name}"\}} (\S+)$', metrics, re.M)
    assert match, f"no latency_router_dns_failures_total for {name} in /metrics"
    return float(match.group(1))


def dns_cli(action: str, config: Path, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    """`latency-router dns ACTION -c CONFIG`, reading the running daemon's decisions."""
    return subprocess.run([sys.executable, "-m", "latency_router", "dns", action, "-c", str(config)],
                          capture_output=True, text=True, timeout=60, env={**os.environ, **env})


def everything_seen(daemon: Daemon) -> dict[str, str]:
    """Every place a secret must not show: the daemon's output and its API answers."""
    texts = {"stdout": daemon.stdout(), "stderr": daemon.stderr()}
    for path in ("/metrics", "/v1/exporters", "/v1/config", "/v1/regions", "/v1/table", "/openapi.json",
                 "/v1/decision?service=api&group=eu", "/healthz", "/readyz"):
        status, body = daemon.request(path)
        texts[f"GET {path} ({status})"] = body if isinstance(body, str) else repr(body)
    return texts


def record_toml(provider: str, name: str) -> str:
    return f"""
[[dns.records]]
name = "{name}"
service = "api"
provider = "{provider}"
"""


def test_the_daemon_keeps_bind_in_step_by_rfc2136_through_an_outage(tmp_path):
    (tmp_path / "daemon").mkdir()
    (tmp_path / "bind").mkdir()
    daemon = None
    with running_bind(tmp_path / "bind", groups=()) as bind:
        name = f"api.{bind.zone}"

        def served() -> set[str]:
            try:
                return bind.answers(name)
            except (OSError, AssertionError, dns.exception.DNSException):
                return set()

        tsig = bind.keys[MAIN_KEY].reveal()
        config = lab_config(free_port(), events=EU_OUTAGE, services=WEIGHTED_SERVICE) + f"""
[dns]
min_write_interval = "0s"

[[dns.providers]]
name = "bind"
kind = "rfc2136"
zone = "{bind.zone}"
server = "127.0.0.1:{bind.port}"
key_name = "{MAIN_KEY}"
key_secret = "env:{TSIG_ENV}"
max_answers = 2
""" + record_toml("bind", name)
        try:
            daemon = Daemon(tmp_path / "daemon", config, env={TSIG_ENV: tsig})
            daemon.wait_serving()

            # ready: BIND serves the two heaviest of the decided answers (plain DNS has no weights)
            def in_step():
                found = measured_weights(daemon) if daemon.request("/readyz")[0] == 200 else None
                return found if found is not None and served() == top_answers(found[0], 2) else None

            weights, _ = daemon.wait_until(in_step, 20.0, "BIND to serve the two heaviest answers")
            assert set(weights) == {EU, US, AP} and top_answers(weights, 2) == {EU, US}, weights
            state = daemon.wait_until(lambda: settled(daemon, "bind"), 5.0, "the exporter's state ok")
            assert state["writes_total"] >= 1 and state["last_error"] is None, state

            # the outage takes eu-west-1 out; BIND follows within one interval plus a few seconds
            after, changed_at = daemon.wait_until(lambda: measured_weights(daemon, without="eu-west-1"),
                                                  WEIGHTED_OUTAGE_AT_S + 15.0, "the decisions to leave eu-west-1")
            assert top_answers(after, 2) == {US, AP}, after
            daemon.wait_until(lambda: served() == {US, AP}, FOLLOW_S, "BIND to serve us-east-1 and ap-southeast-1",
                              poll_s=0.02)
            lag = time.time() - changed_at
            print(f"decision change to BIND's answer: {lag:.2f} s (an upper bound)")
            assert lag <= FOLLOW_S, f"BIND followed the decision {lag:.2f} s later"
            state = daemon.wait_until(lambda: settled(daemon, "bind"), 5.0, "the exporter's state ok")
            assert state["writes_total"] >= 2, state
            assert failures_total(daemon, "bind") == 0

            assert leaks(everything_seen(daemon), (tsig,)) == []
            assert daemon.stop() == 0
            assert tsig not in daemon.stdout() + daemon.stderr()
        finally:
            if daemon is not None:
                daemon.close()


def test_the_daemon_keeps_route53_weighted_sets_in_step_through_an_outage(tmp_path):
    no_aws = {"AWS_CONFIG_FILE": str(tmp_path / "no-aws-config"),
              "AWS_SHARED_CREDENTIALS_FILE": str(tmp_path / "no-aws-credentials")}
    (tmp_path / "daemon").mkdir()
    daemon = None
    with moto_server() as url:
        admin = boto3.client("route53", endpoint_url=url, region_name="us-east-1", aws_access_key_id="admin",
                             aws_secret_access_key="admin")
        zone_id = admin.create_hosted_zone(Name=ZONE, CallerReference="daemon")["HostedZone"]["Id"].rsplit("/", 1)[-1]

        def weighted_sets() -> list[dict[str, Any]]:
            out = admin.list_resource_record_sets(HostedZoneId=zone_id, MaxItems="300")["ResourceRecordSets"]
            return [rr for rr in out if rr["Name"] == NAME and rr["Type"] == "A"]

        def values(sets: list[dict[str, Any]]) -> dict[str, int]:
            """address -> Weight, after checking each set is a well-formed weighted set of one address."""
            ids = [rr.get("SetIdentifier") for rr in sets]
            assert all(ids) and len(set(ids)) == len(ids), f"SetIdentifiers missing or not unique: {ids}"
            for rr in sets:
                assert isinstance(rr.get("Weight"), int) and 0 <= rr["Weight"] <= 255, rr
                assert len(rr["ResourceRecords"]) == 1, rr
            return {rr["ResourceRecords"][0]["Value"]: rr["Weight"] for rr in sets}

        config = lab_config(free_port(), events=EU_OUTAGE, services=WEIGHTED_SERVICE) + f"""
[dns]
min_write_interval = "0s"

[[dns.providers]]
name = "r53"
kind = "route53"
zone = "{ZONE}"
hosted_zone_id = "{zone_id}"
endpoint_url = "{url}"
access_key = "env:LR_AWS_ACCESS"
secret_key = "env:LR_AWS_SECRET"
""" + record_toml("r53", NAME)
        try:
            daemon = Daemon(tmp_path / "daemon", config,
                            env={"LR_AWS_ACCESS": AWS_ACCESS, "LR_AWS_SECRET": AWS_SECRET, **no_aws}, log_level="DEBUG")
            daemon.wait_serving()

            def in_step():
                found = measured_weights(daemon) if daemon.request("/readyz")[0] == 200 else None
                sets = weighted_sets()
                return (found, sets) if found is not None and {
                    rr["ResourceRecords"][0]["Value"] for rr in sets} == set(found[0]) else None

            (weights, _), sets = daemon.wait_until(in_step, 20.0, "Route 53 to hold one set per decided answer")
            held = values(sets)
            total = sum(weights.values())
            for answer, weight in weights.items():  # the candidates' weights, renormalised to 0-255
                assert abs(held[answer] - 255 * weight / total) <= 1, (answer, held, weights)
            assert sum(held.values()) == 255, held
            decided = daemon.request("/v1/decision?service=api&group=eu")[1]
            assert decided["region"] == "eu-west-1" and decided["answer"] == EU, decided
            assert held[EU] == max(held.values()) and sorted(held.values())[-2] < held[EU], held
            state = daemon.wait_until(lambda: settled(daemon, "r53"), 5.0, "the exporter's state ok")
            assert state["writes_total"] >= 1 and state["last_error"] is None, state

            # the outage: eu-west-1's set goes, the others take its weight
            after, changed_at = daemon.wait_until(lambda: measured_weights(daemon, without="eu-west-1"),
                                                  WEIGHTED_OUTAGE_AT_S + 15.0, "the decisions to leave eu-west-1")
            assert set(after) == {US, AP}, after
            daemon.wait_until(lambda: set(values(weighted_sets())) == {US, AP}, FOLLOW_S,
                              "Route 53 to hold us-east-1 and ap-southeast-1 only", poll_s=0.05)
            lag = time.time() - changed_at
            print(f"decision change to Route 53's record sets: {lag:.2f} s (an upper bound)")
            assert lag <= FOLLOW_S, f"Route 53 followed the decision {lag:.2f} s later"
            held = values(weighted_sets())
            total = sum(after.values())
            assert all(abs(held[a] - 255 * w / total) <= 1 for a, w in after.items()), (held, after)
            assert held[US] > held[AP], held
            state = daemon.wait_until(lambda: settled(daemon, "r53"), 5.0, "the exporter's state ok")
            assert state["writes_total"] >= 2, state

            plan_config = tmp_path / "plan.toml"
            plan_config.write_text(config)
            plan = dns_cli("plan", plan_config, {"LR_AWS_ACCESS": AWS_ACCESS, "LR_AWS_SECRET": AWS_SECRET, **no_aws})
            assert plan.returncode == 0, plan.stdout + plan.stderr
            assert "0 to create, 0 to update, 0 to delete" in plan.stdout, plan.stdout
            seen = {**everything_seen(daemon), "dns plan": plan.stdout + plan.stderr}
            assert "DEBUG botocore" in seen["stderr"], "the SDK's request logs are not among what is searched"
            assert leaks(seen, (AWS_ACCESS, AWS_SECRET)) == []
            assert daemon.stop() == 0
        finally:
            if daemon is not None:
                daemon.close()


# --- secrets when things go wrong ------------------------------------------------------------------------------------


@pytest.mark.parametrize("case", ["wrong-api-key", "server-down-password-in-url"])
def test_no_secret_shows_when_the_provider_fails_even_at_debug(tmp_path, case):
    (tmp_path / "daemon").mkdir()
    (tmp_path / "pdns").mkdir()
    pdns = PowerDNS(tmp_path / "pdns", API_KEY)
    daemon = None
    try:
        if case == "wrong-api-key":  # a real PowerDNS that answers 401: the daemon holds the wrong key
            pdns.start()
            pdns.create_zone(ZONE)
            dns_tables = dns_toml(pdns, ZONE, NAME)
        else:  # nothing listens; the URL carries a user and password
            closed = free_port()
            dns_tables = f"""
[dns]
min_write_interval = "0s"

[[dns.providers]]
name = "pdns"
kind = "powerdns"
zone = "{ZONE}"
api_url = "http://user:{URL_PASSWORD}@127.0.0.1:{closed}"
api_key = "env:LR_PDNS_KEY"
dns_server = "127.0.0.1:{closed}"
""" + record_toml("pdns", NAME)
        config = lab_config(free_port()) + dns_tables
        env = {"LR_PDNS_KEY": WRONG_KEY}
        daemon = Daemon(tmp_path / "daemon", config, env=env, log_level="DEBUG")
        daemon.wait_serving()

        expected = "HTTP 401" if case == "wrong-api-key" else "Cannot connect"

        def failing():
            state = exporter(daemon, "pdns")
            return state if state["state"] in ("retrying", "failed") and expected in (state["last_error"] or "") else None

        state = daemon.wait_until(failing, 20.0, f"the exporter to report the failure ({expected})")
        assert state["failures_total"] >= 1, state
        assert failures_total(daemon, "pdns") > 0
        assert daemon.request("/healthz")[0] == 200  # a provider that fails holds up nothing
        assert "DEBUG latency_router.daemon: logging at debug" in daemon.stderr(), "not at DEBUG"
        plan_config = tmp_path / "plan.toml"
        plan_config.write_text(config)
        plan = dns_cli("plan", plan_config, env)
        assert plan.returncode == 1 and "pdns" in plan.stderr, plan.stdout + plan.stderr
        applied = dns_cli("apply", plan_config, env)
        assert applied.returncode == 1, applied.stdout + applied.stderr
        print(f"{case}: the exporter reported: {state['last_error']}; dns plan: {plan.stderr.strip()}")
        seen = {**everything_seen(daemon), "dns plan": plan.stdout + plan.stderr,
                "dns apply": applied.stdout + applied.stderr}
        assert daemon.stop() == 0
        seen.update({"stdout": daemon.stdout(), "stderr": daemon.stderr()})  # to the end, shutdown included
        secrets = (WRONG_KEY, URL_PASSWORD) if case != "wrong-api-key" else (WRONG_KEY,)
        given = {"what the daemon was given": config + repr(env)}
        assert len(leaks(given, secrets)) == len(secrets), "the search misses a secret it was shown"
        assert leaks(seen, (WRONG_KEY, URL_PASSWORD)) == []
    finally:
        if daemon is not None:
            daemon.close()
        pdns.stop()


def test_a_provider_that_cannot_be_built_is_a_config_error_not_a_crash(tmp_path):
    """A TSIG secret that is not base64: `run` and `dns plan` name the key and exit 2, with no traceback or secret."""

    class NoDecisionYet(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            self.send_response(503)
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    bad = "not base64 but secret !!"
    stub = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NoDecisionYet)  # `dns plan` asks it, gets no decision
    threading.Thread(target=stub.serve_forever, daemon=True).start()
    try:
        config = tmp_path / "config.toml"
        config.write_text(lab_config(stub.server_address[1]) + f"""
[[dns.providers]]
name = "bind"
kind = "rfc2136"
zone = "{ZONE}"
server = "127.0.0.1:{free_port()}"
key_name = "{MAIN_KEY}"
key_secret = "env:{TSIG_ENV}"
""" + record_toml("bind", NAME))
        for command in (["run", "-c", str(config), "--duration", "5s"], ["dns", "plan", "-c", str(config)]):
            out = subprocess.run([sys.executable, "-m", "latency_router", *command], capture_output=True, text=True,
                                 timeout=30, cwd=tmp_path, env={**os.environ, TSIG_ENV: bad})
            assert out.returncode == 2, (command, out.stdout, out.stderr)
            assert f"dns.providers[0].key_secret: the TSIG secret in env:{TSIG_ENV} is not base64" in out.stderr
            assert "Traceback" not in out.stderr and bad not in out.stdout + out.stderr, out.stderr
    finally:
        stub.shutdown()
        stub.server_close()

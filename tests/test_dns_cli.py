"""`latency-router dns plan|apply`: the exporter's own round (deletes found with list_keys, deleted sets read back),
provisional decisions refused unless forced, and the documented exit codes; in-process with a fake provider, and as
the real command against a decision server and a real PowerDNS."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

import dns.exception
import dns.message
import dns.query
import dns.rdatatype
import pytest
from aiohttp import web

from dns_fakes import FakeProvider
from latency_router.config import parse_config
from latency_router.decider.decision import Candidate, Decision
from latency_router.exporters.dns.cli import run_dns
from latency_router.exporters.dns.model import Answer, RecordSet
from pdns_support import PowerDNS

N = "api.example.com."
V4, V6 = "198.51.100.1", "2001:db8::1"
API_KEY = "pdns-cli-key-that-must-not-leak-5e2b"

REGIONS = f"""
[[regions]]
name = "eu"
lat = 53.35
lon = -6.26

[[regions.paths]]
name = "direct"
probe = "udp://127.0.0.1:9"
answer = "{V4}"

[[regions]]
name = "us"
lat = 38.9
lon = -77.0

[[regions.paths]]
name = "direct"
probe = "udp://127.0.0.1:9"
answer = "{V6}"

[[services]]
name = "api"
policy = "latency"
"""


def config_text(api_url: str = "http://127.0.0.1:9", dns_port: int = 53, extra: str = "") -> str:
    return REGIONS + f"""
[dns]
max_weight_shift = 0.5
{extra}
[[dns.providers]]
name = "pdns"
kind = "powerdns"
zone = "example.com."
api_url = "{api_url}"
api_key = "env:LR_CLI_PDNS_KEY"
dns_server = "127.0.0.1:{dns_port}"

[[dns.records]]
name = "{N}"
service = "api"
provider = "pdns"
"""


def decision(*answers: str, basis: str = "measured", group: str = "default") -> Decision:
    """The group's decision for api: these answers, sharing the weight (region eu for V4, us for V6)."""
    weights = [255 // len(answers) + (1 if i < 255 % len(answers) else 0) for i in range(len(answers))]
    candidates = tuple(Candidate("eu" if a == V4 else "us", "direct", a, 10.0, "up", True, w)
                       for a, w in zip(answers, weights))
    top = candidates[0]
    return Decision("api", group, "latency", top.region, top.path, answers, 10.0, 60, basis, "test", None, None,
                    candidates, 1.0, 1.0)


def rs(rtype: str, value: str, scope: str | None = None, weight: int = 255) -> RecordSet:
    return RecordSet(N, rtype, 60, (Answer(value, weight, f"{'eu' if rtype == 'A' else 'us'}/direct"),), scope)  # type: ignore[arg-type]


def run(provider: FakeProvider, decisions, *, write: bool, force: bool = False, config: str | None = None) -> int:
    cfg = parse_config(config or config_text())
    return asyncio.run(run_dns(cfg, decisions, write=write, force=force, build=lambda p, i: provider))


# --- in-process, with a fake provider --------------------------------------------------------------------


def test_plan_shows_the_delete_of_a_set_no_longer_wanted_and_writes_nothing(capsys):
    provider = FakeProvider("pdns", records={rs("A", V4).key: rs("A", V4), rs("A", V4, "eu").key: rs("A", V4, "eu")})
    code = run(provider, {("api", "default"): decision(V4)}, write=False)
    out = capsys.readouterr().out
    assert code == 0, out
    assert "plan for pdns: 0 to create, 0 to update, 1 to delete" in out and f"- delete {N} A [eu] ttl 60" in out
    assert provider.writes == 0 and provider.listed == [(N,)] and provider.closed


def test_apply_deletes_and_reads_back_that_the_deleted_set_is_gone(capsys):
    held = {rs("A", V4).key: rs("A", V4), rs("A", V4, "eu").key: rs("A", V4, "eu")}
    provider = FakeProvider("pdns", records=held)
    assert run(provider, {("api", "default"): decision(V4)}, write=True) == 0
    assert set(provider.records) == {(N, "A", None)}
    assert "applied 1 change(s) to pdns; read back: ok" in capsys.readouterr().out
    assert provider.calls == ["list_keys", "current", "apply", "verify", "current"]

    broken = FakeProvider("pdns", records=held, strict=False)
    broken.keep_deletes = True  # the server says yes and keeps the set
    assert run(broken, {("api", "default"): decision(V4)}, write=True) == 1
    assert f"read back: {N} A [eu]: still there after its delete" in capsys.readouterr().err


def test_apply_writes_and_reads_back_creates_and_updates(capsys):
    provider = FakeProvider("pdns", records={rs("A", V4, weight=200).key: rs("A", V4, weight=200)})
    provider.mismatch_next(1)
    assert run(provider, {("api", "default"): decision(V4, V6)}, write=True) == 1
    assert "read back: injected mismatch" in capsys.readouterr().err
    assert provider.records == {(N, "A", None): rs("A", V4), (N, "AAAA", None): rs("AAAA", V6)}
    assert provider.verified[-1] == (rs("A", V4), rs("AAAA", V6))


@pytest.mark.parametrize("write", [False, True])
def test_provisional_decisions_are_refused_naming_them_unless_forced(write, capsys):
    provider = FakeProvider("pdns")
    decisions = {("api", "default"): decision(V4, basis="provisional")}
    assert run(provider, decisions, write=write) == 3
    out = capsys.readouterr().out
    assert "! refused: provisional decisions api/default (made while the daemon warms up" in out
    assert ("nothing was written" if write else "`dns apply` would write nothing") in out
    assert f"+ create {N} A ttl 60: {V4} w255" in out  # what it would be
    assert provider.writes == 0
    assert run(provider, decisions, write=write, force=True) == 0
    assert "provisional" not in capsys.readouterr().out
    assert provider.writes == (1 if write else 0)


def test_a_provisional_decision_of_another_service_does_not_hold_this_provider_back():
    provider = FakeProvider("pdns")
    decisions = {("api", "default"): decision(V4), ("web", "default"): decision(V4, basis="provisional")}
    assert run(provider, decisions, write=True) == 0 and provider.writes == 1


def test_a_safety_refusal_exits_3_and_is_written_only_with_force(capsys):
    provider = FakeProvider("pdns", records={rs("A", V4).key: rs("A", V4), rs("AAAA", V6).key: rs("AAAA", V6)})
    assert run(provider, {("api", "default"): decision(V4)}, write=True) == 3  # AAAA would have no answer
    assert f"! {N} AAAA: refused: deleting it would leave {N} with no AAAA answer" in capsys.readouterr().out
    assert set(provider.records) == {(N, "A", None), (N, "AAAA", None)}
    assert run(provider, {("api", "default"): decision(V4)}, write=True, force=True) == 0
    assert set(provider.records) == {(N, "A", None)}


def test_a_failure_exits_1_even_when_something_was_refused_too(capsys):
    held = {rs("A", V4, weight=200).key: rs("A", V4, weight=200), rs("AAAA", V6).key: rs("AAAA", V6)}
    provider = FakeProvider("pdns", records=held)
    provider.fail_next(1, calls=["apply"])
    # one refusal (the AAAA delete) and one failed write (the A update)
    assert run(provider, {("api", "default"): decision(V4)}, write=True) == 1
    assert provider.attempted and provider.writes == 0
    err = capsys.readouterr().err
    assert "pdns: injected failure" in err and "pdns: pdns:" not in err  # the provider named once

    down = FakeProvider("pdns")
    down.fail_next(1, calls=["list_keys"], error=lambda: RuntimeError("token=hunter2"))
    assert run(down, {("api", "default"): decision(V4)}, write=False) == 1
    err = capsys.readouterr().err
    assert "pdns: failed with RuntimeError" in err and "hunter2" not in err and down.closed


def test_a_desired_state_that_cannot_be_built_exits_1_without_touching_the_provider(capsys):
    provider = FakeProvider("pdns")
    bad = decision(V4)._replace(candidates=(Candidate("eu", "direct", "eu.example.net", 1.0, "up", True, 255),))
    assert run(provider, {("api", "default"): bad}, write=True) == 1
    assert "answer 'eu.example.net' is not an IP address" in capsys.readouterr().err and provider.calls == []


# --- the real command: a decision server and a real PowerDNS ---------------------------------------------------


class DecisionServer:
    """GET /v1/decision?service=&group= answers `decisions` as the daemon does (503 for a pair it has none for)."""

    def __init__(self) -> None:
        self.decisions: dict[tuple[str, str], Decision] = {}
        self.url = ""
        self._runner: web.AppRunner | None = None

    async def _decision(self, request: web.Request) -> web.Response:
        found = self.decisions.get((request.query.get("service", ""), request.query.get("group", "")))
        if found is None:
            return web.json_response({"error": "no decision yet"}, status=503)
        return web.json_response(found.to_json())

    async def __aenter__(self) -> "DecisionServer":
        app = web.Application()
        app.router.add_get("/v1/decision", self._decision)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._runner is not None
        await self._runner.cleanup()


async def cli(config: Path, source: str, *args: str) -> tuple[int, str, str]:
    """`latency-router dns ARGS -c CONFIG --from SOURCE` in a subprocess: exit code, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "latency_router", "dns", *args, "-c", str(config), "--from", source,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "LR_CLI_PDNS_KEY": API_KEY},
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def served(pdns: PowerDNS, rtype: str) -> set[str]:
    """The answers PowerDNS serves for N now (empty on any failure)."""
    try:
        reply = dns.query.udp(dns.message.make_query(N, rtype), "127.0.0.1", port=pdns.dns_port, timeout=1.0)
    except (OSError, dns.exception.DNSException):
        return set()
    want = dns.rdatatype.from_text(rtype)
    return {rr.address for rrset in reply.answer if rrset.rdtype == want for rr in rrset}


async def test_the_command_refuses_provisional_decisions_and_deletes_sets_an_earlier_apply_wrote(tmp_path):
    pdns = PowerDNS(tmp_path / "pdns", API_KEY)
    (tmp_path / "pdns").mkdir()
    pdns.start()
    try:
        pdns.create_zone("example.com.")
        config = tmp_path / "dns.toml"
        config.write_text(config_text(pdns.api_url, pdns.dns_port))
        async with DecisionServer() as daemon:
            # warming up: nothing is written, and the message names the pair
            daemon.decisions = {("api", "default"): decision(V4, V6, basis="provisional")}
            code, out, err = await cli(config, daemon.url, "apply")
            assert code == 3, out + err
            assert "provisional decisions api/default" in out and "nothing was written" in out
            assert served(pdns, "A") == set() and served(pdns, "AAAA") == set()
            code, out, err = await cli(config, daemon.url, "plan")
            assert code == 3 and "provisional decisions api/default" in out, out + err

            # measured: A and AAAA written and read back
            daemon.decisions = {("api", "default"): decision(V4, V6)}
            code, out, err = await cli(config, daemon.url, "apply")
            assert code == 0 and "plan for pdns: 2 to create" in out and "read back: ok" in out, out + err
            assert served(pdns, "A") == {V4} and served(pdns, "AAAA") == {V6}

            # IPv6 gone from the decisions: a fresh process finds the AAAA set (list_keys) and plans its delete,
            # refused (AAAA queries would get no answer) until forced
            daemon.decisions = {("api", "default"): decision(V4)}
            code, out, err = await cli(config, daemon.url, "plan")
            assert code == 3, out + err
            assert f"! {N} AAAA: refused: deleting it would leave {N} with no AAAA answer" in out
            code, out, err = await cli(config, daemon.url, "apply", "--force")
            assert code == 0, out + err
            assert f"- delete {N} AAAA ttl 60: {V6} w" in out and "read back: ok" in out
            assert served(pdns, "AAAA") == set() and served(pdns, "A") == {V4}
            code, out, err = await cli(config, daemon.url, "plan")
            assert code == 0 and "0 to create, 0 to update, 0 to delete" in out, out + err
            assert all(API_KEY not in text for text in (out, err))
    finally:
        pdns.stop()

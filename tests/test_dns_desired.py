"""Decisions to desired DNS record sets: weighted and per-group, v4/v6 split, empty and fallback decisions, errors."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from latency_router.config import Config, parse_config
from latency_router.decider.engine import Decider, config_groups, service_weights
from latency_router.decider.table import LatencyTable, TableConfig
from latency_router.exporters.dns.desired import DnsRecord, desired_record_sets
from latency_router.exporters.dns.model import Answer, RecordSet
from latency_router.probes.base import LossReason, Sample

EU, US = "eu-west-1", "us-east-1"
EU_DIRECT, EU_ACCEL = "203.0.113.1", "198.51.100.1"
US_DIRECT, US_ACCEL = "203.0.113.2", "2001:db8:100::2"
NAME = "api.example.com."

REGIONS = f"""
[[regions]]
name = "{EU}"
lat = 53.35
lon = -6.26
[[regions.paths]]
name = "direct"
probe = "udp://{EU_DIRECT}:7007"
answer = "{EU_DIRECT}"
[[regions.paths]]
name = "accelerator"
probe = "udp://{EU_ACCEL}:7007"
answer = "{EU_ACCEL}"

[[regions]]
name = "{US}"
lat = 38.9
lon = -77.04
[[regions.paths]]
name = "direct"
probe = "udp://{US_DIRECT}:7007"
answer = "{US_DIRECT}"
[[regions.paths]]
name = "accelerator"
probe = "udp://[{US_ACCEL}]:7007"
answer = "{US_ACCEL}"
"""

GROUPS = """
[[groups]]
name = "eu"
cidrs = ["192.0.2.0/25"]
size = 3.0

[[groups]]
name = "us"
cidrs = ["192.0.2.128/25", "2001:db8:1::/48"]

[[groups]]
name = "nowhere"
"""

Truth = Mapping[str, Mapping[tuple[str, str], float | None]]  # row group -> (region, path) -> RTT (None: lost)

# every row group's RTTs; "local" is the vantage that measures the groups without rows of their own
BASE: Truth = {
    "eu": {(EU, "direct"): 20.0, (EU, "accelerator"): 30.0, (US, "direct"): 90.0, (US, "accelerator"): 95.0},
    "us": {(EU, "direct"): 90.0, (EU, "accelerator"): 95.0, (US, "direct"): 10.0, (US, "accelerator"): 30.0},
    "local": {(EU, "direct"): 25.0, (EU, "accelerator"): 35.0, (US, "direct"): 80.0, (US, "accelerator"): 85.0},
}


def config_with(service: str, regions: str = REGIONS) -> Config:
    return parse_config(f'{regions}\n{GROUPS}\n[[services]]\nname = "api"\nhysteresis = {{dwell = "0s"}}\n{service}\n')


def decide(config: Config, truth: Truth = BASE, rounds: int = 1):
    """A real Decider over a real LatencyTable fed `rounds` rounds of `truth`; the last decisions."""
    table = LatencyTable(TableConfig.from_settings(config.probing, config.health))
    decider = Decider(config)
    decisions = None
    for now in range(rounds):
        for group, rtts in truth.items():
            for (region, path), rtt_ms in rtts.items():
                key = (group, region, path)
                if rtt_ms is None:
                    table.add_sample(key, Sample.lost("t", "udp", now, LossReason.TIMEOUT), now)
                    table.add_round(key, 1.0, now)
                else:
                    table.add_sample(key, Sample(target="t", kind="udp", sent_at=now, rtt_ms=rtt_ms), now)
                    table.add_round(key, 0.0, now)
        decisions = decider.evaluate(table.snapshot(now), float(now))
    return decisions


def by_key(sets: list[RecordSet]) -> dict:
    return {rs.key: rs for rs in sets}


def test_weighted_follows_the_service_weights_of_a_real_decider():
    config = config_with('policy = "latency"')
    decisions = decide(config)
    # eu (size 3) -> eu-west-1 direct; us (1) -> us-east-1 direct; nowhere and default (1 each) read "local": eu direct
    assert decisions[("api", "us")].answers == (US_DIRECT,)
    sets = desired_record_sets(decisions, config, [DnsRecord("API.example.com", "api")])
    assert [rs.key for rs in sets] == [(NAME, "A", None)]
    (rs,) = sets
    assert rs.ttl == 60 and rs.networks == ()
    assert rs.answers == (Answer(EU_DIRECT, 213, f"{EU}/direct"), Answer(US_DIRECT, 42, f"{US}/direct"))
    sizes = {g.name: g.size for g in config_groups(config)}
    expected = {answer: w for (_, _, answer), w in service_weights(decisions.values(), sizes).items()}
    assert rs.weights() == expected  # one family: exactly the decider's own weights


def test_weighted_splits_v4_and_v6_answers_and_renormalises_each_family():
    config = config_with('policy = "latency"')
    truth = {**BASE, "us": {**BASE["us"], (US, "accelerator"): 5.0}}  # us now prefers the IPv6 accelerator
    decisions = decide(config, truth)
    assert decisions[("api", "us")].answers == (US_ACCEL,)
    sets = by_key(desired_record_sets(decisions, config, [DnsRecord(NAME, "api", ttl=30)]))
    assert set(sets) == {(NAME, "A", None), (NAME, "AAAA", None)}
    assert sets[(NAME, "A", None)].answers == (Answer(EU_DIRECT, 255, f"{EU}/direct"),)
    assert sets[(NAME, "AAAA", None)].answers == (Answer(US_ACCEL, 255, f"{US}/accelerator"),)
    assert {rs.ttl for rs in sets.values()} == {30}


def test_per_group_gives_each_group_with_networks_its_own_answers_and_everyone_else_the_weighted_set():
    config = config_with('policy = "multivalue"\nanswers = 2')
    truth = {**BASE, "us": {**BASE["us"], (US, "accelerator"): 5.0}}
    decisions = decide(config, truth)
    sets = by_key(desired_record_sets(decisions, config, [DnsRecord(NAME, "api", mode="per-group")]))
    # no scoped set for "nowhere" and "default": they have no networks, so DNS cannot tell their clients apart
    assert set(sets) == {
        (NAME, "A", None), (NAME, "AAAA", None), (NAME, "A", "eu"), (NAME, "A", "us"), (NAME, "AAAA", "us"),
    }
    eu = sets[(NAME, "A", "eu")]
    assert eu.networks == ("192.0.2.0/25",)
    assert eu.weights() == {EU_DIRECT: 128, US_DIRECT: 127}  # multivalue's candidate weights
    us_v4, us_v6 = sets[(NAME, "A", "us")], sets[(NAME, "AAAA", "us")]
    assert us_v4.networks == us_v6.networks == ("192.0.2.128/25", "2001:db8:1::/48")
    assert us_v4.weights() == {EU_DIRECT: 255} and us_v6.weights() == {US_ACCEL: 255}
    assert {a.set_id for a in us_v6.answers} == {f"{US}/accelerator"}
    everyone = sets[(NAME, "A", None)]
    weighted = by_key(desired_record_sets(decisions, config, [DnsRecord(NAME, "api")]))
    assert everyone == weighted[(NAME, "A", None)] and sets[(NAME, "AAAA", None)] == weighted[(NAME, "AAAA", None)]


def test_a_static_fallback_group_gets_equal_weights():
    config = config_with('policy = "latency"\nall_down = "static"\nfallback = ["192.0.2.53", "192.0.2.54"]')
    down = {group: {key: None for key in rtts} for group, rtts in BASE.items()}
    decisions = decide(config, down, rounds=4)  # fail_after = 3 lost rounds: every row is down
    assert decisions[("api", "eu")].fallback == "static"
    sets = by_key(desired_record_sets(decisions, config, [DnsRecord(NAME, "api", mode="per-group")]))
    eu = sets[(NAME, "A", "eu")]
    assert eu.answers == (Answer("192.0.2.53", 128, "static/192.0.2.53"), Answer("192.0.2.54", 127, "static/192.0.2.54"))
    assert sum(sets[(NAME, "A", None)].weights().values()) == 255


def test_a_decision_with_no_answer_gives_an_empty_set_per_family_the_service_can_answer():
    config = config_with('policy = "latency"\nall_down = "none"')
    down = {group: {key: None for key in rtts} for group, rtts in BASE.items()}
    decisions = decide(config, down, rounds=4)
    assert all(d.answers == () for d in decisions.values())
    sets = desired_record_sets(decisions, config, [DnsRecord(NAME, "api", mode="per-group")])
    assert sets and all(rs.answers == () for rs in sets)
    assert {(rs.rtype, rs.scope) for rs in sets} == {(t, s) for t in ("A", "AAAA") for s in (None, "eu", "us")}


def test_a_host_name_answer_is_an_error_naming_the_service_and_the_answer():
    regions = REGIONS.replace(f'answer = "{EU_ACCEL}"', 'answer = "edge.accel.example.net"')
    config = config_with('policy = "latency"', regions)
    truth = {**BASE, "eu": {**BASE["eu"], (EU, "accelerator"): 5.0}}  # eu now goes over the host-name path
    decisions = decide(config, truth)
    assert decisions[("api", "eu")].answers == ("edge.accel.example.net",)
    for mode in ("weighted", "per-group"):
        with pytest.raises(ValueError, match=r"service api: answer 'edge\.accel\.example\.net' is not an IP address"):
            desired_record_sets(decisions, config, [DnsRecord(NAME, "api", mode=mode)])


def test_an_answer_with_a_zone_id_is_an_error_naming_the_service_and_the_answer():
    config = config_with('policy = "latency"')
    decisions = dict(decide(config))
    crafted = "2001:db8::1%z'}) or x({'1"  # the config refuses it; a decision built some other way must not pass it on
    eu = decisions[("api", "eu")]
    candidates = tuple(c._replace(answer=crafted) if c.answer == eu.answers[0] else c for c in eu.candidates)
    decisions[("api", "eu")] = eu._replace(answers=(crafted,), candidates=candidates)
    for mode in ("weighted", "per-group"):
        with pytest.raises(ValueError, match=r"service api: answer .*2001:db8::1%z.* has a zone id"):
            desired_record_sets(decisions, config, [DnsRecord(NAME, "api", mode=mode)])


def test_a_host_name_path_that_is_not_chosen_is_no_error():
    regions = REGIONS.replace(f'answer = "{EU_ACCEL}"', 'answer = "edge.accel.example.net"')
    config = config_with('policy = "latency"', regions)
    sets = desired_record_sets(decide(config), config, [DnsRecord(NAME, "api")])
    assert {a.value for rs in sets for a in rs.answers} == {EU_DIRECT, US_DIRECT}


def test_the_ttl_is_the_services_unless_the_record_gives_one():
    config = config_with('policy = "latency"\nttl = "45s"')
    decisions = decide(config)
    assert {rs.ttl for rs in desired_record_sets(decisions, config, [DnsRecord(NAME, "api")])} == {45}
    assert {rs.ttl for rs in desired_record_sets(decisions, config, [DnsRecord(NAME, "api", ttl=0)])} == {0}


def test_a_fractional_service_ttl_rounds_up_as_the_decisions_ttl_does():
    config = config_with('policy = "latency"\nttl = "500ms"')
    decisions = decide(config)
    assert {d.ttl for d in decisions.values()} == {1}
    assert {rs.ttl for rs in desired_record_sets(decisions, config, [DnsRecord(NAME, "api")])} == {1}  # not 0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        pytest.param({"name": ""}, "name: expected a domain name", id="empty-name"),
        pytest.param({"name": "a..b"}, "name: 'a..b' is not a valid domain name", id="empty-label"),
        pytest.param({"name": "x" * 64 + ".com"}, "is not a valid domain name", id="long-label"),
        pytest.param({"name": "a b.com"}, "contains white space", id="space"),
        pytest.param({"mode": "geo"}, "mode: expected one of weighted, per-group, got 'geo'", id="mode"),
        pytest.param({"ttl": -1}, "ttl: expected a whole number of seconds >= 0, got -1", id="negative-ttl"),
        pytest.param({"ttl": 1.5}, "ttl: expected a whole number", id="float-ttl"),
    ],
)
def test_dns_record_rejects_bad_fields_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DnsRecord(**{"name": NAME, "service": "api", **kwargs})


def test_dns_record_normalises_its_name():
    assert DnsRecord("Api.Example.COM", "api").name == NAME
    assert DnsRecord(NAME, "api").name == NAME


def test_unknown_service_and_a_name_given_twice_are_errors():
    config = config_with('policy = "latency"')
    decisions = decide(config)
    with pytest.raises(ValueError, match="api.example.com.: service: unknown service 'web'"):
        desired_record_sets(decisions, config, [DnsRecord(NAME, "web")])
    with pytest.raises(ValueError, match="name: given twice"):
        desired_record_sets(decisions, config, [DnsRecord(NAME, "api"), DnsRecord("api.example.com", "api")])

"""The [dns] config: providers by kind, records, and the checks between them."""

from __future__ import annotations

import pytest

from latency_router.config import ConfigError, parse_config
from support import MINIMAL_CONFIG

GOOD = MINIMAL_CONFIG + """
[[groups]]
name = "eu"
cidrs = ["192.0.2.0/24"]

[[services]]
name = "api"
policy = "latency"

[dns]
min_weight_change = 5

[[dns.providers]]
name = "pdns"
kind = "powerdns"
zone = "Example.COM"
api_url = "http://127.0.0.1:8081"
api_key = "env:PDNS_API_KEY"
dns_server = "127.0.0.1:5353"

[[dns.providers]]
name = "bind"
kind = "rfc2136"
zone = "example.com."
server = "127.0.0.1:53"
key_name = "main"
key_secret = "file:/etc/latency-router/main.key"
views = {eu = {key_name = "eu", key_secret = "env:EU_KEY"}}

[[dns.providers]]
name = "r53"
kind = "route53"
zone = "example.com"
hosted_zone_id = "Z0123"

[[dns.records]]
name = "api.example.com"
service = "api"
provider = "pdns"
mode = "per-group"
ttl = "30s"
"""


def problems(toml: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(toml)
    return info.value.problems


def test_a_good_dns_config_parses_with_names_made_fully_qualified():
    dns = parse_config(GOOD).dns
    assert [p.kind for p in dns.providers] == ["powerdns", "rfc2136", "route53"]
    assert dns.providers[0].zone == "example.com." and dns.records[0].name == "api.example.com."
    assert (dns.min_weight_change, dns.max_weight_shift, dns.retry_max_s) == (5, 1.0, 5.0)
    assert dns.providers[1].views["eu"].key_name == "eu" and dns.records[0].ttl_s == 30.0


@pytest.mark.parametrize("old, new, expected", [
    ('api_key = "env:PDNS_API_KEY"\n', '', "dns.providers[0].api_key: required for a powerdns provider"),
    ('api_key = "env:PDNS_API_KEY"\n', 'api_key = "plain-secret"\n', "dns.providers[0].api_key: write 'env:NAME'"),
    ('hosted_zone_id = "Z0123"\n', 'hosted_zone_id = "Z0123"\nserver = "127.0.0.1:53"\n',
     "dns.providers[2].server: a rfc2136 key; this provider is route53"),
    ('kind = "route53"', 'kind = "bind9"', "dns.providers[2].kind: unknown kind 'bind9'"),
    ('provider = "pdns"', 'provider = "nope"', "dns.records[0].provider: unknown provider 'nope'"),
    ('service = "api"\nprovider', 'service = "web"\nprovider', "dns.records[0].service: unknown service 'web'"),
    ('name = "api.example.com"', 'name = "api.example.org"', "dns.records[0].name: 'api.example.org' is not in the provider's zone"),
    ('mode = "per-group"', 'mode = "geo"', "dns.records[0].mode: unknown mode 'geo'"),
    ('min_weight_change = 5', 'min_weight_change = 300', "dns.min_weight_change"),
    ('zone = "example.com"\nhosted', 'zone = "not a zone"\nhosted', "dns.providers[2].zone: 'not a zone' is not a domain name"),
])
def test_bad_dns_keys_are_named(old, new, expected):
    assert old in GOOD
    found = problems(GOOD.replace(old, new, 1))
    assert any(p.startswith(expected) for p in found), found
    assert not any("plain-secret" in p for p in found)


def test_a_service_that_answers_host_names_cannot_feed_an_address_record():
    toml = GOOD.replace('answer = "203.0.113.10"', 'answer = "eu.example.net"')
    assert any(p.startswith("dns.records[0].service: service 'api' answers the host name 'eu.example.net'")
               for p in problems(toml))


def test_a_service_whose_static_fallback_is_a_host_name_cannot_feed_an_address_record():
    static = 'policy = "latency"\nall_down = "static"\nfallback = ["192.0.2.99", "backup.example.net"]\n'
    toml = GOOD.replace('policy = "latency"\n', static, 1)
    assert problems(toml) == ["dns.records[0].service: service 'api' has the host name 'backup.example.net' in its "
                              "fallback; an A/AAAA record holds addresses"]
    addresses = GOOD.replace('policy = "latency"\n', static.replace('"backup.example.net"', '"2001:db8::99"'), 1)
    assert parse_config(addresses).services[0].fallback == ("192.0.2.99", "2001:db8::99")


def test_a_record_name_given_twice_for_one_provider_is_refused_naming_the_field():
    second = ('\n[[dns.records]]\nname = "API.Example.com."\nservice = "api"\nprovider = "pdns"\n'
              '\n[[dns.records]]\nname = "api.example.com"\nservice = "api"\nprovider = "bind"\n')  # another server: fine
    assert problems(GOOD + second) == [
        "dns.records[1].name: 'API.Example.com.' is given twice for provider 'pdns' (first at dns.records[0].name); "
        "one record per name and provider"
    ]
    dns = parse_config(GOOD + second.split("\n\n", 2)[-1]).dns  # only the record at the other provider
    assert [(r.name, r.provider) for r in dns.records] == [("api.example.com.", "pdns"), ("api.example.com.", "bind")]


@pytest.mark.parametrize("line, expected", [("", 60.0), ('recheck_interval = "90s"\n', 90.0),
                                            ('recheck_interval = "0s"\n', 0.0)])
def test_recheck_interval(line, expected):
    assert parse_config(GOOD.replace("min_weight_change = 5\n", "min_weight_change = 5\n" + line)).dns.recheck_s == expected


def test_a_negative_recheck_interval_is_named():
    found = problems(GOOD.replace("min_weight_change = 5\n", 'min_weight_change = 5\nrecheck_interval = "-1s"\n'))
    assert len(found) == 1 and found[0].startswith("dns.recheck_interval: "), found


BIND_PER_GROUP = '\n[[dns.records]]\nname = "www.example.com"\nservice = "api"\nprovider = "bind"\nmode = "per-group"\n'
MORE_GROUPS = '\n[[groups]]\nname = "us"\ncidrs = ["198.51.100.0/24"]\n[[groups]]\nname = "ap"\ncidrs = []\n'


def test_per_group_records_at_rfc2136_need_a_view_key_for_every_group_with_cidrs():
    # without one, the config loaded and the provider then failed for good at run time, writing nothing
    toml = GOOD.replace("[[services]]", MORE_GROUPS + "\n[[services]]", 1) + BIND_PER_GROUP
    assert problems(toml) == [
        "dns.records[1].mode: per-group answers at rfc2136 provider 'bind' need a view key for every group with CIDRs; "
        "none for 'us' (add it to dns.providers[1].views)"
    ]
    with_us = toml.replace('views = {eu = {key_name = "eu", key_secret = "env:EU_KEY"}}',
                           'views = {eu = {key_name = "eu", key_secret = "env:EU_KEY"}, '
                           'us = {key_name = "us", key_secret = "env:US_KEY"}}')
    assert set(parse_config(with_us).dns.providers[1].views) == {"eu", "us"}  # 'ap' has no CIDRs: it needs none
    no_views = toml.replace('views = {eu = {key_name = "eu", key_secret = "env:EU_KEY"}}\n', "")
    assert problems(no_views) == [
        "dns.records[1].mode: per-group answers at rfc2136 provider 'bind' need a view key for every group with CIDRs; "
        "none for 'eu', 'us' (add them to dns.providers[1].views)"
    ]


def test_a_weighted_record_at_rfc2136_needs_no_view_key():
    toml = GOOD.replace("[[services]]", MORE_GROUPS + "\n[[services]]", 1) + BIND_PER_GROUP.replace("per-group", "weighted")
    toml = toml.replace('views = {eu = {key_name = "eu", key_secret = "env:EU_KEY"}}\n', "")
    assert parse_config(toml).dns.records[1].mode == "weighted"


def test_a_view_key_for_an_unknown_group_is_refused_naming_it():
    toml = GOOD.replace('views = {eu = {key_name = "eu", key_secret = "env:EU_KEY"}}',
                        'views = {eu = {key_name = "eu", key_secret = "env:EU_KEY"}, '
                        'asia = {key_name = "asia", key_secret = "env:ASIA_KEY"}}')
    assert problems(toml) == ["dns.providers[1].views.asia: unknown group 'asia' (a view key is for one of the "
                              "config's groups)"]

"""The [[services]] config: defaults from the design, the keys a policy reads, chains, fences, and one clear line per bad value."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from latency_router.config import ConfigError, GroupConfig, load_config, parse_config
from latency_router.config.models import FenceConfig, HysteresisConfig
from latency_router.decider.plan import compile_plan
from latency_router.decider.steps import NAMED_POLICIES, POLICY_NAMES, SELECTORS, Step, named_chain, parse_chain, parse_step

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "config"

BASE = """
[[regions]]
name = "eu-west-1"
lat = 53.35
lon = -6.26

[[regions.paths]]
name = "direct"
probe = "udp://203.0.113.10:7007"
answer = "203.0.113.10"

[[regions.paths]]
name = "accelerator"
probe = "udp://198.51.100.1:7007"
answer = "198.51.100.1"

[[regions]]
name = "us-east-1"
lat = 38.9
lon = -77.04

[[regions.paths]]
name = "direct"
probe = "udp://203.0.113.20:7007"
answer = "203.0.113.20"

[[groups]]
name = "eu"
cidrs = ["192.0.2.0/24"]
countries = ["DE"]

[[services]]
name = "api"
"""


def service(snippet: str):
    return parse_config(BASE + snippet + "\n").services[0]


def problems(snippet: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(BASE + snippet + "\n")
    return info.value.problems


# --- defaults (DESIGN.md, Clarifications) --------------------------------------------------------


@pytest.mark.parametrize(
    "attribute, value",
    [
        ("path", "auto"),
        ("primary_path", "direct"),
        ("path_margin_s", 0.001),
        ("path_margin_ratio", 0.02),
        ("metric", "ewma"),
        ("ttl_s", 60.0),
        ("all_down", "fail-open"),
        ("fallback", ()),
        ("answers", None),
        ("regions", ("eu-west-1", "us-east-1")),
        ("hysteresis", HysteresisConfig(margin="2ms", margin_ratio=0.03, evaluations=3, dwell="10s")),
    ],
)
def test_service_defaults(attribute, value):
    assert getattr(service('policy = "latency"'), attribute) == value


def test_hysteresis_defaults_are_max_2ms_3pct_for_3_evaluations_and_a_10s_dwell():
    h = service('policy = "latency"').hysteresis
    assert (h.margin_s, h.margin_ratio, h.evaluations, h.dwell_s) == (0.002, 0.03, 3, 10.0)


def test_the_plan_carries_the_defaults_in_milliseconds():
    config = parse_config(BASE + 'policy = "latency"\n')
    plan = compile_plan(config, config.services[0], config.groups[0])
    assert (plan.margin_ms, plan.margin_ratio, plan.evaluations, plan.dwell_s) == (2.0, 0.03, 3, 10.0)
    assert (plan.path_margin_ms, plan.path_margin_ratio, plan.ttl, plan.all_down) == (1.0, 0.02, 60, "fail-open")
    assert (plan.forced_path, plan.count, plan.metric) == (None, 1, "ewma_ms")


# --- values that parse ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "snippet, attribute, value",
    [
        pytest.param('chain = ["healthy", "latency", "multivalue 3"]', "steps",
                     (Step("healthy"), Step("latency"), Step("multivalue", 3)), id="chain"),
        pytest.param('chain = ["healthy", "latency", "first"]', "policy_name", "chain", id="chain-policy-name"),
        pytest.param('policy = "failover"', "steps", named_chain("failover"), id="named-policy-steps"),
        pytest.param('policy = "latency"\npath = "accelerator"\nregions = ["eu-west-1"]', "path", "accelerator", id="forced-path"),
        pytest.param('policy = "latency"\npath_margin = "5ms"\npath_margin_ratio = 0.1', "path_margin_s", 0.005, id="path-margin"),
        pytest.param('policy = "latency"\nhysteresis = {margin = "5ms", margin_ratio = 0.05, evaluations = 5, dwell = "30s"}',
                     "hysteresis", HysteresisConfig(margin="5ms", margin_ratio=0.05, evaluations=5, dwell="30s"), id="hysteresis"),
        pytest.param('policy = "latency"\nhysteresis = {dwell = "0s"}', "hysteresis",
                     HysteresisConfig(margin="2ms", margin_ratio=0.03, evaluations=3, dwell="0s"), id="hysteresis-partial"),
        pytest.param('policy = "weighted"\nweights = {eu-west-1 = 255, us-east-1 = 0}', "weights",
                     {"eu-west-1": 255, "us-east-1": 0}, id="weights-0-255"),
        pytest.param('policy = "geoproximity"\nbias = {eu-west-1 = 99, us-east-1 = -99}', "bias",
                     {"eu-west-1": 99, "us-east-1": -99}, id="bias-99"),
        pytest.param('policy = "geolocation"\ngeolocation = {eu = "eu-west-1", default = "us-east-1", "*" = "us-east-1"}',
                     "geolocation", {"eu": "eu-west-1", "default": "us-east-1", "*": "us-east-1"}, id="geolocation-star-and-default"),
        pytest.param('policy = "latency"\nall_down = "static"\nfallback = ["192.0.2.53", "2001:db8::53", "fallback.example.net"]',
                     "fallback", ("192.0.2.53", "2001:db8::53", "fallback.example.net"), id="static-fallback"),
        pytest.param('policy = "multivalue"\nanswers = 255', "answers", 255, id="answers-255"),
        pytest.param('policy = "latency"\nmetric = "p95"', "metric", "p95", id="metric"),
        pytest.param('policy = "failover"\npriority = ["us-east-1"]', "priority", ("us-east-1",), id="priority-part"),
    ],
)
def test_service_keys_parse(snippet, attribute, value):
    assert getattr(service(snippet), attribute) == value


def test_fences_parse_groups_countries_and_cidrs():
    s = service('policy = "latency"\n[[services.fences]]\ngroups = ["eu"]\nregions = ["eu-west-1"]\n'
                '[[services.fences]]\ncountries = ["US"]\ncidrs = ["2001:db8::/32"]\nregions = ["us-east-1"]')
    first, second = s.fences
    assert (first.groups, first.regions) == (("eu",), ("eu-west-1",))
    assert (second.countries, second.cidrs, second.regions) == (("US",), (ipaddress.ip_network("2001:db8::/32"),), ("us-east-1",))


@pytest.mark.parametrize("policy", POLICY_NAMES)
def test_every_named_policy_is_a_valid_chain_ending_in_a_selector(policy):
    steps = named_chain(policy)
    assert [str(s) for s in steps] == list(NAMED_POLICIES[policy])
    assert steps[-1].name in SELECTORS and steps[0] == Step("healthy")
    extra = '\ngeolocation = {"*" = "eu-west-1"}' if policy == "geolocation" else ""
    assert service(f'policy = "{policy}"{extra}').policy_name == policy


# --- chain steps ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, step",
    [
        ("healthy", Step("healthy")),
        ("multivalue 3", Step("multivalue", 3)),
        ("  sticky   255 ", Step("sticky", 255)),
        ("sticky", Step("sticky")),
    ],
    ids=["plain", "counted", "spaces", "count-optional"],
)
def test_parse_step(text, step):
    assert parse_step(text) == step
    assert parse_step(str(step)) == step


@pytest.mark.parametrize(
    "texts, message",
    [
        pytest.param([""], "empty step", id="empty-step"),
        pytest.param(["healthy", "fastest", "first"], "unknown step 'fastest'", id="unknown"),
        pytest.param(["healthy", "first 2"], "step 'first' takes no argument", id="count-on-first"),
        pytest.param(["multivalue 256"], "step 'multivalue' takes one count from 1 to 255, got '256'", id="count-256"),
        pytest.param(["sticky 1 2"], "step 'sticky' takes one count from 1 to 255, got '1 2'", id="two-counts"),
        pytest.param(["multivalue -1"], "step 'multivalue' takes one count from 1 to 255, got '-1'", id="negative"),
        pytest.param([], "a chain needs at least a selector", id="empty-chain"),
        pytest.param(["healthy", "latency"], "a chain ends with a selector", id="no-selector"),
        pytest.param(["first", "healthy", "weighted"], "a chain has exactly one selector, at its end", id="selector-inside"),
        pytest.param(["healthy", "proximity", "latency", "first"], "a chain has at most one sorter", id="two-sorters"),
        pytest.param(["fence", "healthy", "fence", "first"], "step 'fence' appears more than once", id="repeated-filter"),
    ],
)
def test_parse_chain_rejects_in_words(texts, message):
    with pytest.raises(ValueError) as info:
        parse_chain(texts)
    assert message in str(info.value)


# --- fences --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fence, group, matches",
    [
        pytest.param({"groups": ["eu"]}, {"name": "eu"}, True, id="by-name"),
        pytest.param({"groups": ["us"]}, {"name": "eu"}, False, id="other-name"),
        pytest.param({"countries": ["DE"]}, {"name": "eu", "countries": ["FR", "DE"]}, True, id="shared-country"),
        pytest.param({"countries": ["US"]}, {"name": "eu", "countries": ["DE"]}, False, id="no-shared-country"),
        pytest.param({"cidrs": ["192.0.2.0/24"]}, {"name": "eu", "cidrs": ["192.0.2.128/25"]}, True, id="cidr-inside"),
        pytest.param({"cidrs": ["192.0.2.0/25"]}, {"name": "eu", "cidrs": ["192.0.2.0/24"]}, False, id="cidr-wider-than-fence"),
        pytest.param({"cidrs": ["2001:db8::/32"]}, {"name": "eu", "cidrs": ["2001:db8:1::/48"]}, True, id="ipv6-inside"),
        pytest.param({"cidrs": ["2001:db8::/32"]}, {"name": "eu", "cidrs": ["192.0.2.0/24"]}, False, id="other-family"),
    ],
)
def test_fence_matches(fence, group, matches):
    assert FenceConfig(regions=["eu-west-1"], **fence).matches(GroupConfig(**group)) is matches


# --- bad values: one line each, naming the key path ----------------------------------------------

NEW_FIXTURES = sorted(FIXTURES.glob("bad-service-*.toml"))


@pytest.mark.parametrize("fixture", NEW_FIXTURES, ids=lambda p: p.stem)
def test_each_bad_service_fixture_is_one_line_naming_a_key_of_the_service(fixture):
    with pytest.raises(ConfigError) as info:
        load_config(fixture)
    (line,) = info.value.problems
    assert line.startswith("services[")
    assert line == fixture.with_suffix(".expected").read_text().strip()


def test_every_problem_of_a_service_is_reported_at_once_in_file_order():
    lines = problems(
        'policy = "weighted"\nweights = {eu-west-1 = 300, mars-1 = 3}\nbias = {us-east-1 = -100}\nall_down = "nope"\n'
        '[[services.fences]]\ngroups = ["asia"]\nregions = ["venus-1"]'
    )
    assert lines == [
        "services[0].weights.eu-west-1: must be at most 255",
        "services[0].weights.mars-1: unknown region 'mars-1'",
        "services[0].bias.us-east-1: must be at least -99",
        "services[0].all_down: unknown all_down 'nope' (expected one of: fail-open, last-known-good, static, none)",
        "services[0].fences[0].groups[0]: unknown group 'asia'",
        "services[0].fences[0].regions[0]: unknown region 'venus-1'",
    ]


MORE_BAD = {
    "weight-outside-service": (
        'policy = "weighted"\nregions = ["eu-west-1"]\nweights = {us-east-1 = 3}',
        "services[0].weights.us-east-1: region 'us-east-1' is not one of the service's regions",
    ),
    "fence-matches-nothing": (
        'policy = "latency"\n[[services.fences]]\nregions = ["eu-west-1"]',
        "services[0].fences[0].groups: a fence needs groups, countries or cidrs to match",
    ),
    "fence-without-regions": (
        'policy = "latency"\n[[services.fences]]\ngroups = ["eu"]',
        "services[0].fences[0].regions: required key is missing",
    ),
    "weight-float": ('policy = "weighted"\nweights = {eu-west-1 = 1.5}', "services[0].weights.eu-west-1: expected an integer, got 1.5"),
    "bias-minus-100": ('policy = "geoproximity"\nbias = {eu-west-1 = -100}', "services[0].bias.eu-west-1: must be at least -99"),
    "geolocation-default-region": (
        'policy = "geolocation"\ngeolocation = {"*" = "mars-1"}',
        "services[0].geolocation.\"*\": unknown region 'mars-1'",
    ),
    "geolocation-step-without-map": (
        'chain = ["healthy", "geolocation", "first"]',
        "services[0].geolocation: required by the geolocation step: a map of group to region, '*' for the default",
    ),
    "answers-0": ('policy = "multivalue"\nanswers = 0', "services[0].answers: must be at least 1"),
    "metric": ('policy = "latency"\nmetric = "p99"', "services[0].metric: unknown metric 'p99' (expected one of: ewma, p50, p95, min)"),
    "margin-ratio": ('policy = "latency"\nhysteresis = {margin_ratio = 1.5}', "services[0].hysteresis.margin_ratio: must be at most 1"),
    "hysteresis-typo": ('policy = "latency"\nhysteresis = {evaluation = 3}', "services[0].hysteresis.evaluation: unknown key"),
    "path-margin-ratio": ('policy = "latency"\npath_margin_ratio = 2.0', "services[0].path_margin_ratio: must be at most 1"),
    "chain-not-array": (
        'chain = "latency"',
        'services[0].chain: expected an array of step strings such as ["healthy", "latency", "first"], got \'latency\'',
    ),
}


@pytest.mark.parametrize("snippet, line", list(MORE_BAD.values()), ids=list(MORE_BAD))
def test_more_bad_service_values(snippet, line):
    assert problems(snippet) == [line]


def test_an_invalid_forced_path_name_is_one_line():
    assert problems('policy = "latency"\npath = "no way"') == [
        "services[0].path: invalid name 'no way': use letters, digits, '_', '.', '-'"
    ]


def test_a_region_listed_twice_in_priority_is_reported():
    assert problems('policy = "failover"\npriority = ["eu-west-1", "us-east-1", "eu-west-1"]') == [
        "services[0].priority[2]: region 'eu-west-1' is listed twice"
    ]


def test_a_primary_path_no_region_has_is_reported():
    lines = problems('policy = "latency"\nprimary_path = "directt"')
    assert len(lines) == 1 and lines[0].startswith("services[0].primary_path: ")

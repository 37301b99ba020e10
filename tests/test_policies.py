"""The decider's policies: each named policy and custom chains, path choice, hysteresis, all-down fallbacks, decisions as JSON."""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable, Mapping, Sequence

import pytest

from latency_router.config import Config, parse_config
from latency_router.decider.decision import Decision, client_prefix, sticky_pick
from latency_router.decider.engine import Decider, config_groups, service_weights
from latency_router.decider.plan import Plan, compile_plan, great_circle_km
from latency_router.decider.policy import INITIAL, PolicyState, decide
from latency_router.decider.table import LatencyTable, TableConfig
from latency_router.probes.base import LossReason, Sample
from support import Row, row

EU, US, AP, SA = "eu-west-1", "us-east-1", "ap-southeast-1", "sa-east-1"
LOCATIONS = {EU: (53.35, -6.26), US: (38.9, -77.04), AP: (1.29, 103.85), SA: (-23.55, -46.63)}
DIRECT = {name: f"203.0.113.{i}" for i, name in enumerate(LOCATIONS, start=1)}
ACCEL = {name: f"198.51.100.{i}" for i, name in enumerate(LOCATIONS, start=1)}


def regions_toml(locations: Mapping[str, tuple[float, float]]) -> str:
    """[[regions]] tables, each with a direct and an accelerator path."""
    out = []
    for i, (name, (lat, lon)) in enumerate(locations.items(), start=1):
        out.append(
            f'[[regions]]\nname = "{name}"\nlat = {lat}\nlon = {lon}\n'
            f'[[regions.paths]]\nname = "direct"\nprobe = "udp://203.0.113.{i}:7007"\nanswer = "203.0.113.{i}"\n'
            f'[[regions.paths]]\nname = "accelerator"\nprobe = "udp://198.51.100.{i}:7007"\nanswer = "198.51.100.{i}"\n'
        )
    return "\n".join(out)


REGIONS = regions_toml(LOCATIONS)
GROUPS = """
[[groups]]
name = "eu"
cidrs = ["192.0.2.0/25"]
countries = ["DE"]
lat = 50.1
lon = 8.7

[[groups]]
name = "us"
cidrs = ["192.0.2.128/25"]
lat = 40.71
lon = -74.01

[[groups]]
name = "apac"
cidrs = ["2001:db8:2::/48"]
lat = 1.35
lon = 103.82

[[groups]]
name = "nowhere"
"""
NO_DWELL = 'hysteresis = {dwell = "0s"}\n'


@functools.lru_cache(maxsize=None)
def config_for(service: str, regions: str = REGIONS, groups: str = GROUPS) -> Config:
    """A config of the given regions and groups with one service "s" written by `service` (TOML keys)."""
    return parse_config(f'{regions}\n{groups}\n[[services]]\nname = "s"\n{service}\n')


def plan_for(service: str, group: str = "eu", regions: str = REGIONS, groups: str = GROUPS) -> Plan:
    """The compiled plan of service "s" for one group."""
    config = config_for(service, regions, groups)
    (g,) = [g for g in config_groups(config) if g.name == group]
    return compile_plan(config, config.services[0], g)


Spec = Mapping[str, tuple[float | None, float | None]]


def rows(spec: Spec, down: Iterable[str | tuple[str, str]] = (), health: str = "down") -> dict[tuple[str, str], Row]:
    """{region: (direct_ms, accelerator_ms)} as rows (a None RTT: no row); `down` names regions or (region, path)s."""
    bad = set()
    for item in down:
        bad |= {(item, "direct"), (item, "accelerator")} if isinstance(item, str) else {item}
    out = {}
    for region, rtts in spec.items():
        for path, rtt_ms in zip(("direct", "accelerator"), rtts):
            if rtt_ms is not None:
                out[(region, path)] = row(rtt_ms, health if (region, path) in bad else "up")
    return out


# every region's direct path is faster than its accelerator, so answers are direct unless a test says otherwise
BASE: Spec = {EU: (20.0, 30.0), US: (80.0, 90.0), AP: (180.0, 190.0), SA: (200.0, 210.0)}


def run(plan: Plan, tables: Sequence[Mapping], times: Sequence[float] | None = None, state: PolicyState = INITIAL):
    """Decide once per table at t = 0, 1, 2, ... (or `times`); the decisions and the last state."""
    decisions = []
    for i, table in enumerate(tables):
        decision, state = decide(table, plan, float(i) if times is None else times[i], state)
        decisions.append(decision)
    return decisions, state


def once(plan: Plan, table: Mapping, now: float = 0.0) -> Decision:
    return decide(table, plan, now, INITIAL)[0]


def weights_of(decision: Decision) -> dict[str, int]:
    """answer -> weight of the candidates the decision hands out."""
    return {c.answer: c.weight for c in decision.candidates if c.weight > 0}


# --- latency ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, down, health, region, path, rtt_ms",
    [
        pytest.param(BASE, (), "down", EU, "direct", 20.0, id="fastest-region"),
        pytest.param({**BASE, EU: (20.0, 15.0)}, (), "down", EU, "accelerator", 15.0, id="fastest-over-its-accelerator"),
        pytest.param({**BASE, US: (80.0, 70.0)}, (EU,), "down", US, "accelerator", 70.0, id="fastest-down-next-one"),
        pytest.param(BASE, (EU,), "stale", US, "direct", 80.0, id="stale-is-left-like-down"),
        pytest.param({**BASE, AP: (5.0, 6.0)}, (), "down", AP, "direct", 5.0, id="far-but-fastest"),
        pytest.param({EU: (None, None), US: (None, None)}, (), "down", EU, "direct", None, id="no-data-first-in-order"),
    ],
)
def test_latency_picks_the_fastest_healthy_region(spec, down, health, region, path, rtt_ms):
    decision = once(plan_for("policy = \"latency\""), rows(spec, down, health))
    assert (decision.region, decision.path, decision.rtt_ms) == (region, path, rtt_ms)
    answer = (DIRECT if path == "direct" else ACCEL)[region]
    assert decision.answers == (answer,) and decision.answer == answer
    assert decision.fallback is None and decision.policy == "latency"
    assert decision.basis == ("measured" if rtt_ms is not None else "unknown")
    assert decision.candidates[0].weight == 255 and all(c.weight == 0 for c in decision.candidates[1:])


def test_latency_reads_healthy_not_the_health_word():
    table = rows(BASE)
    table[(EU, "direct")] = Row(20.0, 20.0, 20.0, 20.0, "unknown", False)  # the table's unknown_healthy = false
    table[(EU, "accelerator")] = Row(30.0, 30.0, 30.0, 30.0, "unknown", False)
    decision = once(plan_for("policy = \"latency\""), table)
    assert decision.region == US
    excluded = {c.region: c.excluded for c in decision.candidates if c.excluded}
    assert excluded == {EU: "unhealthy"}


@pytest.mark.parametrize("metric, region", [("ewma", EU), ("p95", US), ("min", EU)], ids=["ewma", "p95", "min"])
def test_latency_ranks_by_the_service_metric(metric, region):
    table = {
        (EU, "direct"): Row(20.0, 20.0, 90.0, 10.0, "up", True),
        (US, "direct"): Row(30.0, 30.0, 40.0, 25.0, "up", True),
    }
    plan = plan_for(f'policy = "latency"\nregions = ["{EU}", "{US}"]\nmetric = "{metric}"')
    assert once(plan, table).region == region


def test_latency_candidates_are_ranked_then_excluded_with_reasons():
    decision = once(plan_for("policy = \"latency\""), rows({**BASE, AP: (50.0, 60.0)}, (US,)))
    assert [(c.region, c.excluded) for c in decision.candidates] == [(EU, None), (AP, None), (SA, None), (US, "unhealthy")]
    assert "down: us-east-1" in decision.reason


# --- failover -----------------------------------------------------------------------------------

FAILOVER = f'policy = "failover"\npriority = ["{US}", "{EU}"]\n'


@pytest.mark.parametrize(
    "down, region",
    [
        pytest.param((), US, id="first-priority-although-slower"),
        pytest.param((US,), EU, id="first-down-second"),
        pytest.param((US, EU), AP, id="listed-down-then-service-order"),
        pytest.param((US, EU, AP), SA, id="last-one-standing"),
    ],
)
def test_failover_follows_the_priority_list(down, region):
    decision = once(plan_for(FAILOVER), rows(BASE, down))
    assert decision.region == region and decision.answers == (DIRECT[region],)
    assert decision.fallback is None


@pytest.mark.parametrize("dwell, back_at", [("0s", 4), ("10s", 11)], ids=["no-dwell", "dwell-10s"])
def test_failover_fails_back_after_n_evaluations_and_the_dwell(dwell, back_at):
    plan = plan_for(FAILOVER + f'hysteresis = {{dwell = "{dwell}", evaluations = 3}}')
    tables = [rows(BASE), rows(BASE, (US,))] + [rows(BASE)] * 14
    decisions, _ = run(plan, tables)
    regions = [d.region for d in decisions]
    # us is left at once when it goes down (t=1), and taken back on its 3rd good evaluation after the dwell
    assert regions == [US, EU] + [EU] * (back_at - 2) + [US] * (16 - back_at)


# --- weighted -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "weights, down, expected",
    [
        pytest.param({EU: 200, US: 55}, (), {EU: 200, US: 55}, id="as-configured"),
        pytest.param({EU: 3, US: 1}, (), {EU: 191, US: 64}, id="scaled-to-255"),
        pytest.param({EU: 255, US: 0}, (), {EU: 255}, id="zero-weight-left-out"),
        pytest.param({EU: 1, AP: 1}, (), {EU: 128, AP: 127}, id="unlisted-region-weighs-0"),
        pytest.param({EU: 0, US: 0, AP: 0, SA: 0}, (), {EU: 64, US: 64, AP: 64, SA: 63}, id="all-zero-alike"),
        pytest.param({}, (), {EU: 64, US: 64, AP: 64, SA: 63}, id="no-weights-alike"),
        pytest.param({EU: 200, US: 55}, (EU,), {US: 255}, id="heavy-one-down"),
        pytest.param({EU: 10}, (EU,), {US: 85, AP: 85, SA: 85}, id="weighted-down-zeros-take-over"),
    ],
)
def test_weighted_shares_sum_to_255(weights, down, expected):
    table = "{" + ", ".join(f"{r} = {w}" for r, w in weights.items()) + "}"
    plan = plan_for('policy = "weighted"\n' + (f"weights = {table}\n" if weights else ""))
    decision = once(plan, rows(BASE, down))
    assert weights_of(decision) == {DIRECT[r]: w for r, w in expected.items()}
    assert set(decision.answers) == {DIRECT[r] for r in expected}  # a zero weight is no answer at all
    assert sum(weights_of(decision).values()) == 255
    shares = [c.weight for c in decision.candidates[: len(decision.answers)]]
    assert shares == sorted(shares, reverse=True)  # heaviest first
    assert decision.region == max(expected, key=lambda r: (expected[r], -list(LOCATIONS).index(r)))


# --- geolocation --------------------------------------------------------------------------------

GEO = f'policy = "geolocation"\ngeolocation = {{eu = "{EU}", us = "{US}", "*" = "{AP}"}}\n'


@pytest.mark.parametrize(
    "group, down, region, fallback",
    [
        pytest.param("eu", (), EU, None, id="mapped"),
        pytest.param("us", (), US, None, id="mapped-although-slower"),
        pytest.param("apac", (), AP, None, id="unmapped-gets-default"),
        pytest.param("nowhere", (), AP, None, id="no-location-gets-default"),
        pytest.param("eu", (EU,), AP, None, id="mapped-down-default"),
        pytest.param("us", (EU,), US, None, id="other-groups-region-down-no-effect"),
        pytest.param("eu", (EU, AP), EU, "fail-open", id="mapped-and-default-down-fail-open"),
    ],
)
def test_geolocation_mapped_region_then_default(group, down, region, fallback):
    decision = once(plan_for(GEO, group), rows(BASE, down))
    assert (decision.region, decision.fallback) == (region, fallback)
    mapped = {"eu": EU, "us": US}.get(group)
    assert {c.region for c in decision.candidates if c.excluded is None} <= {mapped, AP}  # nothing outside the map


def test_geolocation_reason_says_mapped_or_default():
    assert "mapped for group eu" in once(plan_for(GEO, "eu"), rows(BASE)).reason
    assert "the default ('*') region" in once(plan_for(GEO, "apac"), rows(BASE)).reason


def test_geolocation_unmapped_group_without_default_gets_no_answer_without_claiming_an_outage():
    decision = once(plan_for(f'policy = "geolocation"\ngeolocation = {{eu = "{EU}"}}\n', "us"), rows(BASE))
    assert decision.answers == ()
    assert decision.fallback is None
    assert "down" not in decision.reason


# --- geoproximity -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "group, region",
    [("eu", EU), ("us", US), ("apac", AP), ("nowhere", EU)],
    ids=["eu-nearest", "us-nearest", "apac-nearest", "no-location-service-order"],
)
def test_geoproximity_nearest_region_whatever_the_latency(group, region):
    spec = {**BASE, SA: (1.0, 2.0)}  # sa-east-1 is the fastest everywhere, and never the nearest
    decision = once(plan_for('policy = "geoproximity"\n', group), rows(spec))
    assert decision.region == region


LINE = regions_toml({"west": (0.0, 0.0), "east": (0.0, 10.0)})
LINE_GROUPS = "".join(
    f'[[groups]]\nname = "{n}"\nlat = 0.0\nlon = {lon}\n' for n, lon in [("g40", 4.0), ("g55", 5.5), ("g65", 6.5), ("g68", 6.8)]
)


@pytest.mark.parametrize(
    "bias, expected",
    [
        # on the equator distance is proportional to longitude: the boundary sits where dW x (1 - bW/100) = dE x (1 - bE/100)
        pytest.param("", {"g40": "west", "g55": "east", "g65": "east", "g68": "east"}, id="no-bias-midpoint"),
        pytest.param("bias = {west = 50}", {"g40": "west", "g55": "west", "g65": "west", "g68": "east"}, id="west+50-boundary-at-6.67"),
        pytest.param("bias = {east = -50}", {"g40": "west", "g55": "west", "g65": "east", "g68": "east"}, id="east-50-boundary-at-6.0"),
        pytest.param("bias = {east = 99}", {"g40": "east", "g55": "east", "g65": "east", "g68": "east"}, id="east+99-takes-all"),
    ],
)
def test_geoproximity_bias_moves_the_boundary_as_route53(bias, expected):
    service = f'policy = "geoproximity"\n{bias}\n'
    table = rows({"west": (10.0, None), "east": (10.0, None)})
    got = {g: once(plan_for(service, g, LINE, LINE_GROUPS), table).region for g in expected}
    assert got == expected


@pytest.mark.parametrize("bias_west, bias_east", [(0, 0), (50, 0), (0, -50), (-99, 99)], ids=["none", "west+50", "east-50", "both"])
def test_geoproximity_biased_distance_is_distance_times_one_minus_bias(bias_west, bias_east):
    plan = plan_for(f'policy = "geoproximity"\nbias = {{west = {bias_west}, east = {bias_east}}}\n', "g65", LINE, LINE_GROUPS)
    assert plan.distance_km["west"] == pytest.approx(great_circle_km(0, 6.5, 0, 0) * (1 - bias_west / 100))
    assert plan.distance_km["east"] == pytest.approx(great_circle_km(0, 6.5, 0, 10) * (1 - bias_east / 100))


# --- multivalue and custom chains ---------------------------------------------------------------


@pytest.mark.parametrize(
    "service, down, regions",
    [
        pytest.param('policy = "multivalue"\nanswers = 2', (), [EU, US], id="answers-2"),
        pytest.param('policy = "multivalue"', (), [EU, US, AP, SA], id="default-up-to-8"),
        pytest.param('chain = ["healthy", "latency", "multivalue 3"]', (), [EU, US, AP], id="chain-count-3"),
        pytest.param('policy = "multivalue"\nanswers = 2', (EU,), [US, AP], id="down-one-left-out"),
        pytest.param('policy = "multivalue"\nanswers = 2', (EU, US, AP), [SA], id="fewer-than-n-left"),
    ],
)
def test_multivalue_gives_the_n_fastest_with_equal_weights(service, down, regions):
    decision = once(plan_for(service), rows(BASE, down))
    assert decision.answers == tuple(DIRECT[r] for r in regions)
    shares = list(weights_of(decision).values())
    assert sum(shares) == 255 and max(shares) - min(shares) <= 1


PRIORITY_MULTIVALUE = 'chain = ["healthy", "priority", "multivalue 2"]'


@pytest.mark.parametrize(
    "service, down, answers",
    [
        pytest.param(f'{PRIORITY_MULTIVALUE}\npriority = ["{SA}", "{AP}"]', (), [SA, AP], id="priority-multivalue"),
        pytest.param(f'{PRIORITY_MULTIVALUE}\npriority = ["{SA}", "{AP}"]', (SA,), [AP, EU], id="priority-multivalue-down"),
        pytest.param('chain = ["latency", "first"]', (EU,), [EU], id="no-healthy-step-keeps-a-down-region"),
        pytest.param('chain = ["healthy", "proximity", "weighted"]', (), [US, EU, SA, AP], id="proximity-orders-equal-weights"),
        pytest.param('chain = ["first"]', (), [EU], id="selector-alone-service-order"),
    ],
)
def test_custom_chains(service, down, answers):
    decision = once(plan_for(service, "us"), rows(BASE, down))
    assert decision.answers == tuple(DIRECT[r] for r in answers)
    assert decision.policy == "chain" and decision.fallback is None


FENCES = f"""policy = "latency"
[[services.fences]]
groups = ["eu"]
regions = ["{US}", "{SA}"]
[[services.fences]]
countries = ["DE"]
regions = ["{AP}"]
[[services.fences]]
cidrs = ["2001:db8::/32"]
regions = ["{AP}", "{SA}"]
"""


@pytest.mark.parametrize(
    "service, group, down, region, fenced",
    [
        pytest.param(FENCES, "eu", (), US, {EU, AP}, id="by-group-first-match-wins"),
        pytest.param(FENCES, "us", (), EU, set(), id="no-fence-matches"),
        pytest.param(FENCES, "apac", (), AP, {EU, US}, id="by-ipv6-cidr"),
        pytest.param(FENCES.replace('groups = ["eu"]', 'groups = ["apac"]'), "eu", (), AP, {EU, US, SA}, id="by-country"),
        pytest.param(FENCES, "eu", (US,), SA, {EU, AP}, id="fenced-region-down-next-allowed"),
        pytest.param(FENCES, "eu", (US, SA), US, {EU, AP}, id="allowed-all-down-fail-open-inside-the-fence"),
    ],
)
def test_fence_keeps_the_allowed_regions(service, group, down, region, fenced):
    decision = once(plan_for(service, group), rows(BASE, down))
    assert decision.region == region
    assert {c.region for c in decision.candidates if c.excluded == "fenced"} == fenced


# --- sticky -------------------------------------------------------------------------------------

STICKY = 'chain = ["healthy", "latency", "sticky 2"]'


@pytest.mark.parametrize(
    "client, prefix",
    [
        ("192.0.2.77", "192.0.2.0/24"),
        ("2001:db8:1:ffff::5", "2001:db8:1::/48"),
        ("::ffff:192.0.2.9", "192.0.2.0/24"),
    ],
    ids=["ipv4-24", "ipv6-48", "v4-mapped-as-ipv4"],
)
def test_client_prefix(client, prefix):
    assert client_prefix(client) == prefix


def test_client_prefix_rejects_a_bad_address():
    with pytest.raises(ValueError):
        client_prefix("192.0.2.300")


@pytest.mark.parametrize(
    "a, b",
    [
        ("192.0.2.1", "192.0.2.254"),
        ("2001:db8:1::1", "2001:db8:1:ffff:ffff:ffff:ffff:ffff"),
        ("::ffff:192.0.2.7", "192.0.2.200"),
    ],
    ids=["same-24", "same-48", "v4-mapped-and-ipv4"],
)
def test_sticky_same_prefix_same_answer(a, b):
    decision = once(plan_for(STICKY), rows(BASE))
    pool = {c.answer for c in decision.sticky_pool}
    assert pool == {DIRECT[EU], DIRECT[US]}
    first, second = decision.for_client(a), decision.for_client(b)
    assert first.answer == second.answer and first.answer in pool
    assert set(first.answers) == pool and (first.region, first.path) in {(c.region, c.path) for c in decision.sticky_pool}
    assert DIRECT[first.region] == first.answer


def test_sticky_groups_own_answer_is_the_rendezvous_pick_of_its_name():
    for group in ("eu", "us", "apac", "nowhere"):
        decision = once(plan_for(STICKY + "\n" + f'regions = ["{EU}", "{US}", "{AP}"]', group), rows({**BASE, US: (21.0, 31.0)}))
        assert {c.region for c in decision.sticky_pool} == {EU, US}
        assert decision.region == sticky_pick(decision.sticky_pool, group).region
        assert decision.answers[0] == decision.answer and set(decision.answers) == {DIRECT[EU], DIRECT[US]}


def test_sticky_spreads_prefixes_over_the_pool_and_keeps_a_prefix_when_another_member_leaves():
    plan = plan_for(f'chain = ["healthy", "latency", "sticky 3"]\nregions = ["{EU}", "{US}", "{AP}"]\n' + NO_DWELL)
    clients = [f"10.{i}.{j}.1" for i in range(4) for j in range(16)]
    before, state = decide(rows(BASE), plan, 0.0, INITIAL)
    picks = {c: before.for_client(c).region for c in clients}
    assert set(picks.values()) == {EU, US, AP}  # 64 prefixes over 3 members: each member gets some
    after, _ = decide(rows(BASE, (US,)), plan, 1.0, state)
    assert {c.region for c in after.sticky_pool} == {EU, AP}
    moved = {c for c in clients if after.for_client(c).region != picks[c]}
    assert moved == {c for c in clients if picks[c] == US}  # rendezvous hashing: only us-east-1's clients move


def test_for_client_leaves_a_non_sticky_decision_alone():
    decision = once(plan_for('policy = "latency"'), rows(BASE))
    assert decision.for_client("192.0.2.1") is decision
    sticky = once(plan_for(STICKY), rows(BASE))
    assert sticky.for_client(None) is sticky


# --- path choice --------------------------------------------------------------------------------

ONE_REGION = f'policy = "latency"\nregions = ["{EU}"]\n'


@pytest.mark.parametrize(
    "direct, accel, down, path, margin",
    [
        pytest.param(20.0, 25.0, (), "direct", 5.0, id="direct-faster"),
        pytest.param(20.0, 19.5, (), "direct", -0.5, id="accel-under-1ms-floor"),
        pytest.param(20.0, 18.5, (), "accelerator", 1.5, id="accel-over-1ms-floor"),
        pytest.param(100.0, 98.1, (), "direct", -1.9, id="accel-under-2pct"),
        pytest.param(100.0, 97.9, (), "accelerator", 2.1, id="accel-over-2pct"),
        pytest.param(20.0, 25.0, ((EU, "direct"),), "accelerator", None, id="direct-down-accel-although-slower"),
        pytest.param(20.0, 15.0, ((EU, "accelerator"),), "direct", None, id="accel-down"),
        pytest.param(None, 25.0, (), "accelerator", None, id="direct-no-row"),
        pytest.param(20.0, None, (), "direct", None, id="accel-no-row"),
    ],
)
def test_path_choice_accelerator_only_when_it_beats_direct_by_the_margin(direct, accel, down, path, margin):
    decision = once(plan_for(ONE_REGION), rows({EU: (direct, accel)}, down))
    assert decision.path == path
    assert decision.answer == (DIRECT if path == "direct" else ACCEL)[EU]
    if margin is None:
        assert decision.path_margin_ms is None
    else:
        # positive: the chosen path is that much faster than the other; negative: slower
        assert decision.path_margin_ms == pytest.approx(margin)
        assert decision.to_json()["path_margin_ms"] == pytest.approx(margin)


@pytest.mark.parametrize(
    "service, spec, down, region, path",
    [
        pytest.param('path = "accelerator"', {EU: (20.0, 25.0)}, (), EU, "accelerator", id="forced-accel-although-slower"),
        pytest.param('path = "direct"', {EU: (20.0, 5.0)}, (), EU, "direct", id="forced-direct-although-slower"),
        pytest.param('path = "accelerator"', {EU: (20.0, 25.0)}, ((EU, "accelerator"),), US, "accelerator", id="forced-down-other-region"),
        pytest.param('primary_path = "accelerator"', {EU: (19.5, 20.0)}, (), EU, "accelerator", id="primary-accel-direct-under-margin"),
        pytest.param('primary_path = "accelerator"', {EU: (18.0, 20.0)}, (), EU, "direct", id="primary-accel-direct-over-margin"),
    ],
)
def test_forced_and_primary_path(service, spec, down, region, path):
    decision = once(plan_for(f'policy = "latency"\nregions = ["{EU}", "{US}"]\n{service}'), rows({**spec, US: (80.0, 90.0)}, down))
    assert (decision.region, decision.path) == (region, path)
    if service.startswith("path"):
        assert decision.path_margin_ms is None  # a forced path compares with nothing
        assert {c.path for c in decision.candidates} == {path}


# --- hysteresis ---------------------------------------------------------------------------------

TWO = f'policy = "latency"\nregions = ["{EU}", "{US}"]\n'
EU_LEADS = rows({EU: (50.0, None), US: (80.0, None)})
US_LEADS = rows({EU: (50.0, None), US: (40.0, None)})  # 10 ms over max(2 ms, 3 % of 50 ms)


@pytest.mark.parametrize("evaluations", [1, 3, 5], ids=["n1", "n3", "n5"])
def test_a_challenger_wins_on_exactly_the_nth_evaluation(evaluations):
    plan = plan_for(TWO + f'hysteresis = {{dwell = "0s", evaluations = {evaluations}}}')
    decisions, _ = run(plan, [EU_LEADS] + [US_LEADS] * 8)
    assert [d.region for d in decisions] == [EU] + [EU] * (evaluations - 1) + [US] * (9 - evaluations)
    if evaluations > 1:
        assert f"1 of {evaluations} evaluations" in decisions[1].reason
    assert decisions[evaluations].changed_at == evaluations and decisions[evaluations - 1].changed_at == 0


@pytest.mark.parametrize(
    "incumbent_ms, challenger_ms, wins",
    [
        pytest.param(100.0, 97.1, False, id="100ms-lead-2.9-under-3pct"),
        pytest.param(100.0, 96.9, True, id="100ms-lead-3.1-over-3pct"),
        pytest.param(50.0, 48.1, False, id="50ms-lead-1.9-under-2ms"),
        pytest.param(50.0, 47.9, True, id="50ms-lead-2.1-over-2ms"),
    ],
)
def test_the_hysteresis_margin_is_max_2ms_3pct_by_default(incumbent_ms, challenger_ms, wins):
    plan = plan_for(TWO + NO_DWELL)
    start = rows({EU: (incumbent_ms, None), US: (incumbent_ms + 50, None)})
    challenged = rows({EU: (incumbent_ms, None), US: (challenger_ms, None)})
    decisions, _ = run(plan, [start] + [challenged] * 10)
    assert [d.region for d in decisions] == [EU] * 3 + [US if wins else EU] * 8


def test_a_broken_streak_starts_again():
    plan = plan_for(TWO + NO_DWELL)
    close = rows({EU: (50.0, None), US: (49.0, None)})  # leads, but under the margin
    tables = [EU_LEADS, US_LEADS, US_LEADS, close, US_LEADS, US_LEADS, US_LEADS]
    decisions, _ = run(plan, tables)
    assert [d.region for d in decisions] == [EU, EU, EU, EU, EU, EU, US]


def test_the_dwell_delays_a_voluntary_move_from_the_last_change():
    plan = plan_for(TWO)  # defaults: 3 evaluations, 10 s dwell
    decisions, state = run(plan, [EU_LEADS] + [US_LEADS] * 12)
    regions = [d.region for d in decisions]
    assert regions[:10] == [EU] * 10 and regions[10:] == [US] * 3  # streak of 3 at t=3, dwell over at t=10
    assert "dwell" in decisions[9].reason
    # the next voluntary move waits for the dwell from t=10 again
    decisions, _ = run(plan, [EU_LEADS] * 12, times=[11.0 + i for i in range(12)], state=state)
    assert [d.region for d in decisions] == [US] * 9 + [EU] * 3


def test_an_unhealthy_incumbent_is_left_at_once_despite_dwell_and_streak():
    plan = plan_for(TWO)
    decisions, _ = run(plan, [EU_LEADS, rows({EU: (50.0, None), US: (80.0, None)}, (EU,))])
    assert [d.region for d in decisions] == [EU, US]
    assert "left eu-west-1 at once" in decisions[1].reason and decisions[1].changed_at == 1.0


def test_an_unhealthy_incumbent_path_is_left_at_once_for_the_regions_other_path():
    plan = plan_for(ONE_REGION)
    both = rows({EU: (20.0, 25.0)})
    decisions, _ = run(plan, [both, rows({EU: (20.0, 25.0)}, ((EU, "direct"),))])
    assert [d.path for d in decisions] == ["direct", "accelerator"]


def test_a_path_switch_within_a_region_needs_the_hysteresis_margin_too():
    plan = plan_for(ONE_REGION + NO_DWELL)
    # 2.5 ms beats the path margin max(1 ms, 2 %) but not the hysteresis margin max(2 ms, 3 %) of 100 ms
    small = rows({EU: (100.0, 97.5)})
    decisions, state = run(plan, [rows({EU: (100.0, 110.0)})] + [small] * 6)
    assert {d.path for d in decisions} == {"direct"}
    decisions, _ = run(plan, [rows({EU: (100.0, 96.0)})] * 3, times=[10.0, 11.0, 12.0], state=state)
    assert [d.path for d in decisions] == ["direct", "direct", "accelerator"]


def test_multivalue_holds_its_set_until_a_challenger_beats_the_slowest_member():
    plan = plan_for('policy = "multivalue"\nanswers = 2\n' + NO_DWELL)
    start = rows({EU: (20.0, None), US: (30.0, None), AP: (100.0, None), SA: (200.0, None)})
    under = rows({EU: (20.0, None), US: (30.0, None), AP: (29.0, None), SA: (200.0, None)})
    over = rows({EU: (20.0, None), US: (30.0, None), AP: (25.0, None), SA: (200.0, None)})
    decisions, _ = run(plan, [start] + [under] * 5 + [over] * 3)
    sets = [set(d.answers) for d in decisions]
    assert sets[:8] == [{DIRECT[EU], DIRECT[US]}] * 8
    assert sets[8] == {DIRECT[EU], DIRECT[AP]}


def test_alternating_challengers_that_both_beat_the_incumbent_still_win_within_n_evaluations():
    plan = plan_for('policy = "latency"\n' + NO_DWELL)
    start = rows({EU: (100.0, None), US: (200.0, None), AP: (200.0, None)})
    one = rows({EU: (100.0, None), US: (50.0, None), AP: (50.5, None)})
    other = rows({EU: (100.0, None), US: (50.5, None), AP: (50.0, None)})
    decisions, _ = run(plan, [start, one, other, one, other, one, other])
    assert decisions[3].region in {US, AP}  # both lead by about 50 ms, for 3 evaluations in a row


def test_multivalue_reorder_inside_the_held_set_is_not_a_change():
    plan = plan_for('policy = "multivalue"\nanswers = 2\n')  # default dwell 10 s
    start = rows({EU: (50.0, None), US: (51.0, None), AP: (80.0, None)})
    one = rows({EU: (50.0, None), US: (50.5, None), AP: (20.0, None)})
    other = rows({EU: (50.5, None), US: (50.0, None), AP: (20.0, None)})
    decisions, _ = run(plan, [start] + [one, other] * 8)
    assert decisions[5].changed_at == 0.0
    assert DIRECT[AP] in decisions[12].answers  # ap-southeast-1 leads by 30 ms for 12 s, past the 10 s dwell


def test_weighted_answers_do_not_flip_paths_on_noise_inside_the_margin():
    plan = plan_for(f'policy = "weighted"\nregions = ["{EU}", "{US}"]\n' + NO_DWELL)
    # eu-west-1's accelerator leads direct by 2.0 +- 0.3 ms, right at the path margin max(1 ms, 2 % of 100 ms)
    tables = [rows({EU: (100.0, 98.0 + (0.3 if t % 2 else -0.3)), US: (80.0, 90.0)}) for t in range(8)]
    decisions, _ = run(plan, tables)
    assert len({d.answers for d in decisions}) == 1


# --- all down -----------------------------------------------------------------------------------

ALL_DOWN = (EU, US, AP, SA)


def test_fail_open_is_the_default_and_answers_as_if_all_were_healthy():
    spec = {**BASE, US: (10.0, 30.0)}
    decision = once(plan_for('policy = "latency"'), rows(spec, ALL_DOWN))
    assert decision.fallback == "fail-open"
    assert (decision.region, decision.answers) == (US, (DIRECT[US],))  # the fastest, health ignored
    assert "fail-open" in decision.reason
    assert {c.region for c in decision.candidates} == set(ALL_DOWN) and not any(c.excluded for c in decision.candidates)


def test_fail_open_multivalue_answers_every_regions_chosen_path():
    decision = once(plan_for('policy = "multivalue"'), rows(BASE, ALL_DOWN))
    assert decision.fallback == "fail-open"
    assert set(decision.answers) == {DIRECT[r] for r in ALL_DOWN}


def test_last_known_good_repeats_the_last_good_decision():
    plan = plan_for('policy = "latency"\nall_down = "last-known-good"')
    decisions, _ = run(plan, [rows({**BASE, EU: (20.0, 10.0)}), rows(BASE, ALL_DOWN), rows(BASE, ALL_DOWN)])
    good, down, still = decisions
    assert good.fallback is None and good.answers == (ACCEL[EU],)
    for d in (down, still):
        assert d.fallback == "last-known-good"
        assert (d.region, d.path, d.answers) == (EU, "accelerator", (ACCEL[EU],))
        assert "t=0" in d.reason
    assert still.changed_at == 0.0  # handing out the same answer is no change


def test_last_known_good_without_a_good_decision_gives_no_answer():
    decision = once(plan_for('policy = "latency"\nall_down = "last-known-good"'), rows(BASE, ALL_DOWN))
    assert (decision.fallback, decision.answers, decision.region, decision.basis) == ("last-known-good", (), None, "none")


def test_static_fallback_answers_its_addresses():
    plan = plan_for('policy = "latency"\nall_down = "static"\nfallback = ["192.0.2.53", "2001:db8::53"]')
    decision = once(plan, rows(BASE, ALL_DOWN))
    assert (decision.fallback, decision.basis, decision.region) == ("static", "static", None)
    assert decision.answers == ("192.0.2.53", "2001:db8::53")
    assert decision.answer == "192.0.2.53"


def test_none_gives_no_answer():
    decision = once(plan_for('policy = "latency"\nall_down = "none"'), rows(BASE, ALL_DOWN))
    assert (decision.fallback, decision.answers, decision.answer, decision.rtt_ms) == ("none", (), None, None)
    assert [c.excluded for c in decision.candidates] == ["unhealthy"] * 4


@pytest.mark.parametrize("all_down", ["fail-open", "last-known-good", "static", "none"])
def test_no_fallback_while_one_region_is_up_and_recovery_is_at_once(all_down):
    extra = '\nfallback = ["192.0.2.53"]' if all_down == "static" else ""
    plan = plan_for(f'policy = "latency"\nall_down = "{all_down}"{extra}')
    decisions, _ = run(plan, [rows(BASE, (EU, US, AP)), rows(BASE, ALL_DOWN), rows(BASE, (EU, US, SA))])
    assert decisions[0].fallback is None and decisions[0].region == SA
    assert decisions[1].fallback == all_down
    assert decisions[2].fallback is None and decisions[2].region == AP  # no hysteresis after an outage


# --- the decision as JSON -----------------------------------------------------------------------

DECISION_KEYS = {"service", "group", "policy", "region", "path", "answer", "answers", "rtt_ms", "ttl", "basis", "reason",
                 "fallback", "path_margin_ms", "candidates"}
CANDIDATE_KEYS = {"region", "path", "answer", "rtt_ms", "health", "weight"}


@pytest.mark.parametrize(
    "service, down",
    [('policy = "latency"', ()), ('policy = "weighted"', (US,)), ('policy = "latency"\nall_down = "none"', ALL_DOWN)],
    ids=["latency", "weighted-one-down", "no-answer"],
)
def test_decision_json_has_the_designed_fields(service, down):
    decision = once(plan_for(service + '\nttl = "30s"'), rows({**BASE, EU: (20.0, 12.345678)}, down))
    doc = json.loads(json.dumps(decision.to_json()))
    assert DECISION_KEYS <= doc.keys()
    assert (doc["service"], doc["group"], doc["ttl"]) == ("s", "eu", 30)
    assert doc["answer"] == (doc["answers"][0] if doc["answers"] else None)
    assert len(doc["candidates"]) == 4
    for c in doc["candidates"]:
        assert CANDIDATE_KEYS <= c.keys()
        assert c["health"] in ("up", "down", "unknown", "stale", "none") and 0 <= c["weight"] <= 255
    assert sum(c["weight"] for c in doc["candidates"]) in (0, 255)


def test_decision_json_values():
    decision = once(plan_for('policy = "latency"'), rows({**BASE, EU: (20.0, 12.345678)}))
    doc = decision.to_json()
    assert (doc["region"], doc["path"], doc["answer"], doc["answers"]) == (EU, "accelerator", ACCEL[EU], [ACCEL[EU]])
    assert (doc["rtt_ms"], doc["path_margin_ms"], doc["basis"]) == (12.346, 7.654, "measured")
    assert (doc["fallback"], doc["policy"]) == (None, "latency")
    assert doc["candidates"][0] == {**doc["candidates"][0], "region": EU, "weight": 255, "health": "up", "rtt_ms": 12.346}
    assert "eu-west-1 via accelerator" in doc["reason"]


# --- the engine ---------------------------------------------------------------------------------


class FakeSnapshot:
    """A table snapshot reduced to what the Decider reads: a group's rows."""

    def __init__(self, by_group: Mapping[str, Mapping]) -> None:
        self.by_group = by_group

    def group_rows(self, group: str) -> Mapping:
        return self.by_group.get(group, {})


def test_decider_decides_every_service_and_group_and_keeps_state():
    config = config_for('policy = "latency"\n' + NO_DWELL)
    decider = Decider(config)
    assert [g.name for g in decider.groups] == ["eu", "us", "apac", "nowhere", "default"]
    eu_rows = rows(BASE)
    local_rows = rows({**BASE, US: (5.0, 6.0)})  # the local vantage measures every group without rows of its own
    for t in range(4):
        decisions = decider.evaluate(FakeSnapshot({"eu": eu_rows if t == 0 else rows(BASE, (EU,)), "local": local_rows}), float(t))
    assert set(decisions) == {("s", g) for g in ("eu", "us", "apac", "nowhere", "default")}
    assert decider.lookup("s", "eu").region == US and decider.lookup("s", "us").region == US
    assert decider.lookup("nope", "eu") is None
    assert decider.state("s", "eu").incumbents == ((US, "direct"),)


def test_decider_runs_extra_services_beside_the_config():
    config = config_for('policy = "latency"')
    extra = config.services[0].model_copy(update={"name": "always-accelerator", "path": "accelerator"})
    decider = Decider(config, services=(config.services[0], extra))
    decider.evaluate(FakeSnapshot({"eu": rows(BASE)}), 0.0)
    assert decider.lookup("s", "eu").answer == DIRECT[EU]
    assert decider.lookup("always-accelerator", "eu").answer == ACCEL[EU]


def test_decider_reads_a_real_latency_table():
    config = config_for('policy = "latency"\n' + NO_DWELL)
    table = LatencyTable(TableConfig.from_settings(config.probing, config.health))
    decider = Decider(config)
    truth = {(EU, "direct"): 20.0, (EU, "accelerator"): 15.0, (US, "direct"): 80.0, (US, "accelerator"): 70.0,
             (AP, "direct"): 180.0, (AP, "accelerator"): 150.0, (SA, "direct"): 200.0, (SA, "accelerator"): 210.0}
    seen = []
    for now in range(8):
        for (region, path), rtt_ms in truth.items():
            key = ("eu", region, path)
            if region == EU and now >= 3:  # eu-west-1 goes dark: down after fail_after = 3 failed rounds
                table.add_sample(key, Sample.lost("t", "udp", now, LossReason.TIMEOUT), now)
                table.add_round(key, 1.0, now)
            else:
                table.add_sample(key, Sample(target="t", kind="udp", sent_at=now, rtt_ms=rtt_ms), now)
                table.add_round(key, 0.0, now)
        d = decider.evaluate(table.snapshot(now), float(now))[("s", "eu")]
        seen.append((d.region, d.path))
    assert seen[:5] == [(EU, "accelerator")] * 5
    assert seen[5:] == [(US, "accelerator")] * 3


@pytest.mark.parametrize(
    "sizes, expected",
    [
        pytest.param({"eu": 3.0, "us": 1.0}, {EU: 191, US: 64}, id="3-to-1"),
        pytest.param({"eu": 1.0, "us": 1.0}, {EU: 128, US: 127}, id="equal"),
        pytest.param({"us": 3.0}, {EU: 64, US: 191}, id="missing-size-is-1"),
        pytest.param({"eu": 1.0, "us": 254.0}, {EU: 1, US: 254}, id="small-share-kept"),
    ],
)
def test_service_weights_weigh_each_groups_answers_by_its_size(sizes, expected):
    table = rows(BASE)
    eu = once(plan_for('policy = "latency"', "eu"), table)
    us = once(plan_for(f'policy = "latency"\nregions = ["{US}"]', "us"), table)
    decisions = [eu, us]
    got = service_weights(decisions, sizes)
    assert got == {(r, "direct", DIRECT[r]): w for r, w in expected.items()}
    assert sum(got.values()) == 255


def test_service_weights_split_a_multivalue_group_and_add_up_shared_answers():
    table = rows(BASE)
    two = once(plan_for('policy = "multivalue"\nanswers = 2', "eu"), table)  # eu-west-1 128, us-east-1 127
    one = once(plan_for(f'policy = "latency"\nregions = ["{US}"]', "us"), table)  # us-east-1 255
    got = service_weights([two, one], {"eu": 1.0, "us": 1.0})
    assert got == {(EU, "direct", DIRECT[EU]): 64, (US, "direct", DIRECT[US]): 191}


@pytest.mark.parametrize("all_down", ["static", "last-known-good"])
def test_service_weights_count_a_group_answered_by_its_fallback(all_down):
    extra = '\nfallback = ["192.0.2.53"]' if all_down == "static" else ""
    eu_plan = plan_for(f'policy = "latency"\nall_down = "{all_down}"{extra}', "eu")
    _, state = decide(rows(BASE), eu_plan, 0.0, INITIAL)
    eu, _ = decide(rows(BASE, ALL_DOWN), eu_plan, 1.0, state)
    us = once(plan_for(f'policy = "latency"\nregions = ["{US}"]', "us"), rows(BASE))
    assert eu.answers  # the group does get an answer: the fallback's
    got = service_weights([eu, us], {"eu": 1.0, "us": 1.0})
    by_answer = {answer: w for (_, _, answer), w in got.items()}
    assert set(by_answer) == {eu.answer, DIRECT[US]} and sum(by_answer.values()) == 255


# --- review fixes: the costly path is never kept while slower, down paths are named, missing rows ------------------


@pytest.mark.parametrize(
    "direct_ms, accel_ms, paths",
    [
        pytest.param(100.0, 102.5, ["accelerator"] * 5, id="accel-slower-inside-the-hysteresis-margin-is-held"),
        pytest.param(100.0, 104.0, ["accelerator"] * 3 + ["direct"] * 2, id="direct-leads-by-more-than-3pct-takes-over"),
    ],
)
def test_a_held_accelerator_goes_back_to_direct_only_past_the_hysteresis_margin(direct_ms, accel_ms, paths):
    plan = plan_for(ONE_REGION + NO_DWELL)
    accel_leads = rows({EU: (100.0, 95.0)})  # 5 ms over the path margin max(1 ms, 2 %)
    decisions, _ = run(plan, [accel_leads] + [rows({EU: (direct_ms, accel_ms)})] * 4)
    assert [d.path for d in decisions] == paths


def test_a_held_accelerator_stays_while_it_is_still_faster_inside_the_path_margin():
    plan = plan_for(ONE_REGION + NO_DWELL)
    decisions, _ = run(plan, [rows({EU: (100.0, 95.0)})] + [rows({EU: (100.0, 99.5)})] * 5)
    assert {d.path for d in decisions} == {"accelerator"}  # 0.5 ms faster: no flap at the margin's edge


def test_direct_down_names_it_in_the_reason_and_gives_no_margin():
    decision = once(plan_for(ONE_REGION), rows({EU: (20.0, 25.0)}, ((EU, "direct"),)))
    assert (decision.path, decision.path_margin_ms) == ("accelerator", None)
    assert "accelerator because direct is down" in decision.reason


def test_a_path_without_a_row_is_not_healthy_when_the_group_has_other_rows():
    plan = plan_for(f'policy = "latency"\nregions = ["{EU}", "{US}"]\nall_down = "none"\n')
    # eu-west-1 has only an accelerator row, and it is down; us-east-1 is down too
    decision = once(plan, rows({EU: (None, 30.0), US: (80.0, 90.0)}, (EU, US)))
    assert decision.answers == () and decision.fallback == "none"


def test_a_row_set_up_but_not_yet_measured_keeps_the_decision_provisional():
    # the daemon creates a row for every target before its first round: a decision then waits for all of them
    config = config_for('policy = "latency"\n' + NO_DWELL)
    table = LatencyTable(TableConfig.from_settings(config.probing, config.health))
    for region in (EU, US):
        for path in ("direct", "accelerator"):
            table.ensure(("eu", region, path))
    decider = Decider(config)
    for n, (region, path, rtt_ms) in enumerate([(EU, "direct", 20.0), (US, "direct", 80.0), (US, "accelerator", 90.0),
                                                 (EU, "accelerator", 15.0)]):
        table.add_sample(("eu", region, path), Sample(target="t", kind="udp", sent_at=n, rtt_ms=rtt_ms), n)
        table.add_round(("eu", region, path), 0.0, n)
        d = decider.evaluate(table.snapshot(n), float(n))[("s", "eu")]
        assert d.basis == ("measured" if n == 3 else "provisional"), (n, d.reason)
    assert (d.region, d.path) == (EU, "accelerator")  # no incumbent held from the partial picture

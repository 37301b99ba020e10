"""Properties of the decider over random tables of 2-6 regions x (direct, accelerator) with random RTTs and health."""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from latency_router.config import parse_config
from latency_router.decider.decision import WEIGHT_SCALE, Candidate, Decision, client_prefix, share_weights, sticky_pick
from latency_router.decider.plan import Plan, compile_plan
from latency_router.decider.policy import INITIAL, decide
from support import Row, row

NAMES = tuple(f"r{i}" for i in range(6))
LOCATIONS = [(53.35, -6.26), (38.9, -77.04), (1.29, 103.85), (-23.55, -46.63), (35.68, 139.69), (50.11, 8.68)]
PATHS = ("direct", "accelerator")
MARGIN_MS, MARGIN_RATIO = 2.0, 0.03  # the default hysteresis margin: max(2 ms, 3 %)
PROPERTY = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])


def answer(i: int, path: str) -> str:
    return f"203.0.113.{i + 1}" if path == "direct" else f"198.51.100.{i + 1}"


@functools.lru_cache(maxsize=None)
def plan_for(n_regions: int, service: str) -> Plan:
    """The plan of service "s" for group "g" (in Frankfurt) over regions r0..r{n-1}."""
    parts = []
    for i, name in enumerate(NAMES[:n_regions]):
        lat, lon = LOCATIONS[i]
        parts.append(f'[[regions]]\nname = "{name}"\nlat = {lat}\nlon = {lon}\n')
        for path in PATHS:
            parts.append(f'[[regions.paths]]\nname = "{path}"\nprobe = "udp://{answer(i, path)}:7007"\nanswer = "{answer(i, path)}"\n')
    parts.append('[[groups]]\nname = "g"\nlat = 50.1\nlon = 8.7\n')
    parts.append(f'[[services]]\nname = "s"\n{service}\n')
    config = parse_config("\n".join(parts))
    return compile_plan(config, config.services[0], config.groups[0])


Rows = dict[tuple[str, str], Row]


@st.composite
def tables(draw, n_regions: int, healthy_only: bool = False) -> Rows:
    """Rows for every (region, path); RTTs often close together so that margins matter."""
    center = draw(st.floats(1.0, 300.0))
    spread = draw(st.sampled_from([3.0, 10.0, 50.0, 300.0]))
    health = st.just("up") if healthy_only else st.sampled_from(["up", "up", "up", "unknown", "down", "stale"])
    return {
        (name, path): row(round(center + draw(st.floats(0.0, spread)), 3), draw(health))
        for name in NAMES[:n_regions]
        for path in PATHS
    }


def handed_out(decision: Decision) -> list[Candidate]:
    """The candidates behind the decision's answers (they come first in `candidates`)."""
    return list(decision.candidates[: len(decision.answers)])


# --- hysteresis: a clear lead wins on the Nth evaluation ----------------------------------------


@PROPERTY
@given(data=st.data(), n=st.integers(2, 6), evaluations=st.integers(1, 5))
def test_a_candidate_faster_by_more_than_the_margin_wins_on_exactly_the_nth_evaluation(data, n, evaluations):
    plan = plan_for(n, f'policy = "latency"\nhysteresis = {{evaluations = {evaluations}}}')  # the default 10 s dwell
    table = data.draw(tables(n))
    first, state = decide(table, plan, 0.0, INITIAL)
    assume(first.fallback is None)
    incumbent_ms = first.rtt_ms
    challenger = data.draw(st.sampled_from([r for r in NAMES[:n] if r != first.region]))
    lead_ms = max(MARGIN_MS, MARGIN_RATIO * incumbent_ms) + data.draw(st.floats(0.05, 50.0))
    assume(incumbent_ms - lead_ms >= 0.5)
    challenged = {**table, (challenger, "direct"): row(incumbent_ms - lead_ms)}
    regions = []
    for i in range(evaluations + 3):  # evaluations from t=100 on, long past the dwell
        decision, state = decide(challenged, plan, 100.0 + i, state)
        regions.append(decision.region)
    assert regions == [first.region] * (evaluations - 1) + [challenger] * 4


# --- hysteresis: noise inside the margin never flips --------------------------------------------


def noise_amplitude_ms(table: Rows, held: list[Candidate]) -> float:
    """The largest noise (each row within +-amplitude) under which no row can lead a held candidate by its margin."""
    amplitude = MARGIN_MS / 2
    held_regions = {c.region for c in held}
    for h in held:
        # what can challenge h: other regions' rows, and h's own region over its other path
        rivals = [r.ewma_ms for (region, path), r in table.items()
                  if r.healthy and (region not in held_regions or (region == h.region and path != h.path))]
        lead_ms = max([h.rtt_ms - ms for ms in rivals], default=-MARGIN_MS)
        need_ms = max(MARGIN_MS, MARGIN_RATIO * (h.rtt_ms - MARGIN_MS / 2))
        # two rows moving apart by 2 x amplitude must stay under the margin
        amplitude = min(amplitude, 0.49 * (need_ms - max(lead_ms, 0.0)))
    return amplitude


@settings(PROPERTY, max_examples=80)
@given(
    data=st.data(),
    n=st.integers(2, 6),
    evaluations=st.integers(1, 4),
    service=st.sampled_from(['policy = "latency"', 'policy = "multivalue"\nanswers = 2']),
)
def test_noise_inside_the_margin_never_flips_a_decision(data, n, evaluations, service):
    plan = plan_for(n, f'{service}\nhysteresis = {{dwell = "0s", evaluations = {evaluations}}}')
    base = data.draw(tables(n))
    first, state = decide(base, plan, 0.0, INITIAL)
    assume(first.fallback is None)
    amplitude = noise_amplitude_ms(base, handed_out(first))
    assume(amplitude >= 0.05)
    rng = data.draw(st.randoms(use_true_random=False))
    noise = dict.fromkeys(base, 0.0)
    held = {(c.region, c.path) for c in handed_out(first)}
    for t in range(1, 41):
        for key in noise:  # a bounded random walk around each fixed RTT
            noise[key] = min(amplitude, max(-amplitude, noise[key] + rng.uniform(-amplitude / 2, amplitude / 2)))
        table = {key: row(r.ewma_ms + noise[key], r.health) for key, r in base.items()}
        decision, state = decide(table, plan, float(t), state)
        assert {(c.region, c.path) for c in handed_out(decision)} == held, f"flipped at t={t}"
        if plan.count == 1:
            assert (decision.region, decision.path, decision.answers) == (first.region, first.path, first.answers)


# --- health: an unhealthy candidate is never chosen while a healthy one exists ------------------

SERVICES = [
    'policy = "latency"',
    'policy = "failover"\npriority = ["r1", "r0"]',
    'policy = "geoproximity"',
    'policy = "multivalue"\nanswers = 3',
    'policy = "weighted"\nweights = {r0 = 200, r1 = 0}',
    'policy = "weighted"',
    'chain = ["healthy", "proximity", "sticky 2"]',
]


@PROPERTY
@given(
    data=st.data(),
    n=st.integers(2, 6),
    service=st.sampled_from(SERVICES),
    steps=st.integers(1, 8),
)
def test_an_unhealthy_candidate_is_never_chosen_while_a_healthy_one_exists(data, n, service, steps):
    plan = plan_for(n, service)
    state, now = INITIAL, 0.0
    for _ in range(steps):
        table = data.draw(tables(n))
        now += data.draw(st.sampled_from([0.5, 1.0, 5.0, 20.0]))
        decision, state = decide(table, plan, now, state)
        if not any(r.healthy for r in table.values()):
            assert decision.fallback == "fail-open"
            continue
        assert decision.fallback is None and decision.answers
        for c in handed_out(decision):
            assert table[(c.region, c.path)].healthy, f"{c.region} via {c.path} is {c.health}"
        if decision.sticky_pool:
            assert all(table[(c.region, c.path)].healthy for c in decision.sticky_pool)


# --- determinism ----------------------------------------------------------------------------------

ALL_SERVICES = SERVICES + [
    'policy = "geolocation"\ngeolocation = {g = "r1", "*" = "r0"}',
    'chain = ["fence", "latency", "multivalue 2"]',
    'policy = "latency"\nall_down = "last-known-good"',
    'policy = "latency"\npath = "accelerator"',
]


@st.composite
def sparse_tables(draw, n_regions: int) -> Rows:
    """Rows with some (region, path)s missing altogether."""
    table = draw(tables(n_regions))
    keep = draw(st.lists(st.booleans(), min_size=len(table), max_size=len(table)))
    return {k: r for (k, r), kept in zip(table.items(), keep) if kept}


@PROPERTY
@given(data=st.data(), n=st.integers(2, 6), service=st.sampled_from(ALL_SERVICES), history=st.integers(0, 5))
def test_a_decision_depends_only_on_its_inputs_not_on_row_order(data, n, service, history):
    plan = plan_for(n, service)
    state, now = INITIAL, 0.0
    for _ in range(history):
        now += data.draw(st.sampled_from([1.0, 5.0, 20.0]))
        _, state = decide(data.draw(sparse_tables(n)), plan, now, state)
    table = data.draw(sparse_tables(n))
    now += 1.0
    decision, next_state = decide(table, plan, now, state)
    again, again_state = decide(table, plan, now, state)
    assert (again, again_state) == (decision, next_state)
    shuffled = dict(data.draw(st.permutations(list(table.items()))))
    assert decide(shuffled, plan, now, state) == (decision, next_state)
    assert decide(dict(reversed(list(table.items()))), plan, now, state) == (decision, next_state)


# --- weights and sticky picks ---------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(raw=st.lists(st.integers(0, 255), min_size=1, max_size=40))
def test_share_weights_sum_to_255_and_stay_within_one_of_the_exact_share(raw):
    shares = share_weights(len(raw), [float(w) for w in raw])
    assert sum(shares) == WEIGHT_SCALE and all(0 <= s <= WEIGHT_SCALE for s in shares)
    total = sum(raw) or len(raw)
    exact = [WEIGHT_SCALE * (w if sum(raw) else 1) / total for w in raw]
    assert all(abs(s - e) < 1 for s, e in zip(shares, exact))


def pool_of(members: list[int]) -> tuple[Candidate, ...]:
    return tuple(Candidate(f"r{i}", "direct", answer(i, "direct"), 10.0, "up", True) for i in members)


@settings(max_examples=200, deadline=None)
@given(
    members=st.lists(st.integers(0, 5), min_size=2, max_size=6, unique=True),
    octets=st.tuples(st.integers(1, 223), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255)),
)
def test_sticky_pick_keeps_a_prefix_unless_its_own_member_leaves(members, octets):
    a, b, c, host1, host2 = octets
    pool = pool_of(members)
    key = client_prefix(f"{a}.{b}.{c}.{host1}")
    assert key == client_prefix(f"{a}.{b}.{c}.{host2}") == client_prefix(f"::ffff:{a}.{b}.{c}.{host2}")
    chosen = sticky_pick(pool, key)
    assert chosen in pool and sticky_pick(tuple(reversed(pool)), key) == chosen
    for gone in pool:
        rest = tuple(m for m in pool if m is not gone)
        if gone is not chosen:
            assert sticky_pick(rest, key) == chosen


@pytest.mark.parametrize("n", [2, 6], ids=["2-regions", "6-regions"])
def test_the_property_tables_cover_both_paths_of_every_region(n):
    plan = plan_for(n, 'policy = "latency"')
    assert [r.name for r in plan.regions] == list(NAMES[:n])
    assert all([p for p, _ in r.paths] == list(PATHS) for r in plan.regions)
    assert (plan.margin_ms, plan.margin_ratio, plan.path_margin_ms, plan.path_margin_ratio) == (2.0, 0.03, 1.0, 0.02)


@settings(max_examples=40, deadline=None)
@given(
    steps=st.lists(
        st.tuples(
            st.sets(st.sampled_from(("g1", "g2", "g3"))),  # the groups that get new samples this step
            st.floats(min_value=0.5, max_value=3.0),  # time to the next step
            st.lists(st.one_of(st.none(), st.floats(min_value=5.0, max_value=200.0)), min_size=6, max_size=6),
        ),
        min_size=1,
        max_size=25,
    )
)
def test_the_decider_reusing_unchanged_groups_decides_as_decide_would_every_time(steps):
    from latency_router.decider.engine import Decider
    from latency_router.decider.policy import rows_for
    from latency_router.decider.table import LatencyTable, TableConfig
    from latency_router.probes.base import LossReason, Sample

    regions = "".join(
        f'[[regions]]\nname = "{r}"\nlat = {LOCATIONS[i][0]}\nlon = {LOCATIONS[i][1]}\n'
        + "".join(f'[[regions.paths]]\nname = "{p}"\nprobe = "udp://{answer(i, p)}:7007"\nanswer = "{answer(i, p)}"\n' for p in PATHS)
        for i, r in enumerate(NAMES[:3])
    )
    groups = "".join(f'[[groups]]\nname = "{g}"\n' for g in ("g1", "g2", "g3"))
    config = parse_config(regions + groups + '[[services]]\nname = "s"\npolicy = "latency"\n[services.hysteresis]\ndwell = "2s"\n')
    table = LatencyTable(TableConfig.from_settings(config.probing, config.health))
    decider = Decider(config)
    reference = {key: INITIAL for key in decider.plans}
    now = 0.0
    for updated, dt, rtts in steps:
        for g in sorted(updated):
            for i, (r, p) in enumerate((r, p) for r in NAMES[:3] for p in PATHS):
                rtt = rtts[i]
                sample = Sample.lost("t", "udp", now, LossReason.TIMEOUT) if rtt is None else Sample(target="t", kind="udp", sent_at=now, rtt_ms=rtt)
                table.add_sample((g, r, p), sample, now)
                table.add_round((g, r, p), 1.0 if rtt is None else 0.0, now)
        snapshot = table.snapshot(now)
        got = decider.evaluate(snapshot, now)
        for key, plan in decider.plans.items():
            want, reference[key] = decide(rows_for(snapshot, plan), plan, now, reference[key])
            assert got[key] == want, (key, [(f, a, b) for f, a, b in zip(want._fields, got[key], want) if a != b])
        now += dt

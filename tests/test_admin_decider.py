"""Operator overrides in the Decider: drained regions, pinned decisions, and what a reloaded Decider adopts."""

from __future__ import annotations

import pytest

from latency_router.config import parse_config
from latency_router.decider.decision import WEIGHT_SCALE
from latency_router.decider.engine import Decider
from latency_router.decider.policy import DRAINED
from test_policies import ACCEL, BASE, DIRECT, EU, GROUPS, NO_DWELL, REGIONS, US, FakeSnapshot, config_for, rows


def evaluate(decider: Decider, spec=BASE, times=range(1), down=()):
    """Evaluate once per time in `times` on the same rows (every group reads the eu rows); the last decisions."""
    snapshot = FakeSnapshot({"eu": rows(spec, down), "us": rows(spec, down)})
    out = None
    for t in times:
        out = decider.evaluate(snapshot, float(t))
    return out


def test_a_drained_region_is_left_at_once_and_named():
    decider = Decider(config_for('policy = "latency"\n' + NO_DWELL))
    assert evaluate(decider)[("s", "eu")].region == EU
    decider.set_drained({EU})
    d = evaluate(decider, times=[1.0])[("s", "eu")]
    assert (d.region, d.path) == (US, "direct")  # no hysteresis against an operator
    assert "drained by an operator: eu-west-1" in d.reason
    assert [c.excluded for c in d.candidates if c.region == EU] == [DRAINED]


def test_a_drained_region_never_returns_through_fail_open():
    decider = Decider(config_for('policy = "latency"\n' + NO_DWELL))
    decider.set_drained({EU})
    # every other region is down: fail-open answers as if all were healthy, but not with the drained one
    d = evaluate(decider, down=[r for r in BASE if r != EU])[("s", "eu")]
    assert d.fallback == "fail-open" and d.region != EU and d.region is not None


def test_draining_every_region_leaves_no_answer_rather_than_an_all_down_fallback():
    decider = Decider(config_for('policy = "latency"\nall_down = "static"\nfallback = ["192.0.2.99"]\n'))
    decider.set_drained(set(BASE))
    d = evaluate(decider)[("s", "eu")]
    assert d.answers == () and d.fallback is None
    assert "no region is allowed" in d.reason and "drained" in d.reason


def test_an_undrained_region_comes_back_as_a_challenger_after_the_hysteresis():
    decider = Decider(config_for('policy = "latency"\n' + NO_DWELL))
    decider.set_drained({EU})
    assert evaluate(decider, times=range(3))[("s", "eu")].region == US
    decider.set_drained(set())
    seen = [evaluate(decider, times=[t])[("s", "eu")].region for t in range(3, 7)]
    assert seen == [US, US, EU, EU]  # a lead of 60 ms for 3 evaluations in a row


def test_a_pin_overrides_the_decision_and_an_unpin_returns_to_the_live_one_at_once():
    decider = Decider(config_for('policy = "latency"\n' + NO_DWELL))
    evaluate(decider)
    decider.pin("s", "eu", US, "accelerator")
    d = decider.lookup("s", "eu")
    assert (d.region, d.path, d.answers, d.basis) == (US, "accelerator", (ACCEL[US],), "pinned")
    assert d.rtt_ms == 90.0  # the pinned row's own metric
    assert d.candidates[0].weight == WEIGHT_SCALE and all(c.weight == 0 for c in d.candidates[1:])
    assert "pinned by an operator; the policy would choose eu-west-1 via direct" in d.reason
    assert decider.lookup("s", "us").region == EU  # other groups are untouched
    # the policy goes on deciding under the pin
    d = evaluate(decider, times=[1.0])[("s", "eu")]
    assert d.basis == "pinned"
    assert decider.unpin("s", "eu") is True
    assert decider.lookup("s", "eu").answers == (DIRECT[EU],)
    assert decider.unpin("s", "eu") is False


@pytest.mark.parametrize("service, group, region, path, words", [
    ("nope", "eu", US, "direct", "unknown (service, group)"),
    ("s", "nope", US, "direct", "unknown (service, group)"),
    ("s", "eu", "mars-1", "direct", "no path direct in region mars-1"),
    ("s", "eu", US, "carrier-pigeon", "no path carrier-pigeon"),
])
def test_a_pin_that_names_nothing_real_is_refused(service, group, region, path, words):
    decider = Decider(config_for('policy = "latency"'))
    with pytest.raises(KeyError, match=words.replace("(", r"\(").replace(")", r"\)")):
        decider.pin(service, group, region, path)
    assert decider.pins == {}


def test_a_reloaded_decider_adopts_unchanged_plans_state_drains_and_pins():
    old = Decider(config_for('policy = "latency"\n' + NO_DWELL))
    evaluate(old, {**BASE, US: (80.0, 90.0)}, times=range(2))
    # a challenger on a streak: us-east-1 is now faster for the eu group
    evaluate(old, {**BASE, US: (5.0, 90.0)}, times=[2.0])
    assert old.state("s", "eu").streak == 1
    old.set_drained({"ap-southeast-1"})
    old.pin("s", "us", US, "direct")
    same = Decider(parse_config(f'{REGIONS}\n{GROUPS}\n[[services]]\nname = "s"\npolicy = "latency"\n{NO_DWELL}'))
    same.adopt(old)
    assert same.state("s", "eu") == old.state("s", "eu")
    assert same.drained == {"ap-southeast-1"} and dict(same.pins) == dict(old.pins)
    assert same.lookup("s", "us").basis == "pinned"
    # a changed plan (another margin) starts afresh
    changed = Decider(config_for('policy = "latency"\nhysteresis = {dwell = "0s", evaluations = 5}\n'))
    changed.adopt(old)
    assert changed.state("s", "eu").streak == 0
    assert changed.lookup("s", "eu") is None and changed.lookup("s", "us") is None


def test_a_drained_region_is_not_handed_out_again_as_the_last_known_good():
    decider = Decider(config_for('policy = "latency"\nall_down = "last-known-good"\n' + NO_DWELL))
    assert evaluate(decider)[("s", "eu")].region == EU  # the last good decision names eu-west-1
    decider.set_drained({EU})
    d = evaluate(decider, down=[r for r in BASE if r != EU], times=[1.0])[("s", "eu")]
    assert d.region != EU and EU not in d.answers
    assert d.fallback == "last-known-good" and d.answers == ()  # nothing good is left to hand out


def test_while_warming_decisions_are_provisional_and_no_incumbent_is_held():
    # after a restart: a first fresh round of a slower path must not become an incumbent that hysteresis defends
    decider2 = Decider(config_for('policy = "latency"'))
    first = decider2.evaluate(FakeSnapshot({"eu": rows({**BASE, US: (5.0, 6.0)})}), 0.0, warming=True)[("s", "eu")]
    assert first.basis == "provisional" and first.region == US
    assert "not every path has been probed since the start" in first.reason
    # the picture is complete: the best region now wins at once, with no dwell or streak against the warm-up choice
    after = decider2.evaluate(FakeSnapshot({"eu": rows(BASE)}), 1.0)[("s", "eu")]
    assert (after.region, after.basis) == (EU, "measured")

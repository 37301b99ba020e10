"""The shared DNS plan: create/update/delete in a fixed order, the churn threshold, both safety refusals and force."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from latency_router.exporters.dns.model import Answer, Change, Key, Plan, RecordSet
from latency_router.exporters.dns.plan import (
    PlanSettings,
    format_plan,
    key_label,
    make_plan,
    plan_counts,
    weight_shift,
)

N = "api.example.com."
M = "www.example.com."
A1, A2, A3 = "192.0.2.1", "192.0.2.2", "192.0.2.3"
V6 = "2001:db8::1"


def rs(name: str = N, weights: dict[str, int] | None = None, *, rtype: str = "A", scope: str | None = None,
       ttl: int = 60, networks: tuple[str, ...] = ()) -> RecordSet:
    """A record set whose answers carry set ids named after their values."""
    answers = tuple(Answer(v, w, f"id-{v}") for v, w in sorted((weights if weights is not None else {A1: 255}).items()))
    return RecordSet(name, rtype, ttl, answers, scope, networks)  # type: ignore[arg-type]


def cur(*sets: RecordSet) -> dict[Key, RecordSet]:
    return {s.key: s for s in sets}


def plan(current, desired, force: bool = False, **kw) -> Plan:
    return make_plan("test", current, desired, PlanSettings(**kw), force=force)


def actions(p: Plan) -> list[tuple[str, Key]]:
    return [(c.action, c.key) for c in p.changes]


def apply_plan(current: dict[Key, RecordSet], p: Plan) -> dict[Key, RecordSet]:
    out = dict(current)
    for c in p.changes:
        if c.new is None:
            out.pop(c.key)
        else:
            out[c.key] = c.new
    return out


# --- create, update, delete ------------------------------------------------------------------------


def test_create_update_delete_in_a_fixed_order():
    current = cur(rs(N, {A1: 200, A2: 55}), rs(M), rs(N, scope="eu"))
    desired = [rs(N, {A1: 100, A2: 155}), rs(N, {V6: 255}, rtype="AAAA"), rs(M)]
    p = plan(current, desired)
    assert actions(p) == [("create", (N, "AAAA", None)), ("update", (N, "A", None)), ("delete", (N, "A", "eu"))]
    assert p.changes[1].old == current[(N, "A", None)] and p.changes[1].new == desired[0]
    assert p.changes[2].new is None and p.skipped == () and p.refused == ()
    assert plan_counts(p) == {"create": 1, "update": 1, "delete": 1, "skipped": 0, "refused": 0}


def test_nothing_to_do_is_an_empty_plan():
    current = cur(rs(N, {A1: 128, A2: 127}))
    p = plan(current, [rs(N, {A2: 127, A1: 128})])  # answer order does not matter
    assert p.empty and p.changes == () and p.skipped == () and p.refused == ()


@settings(max_examples=50, deadline=None)
@given(st.randoms(use_true_random=False))
def test_the_order_does_not_depend_on_the_order_of_the_inputs(rnd: random.Random):
    current_sets = [rs(f"n{i}.example.com.", {A1: 255}, scope=s) for i in range(4) for s in (None, "eu")]
    desired_sets = [rs(f"n{i}.example.com.", {A2: 255} if i % 2 else {A1: 255}, scope=s)
                    for i in range(1, 6) for s in (None, "eu", "us")]
    baseline = plan(cur(*current_sets), desired_sets, max_weight_shift=1.0)
    rnd.shuffle(current_sets)
    rnd.shuffle(desired_sets)
    shuffled = plan(cur(*current_sets), desired_sets, max_weight_shift=1.0)
    assert shuffled == baseline
    order = [(c.action, c.key) for c in baseline.changes]
    rank = {"create": 0, "update": 1, "delete": 2}
    assert order == sorted(order, key=lambda a: (rank[a[0]], a[1][0], a[1][1], a[1][2] is not None, a[1][2] or ""))


def test_manage_deletes_off_leaves_unwanted_sets_alone():
    p = plan(cur(rs(N), rs(M)), [rs(N)], manage_deletes=False)
    assert p.empty


def test_the_same_key_twice_in_the_desired_state_is_an_error():
    with pytest.raises(ValueError, match=r"desired: api\.example\.com\. A \[eu\] is given twice"):
        plan({}, [rs(N, scope="eu"), rs(N, {A2: 1}, scope="eu")])


# --- churn -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "old, new, threshold, written",
    [
        pytest.param({A1: 128, A2: 127}, {A1: 137, A2: 118}, 10, False, id="9-points-skipped"),
        pytest.param({A1: 128, A2: 127}, {A1: 138, A2: 117}, 10, True, id="10-points-written"),
        pytest.param({A1: 128, A2: 127}, {A1: 129, A2: 126}, 1, True, id="threshold-1-writes-any-move"),
        pytest.param({A1: 128, A2: 127}, {A1: 123, A2: 122, A3: 10}, 10, True, id="a-new-answer-is-written"),
        pytest.param({A1: 128, A2: 127}, {A1: 130}, 10, True, id="an-answer-gone-is-written"),
        # an answer on one side only is a move from or to weight 0 (the desired sets leave weight-0 answers out)
        pytest.param({A1: 128, A2: 127}, {A1: 128, A2: 126, A3: 1}, 10, False, id="a-new-answer-below-it-is-skipped"),
        pytest.param({A1: 254, A2: 1}, {A1: 255}, 10, False, id="an-answer-gone-below-it-is-skipped"),
        pytest.param({A1: 255, A2: 0}, {A1: 255}, 10, False, id="a-weight-0-answer-gone-is-skipped"),
        pytest.param({A1: 250, A2: 5}, {A1: 250}, 5, True, id="an-answer-gone-at-it-is-written"),
        pytest.param({A1: 0, A2: 0}, {A1: 0}, 10, True, id="an-answer-gone-from-all-zero-is-written"),
        pytest.param({A1: 0}, {A1: 0, A2: 0}, 10, True, id="an-answer-new-to-all-zero-is-written"),
        pytest.param({}, {A1: 1}, 10, True, id="answers-where-there-were-none-are-written"),
        pytest.param({A1: 0, A2: 0}, {A1: 5, A2: 0}, 10, True, id="all-zero-to-weighted-is-written"),
        pytest.param({A1: 5, A2: 0}, {A1: 0, A2: 0}, 10, True, id="weighted-to-all-zero-is-written"),
    ],
)
def test_churn_threshold(old, new, threshold, written):
    p = plan(cur(rs(N, old)), [rs(N, new)], min_weight_change=threshold, max_weight_shift=1.0)
    assert actions(p) == ([("update", (N, "A", None))] if written else [])
    assert len(p.skipped) == (0 if written else 1)


def test_a_skip_names_the_set_and_the_figures():
    p = plan(cur(rs(N, {A1: 128, A2: 127})), [rs(N, {A1: 121, A2: 134})])
    (line,) = p.skipped
    assert line == f"{N} A: weights moved at most 7 < 10: {A1} 128 -> 121, {A2} 127 -> 134"


@pytest.mark.parametrize(
    "new",
    [
        pytest.param(rs(N, {A1: 130, A2: 125}, ttl=30), id="ttl"),
        pytest.param(rs(N, {A1: 130, A2: 125}, networks=("192.0.2.0/24",)), id="networks"),
        pytest.param(RecordSet(N, "A", 60, (Answer(A1, 130, "other"), Answer(A2, 125, f"id-{A2}"))), id="set-id"),
    ],
)
def test_a_small_weight_move_with_another_change_is_written(new):
    p = plan(cur(rs(N, {A1: 128, A2: 127})), [new])
    assert actions(p) == [("update", (N, "A", None))] and p.skipped == ()


def test_an_answer_hovering_around_weight_0_is_not_written_at_every_flip():
    # desired sets leave weight-0 answers out: a far answer moving between 0 and 1 adds and removes it
    held = rs(N, {A1: 254, A2: 1})
    writes = 0
    for i in range(10):
        want = rs(N, {A1: 255}) if i % 2 == 0 else rs(N, {A1: 254, A2: 1})
        p = plan(cur(held), [want], max_weight_shift=1.0)
        if p.changes:
            writes += 1
            held = p.changes[0].new  # type: ignore[assignment]
    assert writes == 0
    grown = plan(cur(held), [rs(N, {A1: 240, A2: 15})], max_weight_shift=1.0)  # a real move of 14 points
    assert actions(grown) == [("update", (N, "A", None))]


def test_a_new_answer_with_a_set_id_is_no_shape_change_but_a_changed_set_id_is():
    current = cur(RecordSet(N, "A", 60, (Answer(A1, 250, "eu/direct"),)))
    new_answer = RecordSet(N, "A", 60, (Answer(A1, 250, "eu/direct"), Answer(A2, 5, "us/direct")))
    assert plan(current, [new_answer]).skipped and plan(current, [new_answer]).empty
    renamed = RecordSet(N, "A", 60, (Answer(A1, 250, "eu/accelerator"), Answer(A2, 5, "us/direct")))
    assert actions(plan(current, [renamed])) == [("update", (N, "A", None))]


def test_a_set_whose_every_answer_is_replaced_is_written_whatever_the_threshold():
    # a set someone else wrote (weight 1 each, their set ids) replaced by ours: no answer in common, no small move
    theirs = RecordSet(N, "A", 60, (Answer(A1, 1, "theirs"), Answer(A2, 1, "theirs-2")))
    ours = rs(N, {A3: 25} | {f"192.0.2.{i}": 23 for i in range(10, 20)})  # 11 answers, none of 100 points
    p = plan(cur(theirs), [ours], min_weight_change=100, max_weight_shift=1.0)
    assert actions(p) == [("update", (N, "A", None))] and not p.skipped


def test_drift_adds_up_against_what_the_provider_holds():
    current = cur(rs(N, {A1: 128, A2: 127}))
    written = []
    for step in range(1, 10):  # the desired weights creep by 3 points a step
        desired = [rs(N, {A1: 128 + 3 * step, A2: 127 - 3 * step})]
        p = plan(current, desired)
        current = apply_plan(current, p)
        written += [step] * len(p.changes)
    assert written == [4, 8]  # each write once the creep since the last one reaches 10 points: 12 at step 4 and 8


# --- safety: never an empty answer ---------------------------------------------------------------


def test_an_update_to_no_answer_is_refused_and_the_rest_still_goes():
    current = cur(rs(N, scope="eu"), rs(M, {A1: 255}))
    desired = [rs(N, {}, scope="eu"), rs(M, {A1: 128, A2: 127})]
    p = plan(current, desired)
    assert actions(p) == [("update", (M, "A", None))]
    assert p.refused == (f"{N} A [eu]: refused: it would have no answer (it serves {A1} w255)",)
    forced = plan(current, desired, force=True)
    assert actions(forced) == [("update", (N, "A", "eu")), ("update", (M, "A", None))] and forced.refused == ()


def test_a_create_with_no_answer_is_refused():
    p = plan({}, [rs(N, {})])
    assert p.empty and p.refused == (f"{N} A: refused: it would have no answer (it does not exist)",)
    assert actions(plan({}, [rs(N, {})], force=True)) == [("create", (N, "A", None))]


def test_an_empty_set_that_is_already_empty_is_left_alone():
    p = plan(cur(rs(N, {})), [rs(N, {})])
    assert p.empty and p.refused == ()


def test_all_zero_weights_are_answers():
    p = plan({}, [rs(N, {A1: 0, A2: 0})])
    assert actions(p) == [("create", (N, "A", None))] and p.refused == ()


@pytest.mark.parametrize(
    "current, desired, deleted, refused",
    [
        pytest.param([rs(N), rs(N, scope="eu")], [rs(N)], [(N, "A", "eu")], 0, id="scoped-set-with-the-default-left"),
        pytest.param([rs(N), rs(N, {V6: 1}, rtype="AAAA")], [rs(N)], [], 1, id="aaaa-with-only-a-left"),
        pytest.param([rs(N), rs(N, {V6: 1}, rtype="AAAA")], [rs(N, {V6: 1}, rtype="AAAA")], [], 1,
                     id="a-with-only-aaaa-left"),
        pytest.param([rs(N), rs(N, {V6: 1}, rtype="AAAA", scope="eu")], [rs(N)], [], 1,
                     id="a-groups-aaaa-with-only-the-a-default-left"),
        pytest.param([rs(N), rs(N, {V6: 1}, rtype="AAAA"), rs(N, {V6: 1}, rtype="AAAA", scope="eu")],
                     [rs(N), rs(N, {V6: 1}, rtype="AAAA")], [(N, "AAAA", "eu")], 0,
                     id="a-groups-aaaa-with-the-aaaa-default-left"),
        pytest.param([rs(N, {A1: 255}), rs(N, scope="eu")], [rs(N, {A2: 255})], [(N, "A", "eu")], 0,
                     id="a-refused-update-keeps-the-default-the-group-falls-back-to"),
        pytest.param([rs(N, {V6: 1}, rtype="AAAA", scope="eu")], [rs(N, {V6: 1}, rtype="AAAA")], [(N, "AAAA", "eu")],
                     0, id="the-group-falls-back-to-a-created-default"),
        pytest.param([rs(N), rs(N, scope="eu")], [], [], 2, id="every-set-of-the-name"),
        pytest.param([rs(N, scope="eu")], [rs(N, {})], [], 1, id="the-rest-would-be-empty"),
        pytest.param([rs(N, {})], [], [(N, "A", None)], 0, id="a-name-that-had-no-answer-anyway"),
        pytest.param([rs(N), rs(M)], [rs(N)], [], 1, id="a-whole-name-dropped"),
        pytest.param([rs(N, {}), rs(N, scope="eu")], [rs(N)], [(N, "A", "eu")], 0, id="the-update-gives-the-name-answers"),
        pytest.param([rs(N, scope="eu")], [rs(N, {V6: 1}, rtype="AAAA")], [], 1, id="a-create-of-another-type-does-not"),
    ],
)
def test_deletes_that_would_leave_a_name_type_or_group_with_no_answer_are_refused(current, desired, deleted, refused):
    p = plan(cur(*current), desired, max_weight_shift=0.5)
    assert [c.key for c in p.changes if c.action == "delete"] == deleted
    assert len([line for line in p.refused if "deleting it would leave" in line]) == refused
    forced = plan(cur(*current), desired, force=True)
    assert {c.key for c in forced.changes if c.action == "delete"} == {s.key for s in current} - {s.key for s in desired}


@pytest.mark.parametrize(
    "current, desired, key",
    [
        pytest.param([rs(N), rs(N, {V6: 1}, rtype="AAAA")], [rs(N, {}), rs(N, {V6: 1}, rtype="AAAA")], (N, "A", None),
                     id="a-emptied-while-aaaa-keeps-answers"),
        pytest.param([rs(N), rs(N, scope="eu")], [rs(N), rs(N, {}, scope="eu")], (N, "A", "eu"),
                     id="a-group-emptied-while-the-default-keeps-answers"),
        pytest.param([rs(N)], [rs(N), rs(N, {}, rtype="AAAA", scope="eu")], (N, "AAAA", "eu"),
                     id="an-empty-group-set-created"),
    ],
)
def test_an_empty_set_is_refused_whatever_the_other_sets_of_its_name_serve(current, desired, key):
    p = plan(cur(*current), desired)
    assert key not in [c.key for c in p.changes]
    assert [line.split(": refused: ")[0] for line in p.refused] == [key_label(key)]
    assert "it would have no answer" in p.refused[0]


def test_a_delete_refusal_says_whom_it_would_leave_with_no_answer():
    p = plan(cur(rs(N), rs(N, {V6: 1}, rtype="AAAA"), rs(M, {V6: 1}, rtype="AAAA", scope="eu"), rs(M)), [rs(N), rs(M)])
    assert p.refused == (
        f"{N} AAAA: refused: deleting it would leave {N} with no AAAA answer",
        f"{M} AAAA [eu]: refused: deleting it would leave the clients of group eu with no AAAA answer for {M}",
    )
    assert p.changes == ()


# --- safety: weight shift ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "old, new, shift",
    [
        pytest.param({A1: 255}, {A2: 255}, 1.0, id="single-answer-moves"),
        pytest.param({A1: 128, A2: 127}, {A1: 255, A2: 0}, 127 / 255, id="half-to-one"),
        pytest.param({A1: 100}, {A1: 200}, 0.0, id="same-share"),
        pytest.param({A1: 0, A2: 0}, {A1: 255, A2: 0}, 0.5, id="all-zero-shares-equally"),
        pytest.param({A1: 0, A2: 0}, {A1: 9, A2: 9}, 0.0, id="all-zero-is-like-equal-weights"),
        pytest.param({A1: 170, A2: 85}, {A1: 85, A2: 170}, 1 / 3, id="swap"),
    ],
)
def test_weight_shift_is_half_the_l1_distance_of_the_shares(old, new, shift):
    assert weight_shift(rs(N, old), rs(N, new)) == pytest.approx(shift)


@pytest.mark.parametrize(
    "limit, refused",
    [(0.5, True), (0.99, True), (1.0, False)],
)
def test_an_update_moving_more_than_the_limit_is_refused(limit, refused):
    current = cur(rs(N, {A1: 255}), rs(M, {A1: 128, A2: 127}))
    desired = [rs(N, {A2: 255}), rs(M, {A1: 150, A2: 105})]
    p = plan(current, desired, max_weight_shift=limit)
    assert ((N, "A", None) not in [c.key for c in p.changes]) is refused
    assert (M, "A", None) in [c.key for c in p.changes]  # the other update still goes
    if refused:
        assert p.refused == (
            f"{N} A: refused: it would move 100% of the weight share (limit {limit:.0%}): {A1} 255 -> -, {A2} - -> 255",
        )
        assert [c.key for c in plan(current, desired, force=True, max_weight_shift=limit).changes] == [
            (N, "A", None), (M, "A", None)]


def test_restoring_answers_to_an_empty_set_is_no_shift():
    p = plan(cur(rs(N, {})), [rs(N, {A1: 255})], max_weight_shift=0.0)
    assert actions(p) == [("update", (N, "A", None))]


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(st.sampled_from([A1, A2, A3]), st.integers(0, 255), min_size=1),
    st.dictionaries(st.sampled_from([A1, A2, A3]), st.integers(0, 255), min_size=1),
)
def test_weight_shift_is_a_symmetric_share_between_0_and_1(a, b):
    ab, ba = weight_shift(rs(N, a), rs(N, b)), weight_shift(rs(N, b), rs(N, a))
    assert 0.0 <= ab <= 1.0 + 1e-12 and ab == pytest.approx(ba)
    assert weight_shift(rs(N, a), rs(N, a)) == 0.0


# --- properties: the plan reaches the desired state, and never leaves a name with no answer --------

WEIGHTS = st.dictionaries(st.sampled_from([0, 1, 2]), st.integers(0, 255), max_size=3)
KEYS = st.sampled_from([(n, t, s) for n in (N, M) for t in ("A", "AAAA") for s in (None, "eu")])
VALUES = {"A": (A1, A2, A3), "AAAA": (V6, "2001:db8::2", "2001:db8::3")}


def sets_of(draw: dict) -> dict[Key, RecordSet]:
    """(name, type, scope) -> {answer number: weight} as record sets of that type."""
    return {(n, t, s): rs(n, {VALUES[t][i]: w for i, w in ws.items()}, rtype=t, scope=s)
            for (n, t, s), ws in draw.items()}


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, WEIGHTS), st.dictionaries(KEYS, WEIGHTS))
def test_forced_with_no_thresholds_the_plan_reaches_the_desired_state(current, desired):
    now, want = sets_of(current), sets_of(desired)
    p = plan(now, list(want.values()), force=True, min_weight_change=0, max_weight_shift=1.0)
    after = apply_plan(now, p)
    assert after == want
    assert p.refused == () and p.skipped == ()


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(KEYS, WEIGHTS), st.dictionaries(KEYS, WEIGHTS), st.integers(0, 255), st.floats(0, 1))
def test_an_unforced_plan_never_leaves_a_name_type_or_group_with_no_answer(current, desired, threshold, limit):
    now, want = sets_of(current), sets_of(desired)
    p = plan(now, list(want.values()), min_weight_change=threshold, max_weight_shift=limit)
    after = apply_plan(now, p)
    for (name, rtype, scope), held in now.items():
        if held.answers:  # its clients still get an answer of its type: its own set, or (a group) the one for everyone
            served = [after.get((name, rtype, scope)), after.get((name, rtype, None))]
            assert any(s is not None and s.answers for s in served), (name, rtype, scope)
    for change in p.changes:  # nothing written is empty, and no written update moves more than the limit
        assert change.new is None or change.new.answers
        if change.old is not None and change.new is not None and change.old.answers:
            assert weight_shift(change.old, change.new) <= limit + 1e-9


# --- representable ----------------------------------------------------------------------------------


def top_answer(record_set: RecordSet) -> RecordSet:
    """A provider that holds only the heaviest answer, with the full weight and no set id (as plain DNS)."""
    if not record_set.answers:
        return record_set
    best = max(record_set.answers, key=lambda a: (a.weight, a.value))
    return RecordSet(record_set.name, record_set.rtype, record_set.ttl, (Answer(best.value, 255),), record_set.scope)


def test_the_plan_compares_what_the_provider_can_hold():
    current = cur(RecordSet(N, "A", 60, (Answer(A1, 255),)))
    same_top = [rs(N, {A1: 200, A2: 55})]
    assert make_plan("p", current, same_top, representable=top_answer).empty
    assert not make_plan("p", current, same_top).empty  # without it, the weights differ
    moved = make_plan("p", current, [rs(N, {A1: 55, A2: 200})], PlanSettings(max_weight_shift=1.0),
                      representable=top_answer)
    assert [c.new for c in moved.changes] == [RecordSet(N, "A", 60, (Answer(A2, 255),))]
    for threshold in (1, 255):  # an answer that comes or goes is a whole move for a provider without weights
        p = make_plan("p", current, [rs(N, {A1: 55, A2: 200})], PlanSettings(min_weight_change=threshold,
                                                                            max_weight_shift=1.0),
                      representable=top_answer)
        assert actions(p) == [("update", (N, "A", None))] and not p.skipped


# --- output and settings ---------------------------------------------------------------------------


def test_format_plan_prints_one_line_per_change_then_skips_and_refusals():
    current = cur(rs(N, {A1: 128, A2: 127}), rs(N, scope="eu", networks=("192.0.2.0/25",)), rs(M, {A1: 255}),
                  rs(N, {A1: 128, A2: 127}, scope="us"), rs(N, {V6: 255}, rtype="AAAA", scope="eu"),
                  rs(N, {V6: 255}, rtype="AAAA"))
    desired = [rs(N, {A1: 255, A2: 0}), rs(N, {A1: 130, A2: 125}, scope="us"), rs(M, {A2: 255}),
               rs(N, {V6: 255}, rtype="AAAA"),
               rs(N, {A3: 255}, scope="ap", networks=("2001:db8::/48",)), rs(N, scope="eu", networks=("192.0.2.0/25",))]
    text = format_plan(make_plan("powerdns", current, desired))
    assert text.splitlines() == [
        "plan for powerdns: 1 to create, 1 to update, 1 to delete; 1 skipped (below the churn threshold), 1 refused",
        f"+ create {N} A [ap] ttl 60 networks 2001:db8::/48: {A3} w255",
        f"~ update {N} A ttl 60: {A1} 128 -> 255, {A2} 127 -> 0",
        f"- delete {N} AAAA [eu] ttl 60: {V6} w255",
        f"= skip {N} A [us]: weights moved at most 2 < 10: {A1} 128 -> 130, {A2} 127 -> 125",
        f"! {M} A: refused: it would move 100% of the weight share (limit 50%): {A1} 255 -> -, {A2} - -> 255",
    ]


def test_format_plan_of_an_empty_plan():
    assert format_plan(Plan("route53")) == (
        "plan for route53: 0 to create, 0 to update, 0 to delete; 0 skipped (below the churn threshold), 0 refused"
    )


def test_format_plan_shows_ttl_and_network_changes():
    p = make_plan("x", cur(rs(N, ttl=60, networks=("192.0.2.0/25",), scope="eu")),
                  [rs(N, ttl=30, networks=("192.0.2.0/24",), scope="eu")])
    assert format_plan(p).splitlines()[1] == (
        f"~ update {N} A [eu] ttl 60 -> 30 networks 192.0.2.0/25 -> 192.0.2.0/24: {A1} 255 -> 255"
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"min_weight_change": -1}, "min_weight_change: expected a whole number 0-255, got -1"),
        ({"min_weight_change": 256}, "min_weight_change: expected a whole number 0-255, got 256"),
        ({"min_weight_change": 1.5}, "min_weight_change: expected a whole number"),
        ({"max_weight_shift": 1.5}, "max_weight_shift: expected a share 0-1, got 1.5"),
        ({"max_weight_shift": float("nan")}, "max_weight_shift: expected a share 0-1, got nan"),
    ],
)
def test_plan_settings_reject_bad_values_naming_them(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PlanSettings(**kwargs)


def test_changes_are_model_changes():
    (change,) = plan({}, [rs(N)]).changes
    assert isinstance(change, Change) and change.action == "create"


# --- the model's own checks ------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["fe80::1%eth0", "2001:db8::1%z'}) or x({'1", "fe80::1%a b"])
def test_an_answer_with_a_zone_id_is_refused_naming_it(value):
    # ipaddress parses these (the zone id is free text) but no DNS record can hold one
    with pytest.raises(ValueError, match="has a zone id") as caught:
        Answer(value, 1, "x")
    assert repr(value) in str(caught.value)


@pytest.mark.parametrize("value", [3232235777, b"\xc0\x00\x02\x01", "192.0.2.1 ", "eu.example.net"])
def test_an_answer_that_is_not_an_address_string_is_refused_naming_it(value):
    with pytest.raises(ValueError) as caught:
        Answer(value, 1, "x")  # type: ignore[arg-type]
    assert repr(value) in str(caught.value)


@pytest.mark.parametrize("value, canonical", [("2001:DB8:0:0::1", "2001:db8::1"), ("2001:db8:0000::0001", "2001:db8::1"),
                                              ("192.0.2.1", "192.0.2.1")])
def test_an_answer_keeps_its_address_in_canonical_text(value, canonical):
    assert Answer(value, 1, "x").value == canonical
    assert Answer(value, 1, "x") == Answer(canonical, 1, "x")


def test_a_record_set_with_a_network_with_a_zone_id_is_refused_naming_it():
    net = "fe80::%a' or '0.0.0.0'..string.char(47)..'0' or '/64"
    with pytest.raises(ValueError, match="zone id") as caught:
        RecordSet(N, "AAAA", 60, (Answer(V6, 1),), "eu", ("2001:db8::/48", net))
    assert repr(net) in str(caught.value)
    assert RecordSet(N, "AAAA", 60, (Answer(V6, 1),), "eu", ("2001:db8::/48",)).networks == ("2001:db8::/48",)

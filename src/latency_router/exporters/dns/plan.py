"""The one plan: what to write to bring a provider from its current record sets to the desired ones, safely.

- Churn: an update that keeps the TTL, the networks, at least one answer and the set id of every answer on both
  sides, and moves every weight by less than `min_weight_change` points (0-255), is not written; it is listed in
  `Plan.skipped` with its figures. An answer on one side only counts as weight 0 on the other (the desired sets leave weight-0 answers out),
  so an answer that comes or goes is written once its weight reaches the threshold; a provider that holds no weights
  (plain DNS) gives its answers the full weight, 255, so that for it every answer that comes or goes is written. A
  change from no answer, to or from all weights 0 (all served alike), or within all weights 0, is always written.
  Drift adds up: the comparison is always with what the provider holds, so small moves are written once they reach
  the threshold.
- No empty answer, per (name, type, scope): a create or update whose record set has no answer is refused, and so is
  the delete of a set that has answers unless its clients still get an answer of that type: a group's set may go
  while the set for everyone (scope None) of the same name and type keeps answers; the set for everyone may not go
  (an A set's answers do not answer AAAA queries, nor the other way round). A set whose weights are all 0 has
  answers: like Route 53, a provider serves all of them alike then.
- Weight shift: an update that moves more than `max_weight_shift` of the weight share (half the L1 distance between
  the old and new shares; a set whose weights are all 0 shares equally) is refused. Note that a group moving its
  single answer to another region is a shift of 1.0: a deployment that wants failovers written unattended sets 1.0.
Both refusals are lifted by force; refused changes are left out of `Plan.changes` and the rest still go.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

from latency_router.exporters.dns.model import WEIGHT_MAX, Change, Key, Plan, RecordSet

_ACTION_ORDER = {"create": 0, "update": 1, "delete": 2}  # new answers are in place before old ones go


@dataclass(frozen=True, slots=True)
class PlanSettings:
    """The churn threshold (0-255 points), the largest share of weight one update may move (0-1), and deletes on/off."""

    min_weight_change: int = 10
    max_weight_shift: float = 0.5
    manage_deletes: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.min_weight_change, bool) or not isinstance(self.min_weight_change, int) or not (
            0 <= self.min_weight_change <= WEIGHT_MAX
        ):
            raise ValueError(f"min_weight_change: expected a whole number 0-{WEIGHT_MAX}, got {self.min_weight_change!r}")
        if isinstance(self.max_weight_shift, bool) or not isinstance(self.max_weight_shift, (int, float)) or not (
            0.0 <= self.max_weight_shift <= 1.0
        ):
            raise ValueError(f"max_weight_shift: expected a share 0-1, got {self.max_weight_shift!r}")


def key_label(key: Key) -> str:
    """'name type' for a scope-None set, 'name type [group]' for a scoped one."""
    name, rtype, scope = key
    return f"{name} {rtype}" if scope is None else f"{name} {rtype} [{scope}]"


def _sort_key(key: Key) -> tuple[str, str, int, str]:
    name, rtype, scope = key
    return (name, rtype, 0 if scope is None else 1, scope or "")


def weight_map(record_set: RecordSet) -> dict[str, int]:
    """value -> weight, a value given twice counted once with both weights."""
    out: dict[str, int] = {}
    for a in record_set.answers:
        out[a.value] = out.get(a.value, 0) + a.weight
    return out


def shares(record_set: RecordSet) -> dict[str, float]:
    """value -> its share of the answers (0-1); equal shares when every weight is 0 (all are served alike)."""
    weights = weight_map(record_set)
    total = sum(weights.values())
    if total == 0:
        return {v: 1.0 / len(weights) for v in weights} if weights else {}
    return {v: w / total for v, w in weights.items()}


def weight_shift(old: RecordSet, new: RecordSet) -> float:
    """The share of answers that moves from old to new: half the L1 distance between their shares (0-1)."""
    a, b = shares(old), shares(new)
    return 0.5 * sum(abs(a.get(v, 0.0) - b.get(v, 0.0)) for v in a.keys() | b.keys())


def _same_shape(old: RecordSet, new: RecordSet) -> bool:
    """What a churn skip must keep: TTL, networks, some answer, and the set ids of the answers on both sides (an
    answer on one side only is a weight move from or to 0)."""
    if (old.ttl, sorted(old.networks)) != (new.ttl, sorted(new.networks)):
        return False
    both = {a.value for a in old.answers} & {a.value for a in new.answers}
    if not both:
        return False  # every answer replaced (say a set someone else wrote, on another weight scale): no small move
    ids_old = {(a.value, a.set_id) for a in old.answers if a.value in both}
    return ids_old == {(a.value, a.set_id) for a in new.answers if a.value in both}


def _weights_text(old: RecordSet | None, new: RecordSet | None) -> str:
    """'value old -> new' per answer ('-' where absent), in value order."""
    a = weight_map(old) if old is not None else {}
    b = weight_map(new) if new is not None else {}
    if old is None or new is None:
        only = a or b
        return ", ".join(f"{v} w{w}" for v, w in sorted(only.items())) or "no answer"
    parts = []
    for v in sorted(a.keys() | b.keys()):
        parts.append(f"{v} {a.get(v, '-')} -> {b.get(v, '-')}")
    return ", ".join(parts) or "no answer"


def make_plan(
    provider: str,
    current: Mapping[Key, RecordSet],
    desired: Sequence[RecordSet],
    settings: PlanSettings = PlanSettings(),
    *,
    force: bool = False,
    representable: Callable[[RecordSet], RecordSet] | None = None,
) -> Plan:
    """The changes from current to desired (as the provider can hold it), with churn skipped and unsafe changes refused."""
    wanted: dict[Key, RecordSet] = {}
    for record_set in desired:
        shown = representable(record_set) if representable is not None else record_set
        if shown.key in wanted:
            raise ValueError(f"desired: {key_label(shown.key)} is given twice")
        wanted[shown.key] = shown

    changes: list[Change] = []
    skipped: list[str] = []
    refused: list[str] = []
    for key in sorted(wanted, key=_sort_key):
        new, old = wanted[key], current.get(key)
        label = key_label(key)
        if not new.answers:
            if old is not None and not old.answers:
                continue  # already empty: nothing to write, nothing made worse
            if not force:
                now = "it does not exist" if old is None else f"it serves {_weights_text(old, None)}"
                refused.append(f"{label}: refused: it would have no answer ({now})")
                continue
        elif old is None or not old.answers:
            pass  # answers where there were none: always written
        elif _same_shape(old, new):
            before, after = weight_map(old), weight_map(new)
            if before == after:
                continue
            moved = max(abs(before.get(v, 0) - after.get(v, 0)) for v in before.keys() | after.keys())
            # all weights 0 serves every answer alike: a move to or from that state, or an answer coming or going
            # within it, is no small move
            weighted = sum(before.values()) > 0 and sum(after.values()) > 0
            if moved < settings.min_weight_change and weighted:
                skipped.append(
                    f"{label}: weights moved at most {moved} < {settings.min_weight_change}: {_weights_text(old, new)}"
                )
                continue
        if old is not None and old.answers and new.answers and not force:
            shift = weight_shift(old, new)
            if shift > settings.max_weight_shift + 1e-9:
                refused.append(
                    f"{label}: refused: it would move {shift:.0%} of the weight share (limit "
                    f"{settings.max_weight_shift:.0%}): {_weights_text(old, new)}"
                )
                continue
        changes.append(Change(old, new))

    if settings.manage_deletes:
        deletes = [Change(current[k], None) for k in sorted(current, key=_sort_key) if k not in wanted]
        if deletes and not force:
            # what the provider holds once the accepted creates and updates and every delete are done
            after = dict(current)
            after.update({c.key: c.new for c in changes if c.new is not None})
            for c in deletes:
                after.pop(c.key, None)
            kept = []
            for c in deletes:
                problem = _delete_leaves_no_answer(c, after)
                if problem:
                    refused.append(f"{key_label(c.key)}: refused: deleting it would leave {problem}")
                else:
                    kept.append(c)
            deletes = kept
        changes += deletes

    changes.sort(key=lambda c: (_ACTION_ORDER[c.action], _sort_key(c.key)))
    return Plan(provider, tuple(changes), tuple(skipped), tuple(refused))


def _delete_leaves_no_answer(change: Change, after: Mapping[Key, RecordSet]) -> str:
    """Whom deleting this set leaves with no answer of its type ('' when nobody): a group's clients fall back to the
    set for everyone of the same name and type; the clients of the set for everyone have nothing else to get."""
    name, rtype, scope = change.key
    if change.old is None or not change.old.answers:
        return ""  # it answered nothing: nobody loses an answer
    if scope is None:
        return f"{name} with no {rtype} answer"
    everyone = after.get((name, rtype, None))
    if everyone is not None and everyone.answers:
        return ""
    return f"the clients of group {scope} with no {rtype} answer for {name}"


def plan_counts(plan: Plan) -> dict[str, int]:
    """create, update, delete, skipped and refused counts of a plan."""
    counts = {"create": 0, "update": 0, "delete": 0}
    for c in plan.changes:
        counts[c.action] += 1
    return {**counts, "skipped": len(plan.skipped), "refused": len(plan.refused)}


def format_plan(plan: Plan) -> str:
    """The plan as `dns plan` prints it: a summary, one line per change (+ create, ~ update, - delete), then the
    skipped (=) and refused (!) lines. Only record data: a plan holds no secret."""
    counts = plan_counts(plan)
    lines = [
        f"plan for {plan.provider}: {counts['create']} to create, {counts['update']} to update, "
        f"{counts['delete']} to delete; {counts['skipped']} skipped (below the churn threshold), "
        f"{counts['refused']} refused"
    ]
    for c in plan.changes:
        label = key_label(c.key)
        if c.new is not None and c.old is None:
            lines.append(f"+ create {label} ttl {c.new.ttl}{_networks(c.new)}: {_weights_text(None, c.new)}")
        elif c.new is not None and c.old is not None:
            ttl = f"ttl {c.old.ttl}" if c.old.ttl == c.new.ttl else f"ttl {c.old.ttl} -> {c.new.ttl}"
            lines.append(f"~ update {label} {ttl}{_networks(c.new, c.old)}: {_weights_text(c.old, c.new)}")
        elif c.old is not None:
            lines.append(f"- delete {label} ttl {c.old.ttl}: {_weights_text(c.old, None)}")
    lines += [f"= skip {line}" for line in plan.skipped]
    lines += [f"! {line}" for line in plan.refused]
    return "\n".join(lines)


def _networks(new: RecordSet, old: RecordSet | None = None) -> str:
    if old is not None and sorted(old.networks) != sorted(new.networks):
        return f" networks {','.join(old.networks) or '-'} -> {','.join(new.networks) or '-'}"
    return f" networks {','.join(new.networks)}" if new.networks else ""

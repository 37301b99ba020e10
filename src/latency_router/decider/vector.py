"""Candidates for many plans at once from a column snapshot: build_candidates, computed with numpy over every plan.

build_candidates (candidates.py) reads two rows per region per plan from mappings: for 10,000 groups x 20 regions that
is 400,000 lookups of scattered objects per evaluation. Here the same choice (each region over its primary path,
unless another healthy path beats it by the path margin or the primary is down) is made for all plans that share a
shape in a few array operations over the snapshot's columns; only the Candidate tuples are made one by one, and only
for the plans the Decider actually decides. The result is equal, field by field, to build_candidates on the same rows
(tests/test_vector.py checks that on random tables).
"""

from __future__ import annotations

from itertools import repeat
from typing import Any, Hashable, Mapping

import numpy as np

from latency_router.decider.decision import Candidate
from latency_router.decider.plan import Plan
from latency_router.decider.table import HEALTH_OF_CODE, Columns

_NONE_CODE = HEALTH_OF_CODE.index("none")
_new = tuple.__new__
Built = tuple[list[Candidate], bool]  # the candidates and whether the picture is incomplete, as build_candidates gives


def source_group(columns: Columns, plan: Plan) -> str | None:
    """Where the plan's rows are (as policy.rows_for picks them): its group's name, else its vantage's; None if neither has rows."""
    places = columns.places
    for name in plan.row_groups:
        if places.get(name):
            return name
    return None


class _Layout:
    """One plan's rows as positions in the columns: -1 where the table has no such row."""

    __slots__ = ("places", "primary", "others", "prefixes")

    def __init__(self, plan: Plan, places: Mapping[tuple[str, str], int], width: int) -> None:
        self.places = places
        self.primary = [places.get(r.primary_key, -1) for r in plan.regions]
        self.others = [[places.get(key, -1) for _, _, key in r.others] + [-1] * (width - len(r.others)) for r in plan.regions]
        # per region, what a candidate starts with for each choice: the primary path (index 0), then each other path
        self.prefixes = [((r.name, *r.paths[0]), *((r.name, p, a) for p, a, _ in r.others)) for r in plan.regions]


class _Shape:
    """Plans that share the number of regions and paths, the metric and the path margins: computed together."""

    __slots__ = ("keys", "layouts", "metric", "margin_ms", "ratio", "primary", "others", "names", "paths", "answers")

    def __init__(self, metric: str, margin_ms: float, ratio: float) -> None:
        self.keys: list[Hashable] = []
        self.layouts: list[_Layout] = []
        self.metric, self.margin_ms, self.ratio = metric, margin_ms, ratio
        self.primary: np.ndarray = np.zeros((0, 0), np.intp)
        self.others: np.ndarray = np.zeros((0, 0, 0), np.intp)
        self.names = self.paths = self.answers = np.zeros((0, 0), object)

    def stack(self) -> None:
        self.primary = np.array([lay.primary for lay in self.layouts], dtype=np.intp)
        self.others = np.array([lay.others for lay in self.layouts], dtype=np.intp)
        width = self.others.shape[2] + 1
        # per plan, region and choice (0 the primary path, k the k-th other): the candidate's first three fields
        names, paths, answers = (np.empty((len(self.layouts), self.primary.shape[1], width), object) for _ in range(3))
        for b, lay in enumerate(self.layouts):
            for r, options in enumerate(lay.prefixes):
                for k, (name, path, answer) in enumerate(options):
                    names[b, r, k], paths[b, r, k], answers[b, r, k] = name, path, answer
        self.names, self.paths, self.answers = names[..., 0], paths, answers


class Prepared:
    """One evaluation's candidate figures for every plan that has rows; get(key) makes its candidates on demand."""

    __slots__ = ("_where", "_figures")

    def __init__(self) -> None:
        self._where: dict[Hashable, tuple[int, int, _Layout]] = {}  # key -> (shape number, row in it, layout)
        self._figures: list[tuple[list[Any], ...]] = []

    def get(self, key: Hashable) -> Built | None:
        """The plan's candidates and `missing` flag, or None when the plan must be decided from its rows."""
        where = self._where.get(key)
        if where is None:
            return None
        s, b, _ = where
        names, paths, answers, rtt, health, ok, margin, missing = self._figures[s]
        # every field straight from the columns' lists: Candidate(name, path, answer, rtt_ms, health, healthy, 0, margin, None)
        cands = list(map(_new, repeat(Candidate), zip(
            names[b], paths[b], answers[b], rtt[b], health[b], ok[b], repeat(0), margin[b], repeat(None))))
        return cands, missing[b]


class CandidateBuilder:
    """Keeps each plan's layout between evaluations (rebuilt only when its group's rows change shape)."""

    def __init__(self) -> None:
        self._layouts: dict[Hashable, tuple[str, _Layout]] = {}
        self._shapes: dict[tuple[Any, ...], _Shape] = {}
        self._plans: Mapping[Hashable, Plan] | None = None

    def prepare(self, plans: Mapping[Hashable, Plan], columns: Columns) -> Prepared:
        """The figures of build_candidates for every plan whose rows are in these columns."""
        if self._refresh(plans, columns):
            for shape in self._shapes.values():
                shape.stack()
        out = Prepared()
        metrics: dict[str, np.ndarray] = {}
        healthy = np.append(columns.healthy, False)  # position -1: no row
        code = np.append(columns.code, np.int8(_NONE_CODE))
        for s, shape in enumerate(self._shapes.values()):
            values = metrics.get(shape.metric)
            if values is None:
                values = metrics[shape.metric] = np.append(columns.metrics[shape.metric], np.nan)
            out._figures.append(_figures(shape, values, healthy, code))
            for b, (key, layout) in enumerate(zip(shape.keys, shape.layouts)):
                out._where[key] = (s, b, layout)
        return out

    def _refresh(self, plans: Mapping[Hashable, Plan], columns: Columns) -> bool:
        """Bring the layouts up to date with the columns' groups; True when any changed (the shapes are then rebuilt)."""
        layouts = self._layouts
        changed = plans is not self._plans
        if changed:
            layouts.clear()
            self._plans = plans
        for key, plan in plans.items():
            name = source_group(columns, plan)
            have = layouts.get(key)
            if name is None:
                if have is not None:
                    del layouts[key]
                    changed = True
                continue
            places = columns.places[name]
            if have is None or have[0] != name or have[1].places is not places:
                width = max((len(r.others) for r in plan.regions), default=0)
                layouts[key] = (name, _Layout(plan, places, width))
                changed = True
        if changed:
            shapes: dict[tuple[Any, ...], _Shape] = {}
            for key, (_, layout) in layouts.items():
                plan = plans[key]
                sig = (len(plan.regions), len(layout.others[0]) if layout.others else 0, plan.metric,
                       plan.path_margin_ms, plan.path_margin_ratio)
                shape = shapes.get(sig)
                if shape is None:
                    shape = shapes[sig] = _Shape(plan.metric, plan.path_margin_ms, plan.path_margin_ratio)
                shape.keys.append(key)
                shape.layouts.append(layout)
            self._shapes = shapes
        return changed


_HEALTH = np.array(HEALTH_OF_CODE, dtype=object)


def _none(values: np.ndarray) -> np.ndarray:
    """Floats as objects, NaN as None."""
    return np.where(np.isnan(values), None, values)


def _figures(shape: _Shape, values: np.ndarray, healthy: np.ndarray, code: np.ndarray) -> tuple[list[Any], ...]:
    """Per plan and region (nested lists): the candidate's region, path, answer, RTT, health, healthy and path margin
    (None where build_candidates gives None); and per plan, missing."""
    p = shape.primary
    pv, pok, pc = values[p], healthy[p], code[p]
    pnan = np.isnan(pv)
    missing = (pok & pnan).any(axis=1)  # a healthy primary without an RTT yet
    if shape.others.shape[2] == 0:
        return (shape.names.tolist(), shape.paths[..., 0].tolist(), shape.answers[..., 0].tolist(), _none(pv).tolist(),
                _HEALTH[pc].tolist(), pok.tolist(), np.full(p.shape, None).tolist(), missing.tolist())
    o = shape.others
    ov, ook, oc = values[o], healthy[o], code[o]
    onan = np.isnan(ov)
    missing |= (ook & onan).any(axis=(1, 2))  # a healthy other path without an RTT yet
    valid = ook & ~onan
    masked = np.where(valid, ov, np.inf)
    # the first valid path of the lowest RTT, as build_candidates' strict < keeps the first (not argmin over masked:
    # an invalid path's inf would tie with a valid path measured at inf)
    k = (valid & (masked == masked.min(axis=2, keepdims=True))).argmax(axis=2)
    has = valid.any(axis=2)
    bv = np.take_along_axis(masked, k[..., None], 2)[..., 0]
    bc = np.take_along_axis(oc, k[..., None], 2)[..., 0]
    measured = pok & ~pnan
    with np.errstate(invalid="ignore"):
        # the primary stays unless it is down or unmeasured, or the other path leads by max(margin, ratio x primary)
        keep = ~has | (measured & ((pv - bv) < np.maximum(shape.margin_ms, shape.ratio * pv)))
        margin = np.where(keep, np.where(has, bv - pv, np.nan), np.where(measured, pv - bv, np.nan))
    choice = np.where(keep, 0, k + 1)[..., None]
    return (
        shape.names.tolist(),
        np.take_along_axis(shape.paths, choice, 2)[..., 0].tolist(),
        np.take_along_axis(shape.answers, choice, 2)[..., 0].tolist(),
        _none(np.where(keep, pv, bv)).tolist(),
        _HEALTH[np.where(keep, pc, bc)].tolist(),
        (keep & pok | ~keep).tolist(),
        _none(margin).tolist(),
        missing.tolist(),
    )

"""Replay outputs: report.json, a short text table, and report.png (regret CDFs, decisions over time)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from latency_router.replay.metrics import PolicyScore

# 21 regions need more distinct colours than one qualitative map holds; tab20's greys would read as event shading
_GREYS = {("tab20", 14), ("tab20", 15)}


def write_json(report: dict[str, Any], path: Path) -> None:
    """Write report.json."""
    path.write_text(json.dumps(report, indent=2) + "\n")


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def worst_leave_s(policy: dict[str, Any]) -> tuple[float | None, bool]:
    """The longest time to leave over the policy's outages, and whether some group never left."""
    worst: float | None = None
    never = False
    for o in policy.get("outages", ()):
        leave = o["leave_s"]
        never = never or leave["never"] > 0
        if leave["max"] is not None:
            worst = leave["max"] if worst is None else max(worst, leave["max"])
    return worst, never


def text_table(report: dict[str, Any]) -> str:
    """A short table: policy, optimal %, p95 regret, flips per group-hour (outside events) and the worst time to leave."""
    sc = report["scenario"]
    lines = [
        f"{sc['samples']}: {sc['rows']} rows, {sc['groups']} groups, {sc['regions']} regions, "
        f"{sc['steps']} steps of {sc['interval_s']:g} s, {len(sc['outages'])} outage(s); replayed in {report['wall_s']:.1f} s",
        f"{'policy':<22} {'optimal %':>9} {'p95 regret ms':>13} {'flips/group-h':>13} {'outside events':>14} {'leave s':>8}",
    ]
    for name, p in report["policies"].items():
        if "note" in p:
            lines.append(f"{name:<22} {p['note']}")
            continue
        worst, never = worst_leave_s(p)
        leave = "never" if never else _fmt(worst, ".0f")
        p95 = p.get("regret_ms", {}).get("p95")
        lines.append(
            f"{name:<22} {_fmt(p.get('optimal_pct'), '.1f'):>9} {_fmt(p95, '.1f'):>13} "
            f"{_fmt(p['flips_per_group_hour'], '.2f'):>13} {_fmt(p['flips_per_group_hour_outside_events'], '.2f'):>14} {leave:>8}"
        )
    return "\n".join(lines)


def write_png(path: Path, scores: Sequence[PolicyScore], times: Sequence[float], windows: Sequence[tuple[float, float]], title: str) -> None:
    """Draw the regret CDF of every policy and the first service's decisions over time (share of groups per region)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_cdf, ax_time) = plt.subplots(2, 1, figsize=(11, 9), gridspec_kw={"height_ratios": [1, 1.1]})
    fig.suptitle(title)
    for score in scores:
        regrets = sorted(score.regrets_ms)
        if not regrets:
            continue
        # every point counts in the denominator: dead choices and no-answers sit beyond the right edge
        total = score.points or len(regrets)
        ys = [(i + 1) / total for i in range(len(regrets))]
        style = "-" if score.kind == "service" else "--"
        ax_cdf.step(regrets, ys, where="post", linestyle=style, label=score.name)
    ax_cdf.set_xscale("symlog", linthresh=1.0)
    ax_cdf.set_xlim(left=0)
    ax_cdf.set_ylim(0, 1.01)
    ax_cdf.set_xlabel("regret (ms, symlog); a curve ends below 1.0 by its share of dead choices and no answers")
    ax_cdf.set_ylabel("share of (group, evaluation) points")
    ax_cdf.set_title("regret CDF per policy")
    ax_cdf.grid(True, which="both", alpha=0.3)
    ax_cdf.legend(fontsize=8, loc="lower right")

    first = next((s for s in scores if s.kind == "service"), scores[0] if scores else None)
    if first is not None and times:
        regions = sorted({c[0] for row in first.choices for c in row if c is not None})
        n = max(1, sum(first.covered))
        shares = {r: [0.0] * len(times) for r in regions}
        none_share = [0.0] * len(times)
        for i, row in enumerate(first.choices):
            for gi, c in enumerate(row):
                if not first.covered[gi]:
                    continue
                if c is None:
                    none_share[i] += 1 / n
                else:
                    shares[c[0]][i] += 1 / n
        # tab20's strong shades first, then its light ones, so that few regions get clearly different colours
        order = [("tab20", k) for k in [*range(0, 20, 2), *range(1, 20, 2)]] + [("tab20b", k) for k in range(20)]
        colours = [plt.get_cmap(m)(k) for m, k in order if (m, k) not in _GREYS]
        stack = [shares[r] for r in regions]
        labels = list(regions)
        if any(none_share):
            stack.append(none_share)
            labels.append("no answer")
        ax_time.stackplot(times, *stack, labels=labels, colors=colours[: len(stack)], step="post")
        for a, b in windows:
            ax_time.axvspan(a, min(b, times[-1]), facecolor="none", edgecolor="black", hatch="//", alpha=0.35, linewidth=0)
        ax_time.set_xlim(times[0], times[-1])
        ax_time.set_ylim(0, 1)
        ax_time.set_xlabel("time (s); hatched: event windows (outage or step + settle)")
        ax_time.set_ylabel("share of groups")
        ax_time.set_title(f"decisions of {first.name} over time, by region")
        ax_time.legend(fontsize=7, ncol=2, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

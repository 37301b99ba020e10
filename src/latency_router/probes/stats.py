"""Summary statistics of a run of Samples: min/avg/p50/p95/max, loss, RFC 3550 jitter, per-phase summaries."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from latency_router.probes import KINDS
from latency_router.probes.base import Sample


def is_phased(kind: str) -> bool:
    """Whether a kind's samples carry phases (its prober says `phased = True`); their JSON always has `phases_ms`."""
    return bool(getattr(KINDS.get(kind), "phased", False))


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of ascending values, interpolated linearly between ranks."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be within 0..100, got {q}")
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    a, b = sorted_values[lo], sorted_values[hi]
    value = a + (b - a) * (pos - lo)
    # Rounding in the interpolation must never step outside the two neighbours.
    return min(max(value, a), b)


def rfc3550_jitter(rtts_ms: Iterable[float]) -> float | None:
    """RFC 3550 interarrival jitter (J += (|D| - J) / 16) over consecutive RTTs; None below two of them."""
    jitter = 0.0
    previous: float | None = None
    count = 0
    for rtt in rtts_ms:
        if previous is not None:
            jitter += (abs(rtt - previous) - jitter) / 16.0
        previous = rtt
        count += 1
    return jitter if count >= 2 else None


@dataclass(frozen=True, slots=True)
class Spread:
    """min, avg, p50, p95 and max of some values in milliseconds."""

    min: float
    avg: float
    p50: float
    p95: float
    max: float

    @classmethod
    def of(cls, values: Iterable[float]) -> "Spread | None":
        """The spread of the values, or None when there are none."""
        ordered = sorted(values)
        if not ordered:
            return None
        avg = math.fsum(ordered) / len(ordered)
        # fsum/len can land a hair outside [min, max] for equal values; clamp so min <= avg <= max holds.
        avg = min(max(avg, ordered[0]), ordered[-1])
        return cls(ordered[0], avg, percentile(ordered, 50), percentile(ordered, 95), ordered[-1])

    def as_dict(self, digits: int = 3) -> dict[str, float]:
        """The JSON shape `{min, p50, avg, p95, max}`."""
        return {k: round(getattr(self, k), digits) for k in ("min", "p50", "avg", "p95", "max")}


NULL_SPREAD = {"min": None, "p50": None, "avg": None, "p95": None, "max": None}


@dataclass(frozen=True, slots=True)
class ProbeSummary:
    """What `latency-router probe` reports for one target: counts, RTT spread, jitter, loss reasons, phases."""

    target: str
    kind: str
    sent: int
    received: int
    rtt: Spread | None
    jitter_ms: float | None
    samples_ms: tuple[float | None, ...]
    loss_reasons: dict[str, int] = field(default_factory=dict)
    phases: dict[str, Spread] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        """Lost probes over sent probes (0.0 when nothing was sent)."""
        return (self.sent - self.received) / self.sent if self.sent else 0.0

    def as_json(self, digits: int = 3) -> dict:
        """The `--json` object: target, sent, received, loss, rtt_ms, jitter_ms, samples_ms, loss_reasons[, phases_ms]."""
        out: dict = {
            "target": self.target,
            "sent": self.sent,
            "received": self.received,
            "loss": round(self.loss, 6),
            "rtt_ms": self.rtt.as_dict(digits) if self.rtt else dict(NULL_SPREAD),
            "jitter_ms": None if self.jitter_ms is None else round(self.jitter_ms, digits),
            "samples_ms": [None if v is None else round(v, digits) for v in self.samples_ms],
            "loss_reasons": dict(self.loss_reasons),
        }
        # phases_ms: per phase (connect, tls, ttfb, ...) the same spread as rtt_ms, over the probes that replied.
        if self.phases or is_phased(self.kind):
            out["phases_ms"] = {name: spread.as_dict(digits) for name, spread in self.phases.items()}
        return out


def summarize(samples: Sequence[Sample], target: str, kind: str = "") -> ProbeSummary:
    """Summarize samples in send order; a lost sample counts as sent, never as an RTT."""
    rtts = [s.rtt_ms for s in samples if s.rtt_ms is not None]
    reasons = Counter(str(s.loss) for s in samples if s.loss is not None)
    phase_values: dict[str, list[float]] = {}
    for s in samples:
        # Phases of a lost probe (e.g. a connect before a bad status) would mix failures into the spread.
        if s.ok and s.phases_ms:
            for name, value in s.phases_ms.items():
                phase_values.setdefault(name, []).append(value)
    phases = {name: Spread.of(values) for name, values in phase_values.items()}
    return ProbeSummary(
        target=target,
        kind=kind or (samples[0].kind if samples else ""),
        sent=len(samples),
        received=len(rtts),
        rtt=Spread.of(rtts),
        jitter_ms=rfc3550_jitter(rtts),
        samples_ms=tuple(s.rtt_ms for s in samples),
        loss_reasons=dict(sorted(reasons.items())),
        phases={name: spread for name, spread in phases.items() if spread is not None},
    )


def format_ms(value: float) -> str:
    """Milliseconds as fping writes them: three decimals below 1 ms, two above."""
    return f"{value:.3f}" if value < 1.0 else f"{value:.2f}"

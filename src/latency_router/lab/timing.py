"""Precise release timing for one thread: sleep until shortly before a deadline, then spin; lateness statistics."""

from __future__ import annotations

import ctypes
import ctypes.util
from array import array

PR_SET_TIMERSLACK = 29
LATENESS_KEEP = 1 << 17  # per-window samples kept for percentiles (the newest ones)


def set_timer_slack_ns(ns: int = 1) -> bool:
    """Ask the kernel for tight timer wake-ups in this thread (the default slack is 50 us)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        return libc.prctl(PR_SET_TIMERSLACK, ctypes.c_ulong(ns), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


class WakeMargin:
    """How long before a deadline to stop sleeping: a high quantile of the observed sleep overshoot."""

    def __init__(self, start_ns: int = 200_000, floor_ns: int = 30_000, ceil_ns: int = 2_000_000) -> None:
        self.margin_ns = start_ns
        self._floor = floor_ns
        self._ceil = ceil_ns
        self._seen: list[int] = []

    def observe(self, overshoot_ns: int) -> None:
        """Record how late one timed sleep woke up; re-derive the margin every 128 wakes."""
        self._seen.append(overshoot_ns)
        if len(self._seen) >= 128:
            self._seen.sort()
            q = self._seen[int(len(self._seen) * 0.95)]
            self.margin_ns = min(self._ceil, max(self._floor, q + 10_000))
            self._seen.clear()


def percentile(sorted_values: "list[int] | array", q: float) -> float:
    """Nearest-rank percentile of an already sorted sequence (0 for an empty one)."""
    if not sorted_values:
        return 0.0
    i = min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))
    return float(sorted_values[i])


class Lateness:
    """Release lateness (actual release minus deadline), per window and since start."""

    def __init__(self) -> None:
        self.window = array("q")
        self.window_count = 0
        self.total_count = 0
        self.total_max_ns = 0

    def add(self, late_ns: int) -> None:
        self.window.append(late_ns)
        self.window_count += 1
        self.total_count += 1
        if late_ns > self.total_max_ns:
            self.total_max_ns = late_ns
        if len(self.window) >= 2 * LATENESS_KEEP:
            del self.window[:LATENESS_KEEP]

    def summary(self, reset: bool = False) -> dict[str, float]:
        """p10/p50/p99/max in microseconds over the window (samples since the last reset)."""
        values = sorted(self.window)
        out = {
            "count": self.window_count,
            "p10_us": round(percentile(values, 0.10) / 1e3, 1),
            "p50_us": round(percentile(values, 0.50) / 1e3, 1),
            "p99_us": round(percentile(values, 0.99) / 1e3, 1),
            "max_us": round((values[-1] if values else 0) / 1e3, 1),
            "max_since_start_us": round(self.total_max_ns / 1e3, 1),
        }
        if reset:
            self.window = array("q")
            self.window_count = 0
        return out

"""Durations written as in the config and on the command line: `250ms`, `2s`, `1m`, `1.5s`, `100us`."""

from __future__ import annotations

import math
import re

# (multiplier, divisor) to seconds: dividing by an exact power of ten keeps '86400000ms' exactly 86400.0
_UNITS_S = {
    "ns": (1.0, 1e9),
    "us": (1.0, 1e6),
    "µs": (1.0, 1e6),
    "ms": (1.0, 1e3),
    "s": (1.0, 1.0),
    "m": (60.0, 1.0),
    "h": (3600.0, 1.0),
}
# re.ASCII: only 0-9 are digits (Python's \d also takes e.g. '１' and '١')
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)\s*", re.ASCII)

# no interval, timeout, delay or lab event time needs more; far beyond it a number is a typo (or overflows to inf)
MAX_DURATION_S = 86400.0
MAX_DURATION_TEXT = "24h"


def _quoted(text: str) -> str:
    """repr() of the text, its middle cut out when it is too long to read in one line."""
    shown = repr(text)
    return shown if len(shown) <= 60 else f"{shown[:40]}...{shown[-12:]} ({len(text)} characters)"


def parse_duration(text: str) -> float:
    """Return the duration in seconds (at most MAX_DURATION_S), or raise ValueError naming what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string such as '250ms' or '2s', got {text!r}")
    match = _DURATION.fullmatch(text)
    if match is None:
        raise ValueError(
            f"invalid duration {_quoted(text)}: write a number and a unit (ns, us, ms, s, m, h), e.g. '250ms'"
        )
    multiplier, divisor = _UNITS_S[match.group(2)]
    seconds = float(match.group(1)) * multiplier / divisor
    if not math.isfinite(seconds) or seconds > MAX_DURATION_S:
        raise ValueError(f"duration {_quoted(text)} is longer than the maximum of {MAX_DURATION_TEXT}")
    return seconds


def _number(value: float) -> str:
    # shortest repr that reads back exactly, but never in exponent notation (the grammar has none)
    text = repr(value)
    if "e" in text or "E" in text:
        text = f"{value:.12f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def format_duration(seconds: float) -> str:
    """Write seconds back in the largest unit that reads well; parse_duration reads it back to the same value."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{_number(seconds / 60)}m"
    if seconds >= 1:
        return f"{_number(seconds)}s"
    if seconds >= 1e-3:
        return f"{_number(round(seconds * 1e3, 9))}ms"
    if seconds >= 1e-6 or seconds == 0:
        return f"{_number(round(seconds * 1e6, 9))}us"
    # below a microsecond the 'us' form would round to '0us', which misreports a non-zero value
    return f"{_number(round(seconds * 1e9, 9))}ns"

"""Durations written as in the config and on the command line: `250ms`, `2s`, `1m`, `1.5s`, `100us`."""

from __future__ import annotations

import re

_UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
# re.ASCII: only 0-9 are digits (Python's \d also takes e.g. '１' and '١')
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)\s*$", re.ASCII)


def parse_duration(text: str) -> float:
    """Return the duration in seconds, or raise ValueError naming what is wrong."""
    if not isinstance(text, str):
        raise ValueError(f"expected a duration string such as '250ms' or '2s', got {text!r}")
    match = _DURATION.match(text)
    if match is None:
        raise ValueError(
            f"invalid duration {text!r}: write a number and a unit (ns, us, ms, s, m, h), e.g. '250ms'"
        )
    return float(match.group(1)) * _UNITS_S[match.group(2)]


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
    return f"{_number(round(seconds * 1e6, 9))}us"

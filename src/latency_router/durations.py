"""Durations written as in the config and on the command line: `250ms`, `2s`, `1m`, `1.5s`, `100us`."""

from __future__ import annotations

import re

_UNITS_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)\s*$")


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


def format_duration(seconds: float) -> str:
    """Write seconds back in the shortest exact unit that reads well."""
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g}m"
    if seconds >= 1:
        return f"{seconds:g}s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:g}ms"
    return f"{seconds * 1e6:g}us"

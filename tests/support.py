"""What several test files share: the smallest valid config and a stand-in for the table's rows."""

from __future__ import annotations

from typing import NamedTuple

# one region with one path: the smallest config the loader accepts
MINIMAL_CONFIG = """
[[regions]]
name = "eu-west-1"
lat = 53.35
lon = -6.26

[[regions.paths]]
name = "direct"
probe = "udp://203.0.113.10:7007"
answer = "203.0.113.10"
"""

HEALTHY = {"up": True, "unknown": True, "down": False, "stale": False}  # what the table takes each state for


class Row(NamedTuple):
    """A stand-in for a table RowSnapshot: only the fields the decider reads."""

    ewma_ms: float | None
    p50_ms: float | None
    p95_ms: float | None
    min_ms: float | None
    health: str
    healthy: bool
    samples: int = 1


def row(rtt_ms: float | None, health: str = "up") -> Row:
    """A row whose every RTT statistic is rtt_ms, in the given health state."""
    return Row(rtt_ms, rtt_ms, rtt_ms, rtt_ms, health, HEALTHY[health])


def installed(binary: str, package: str, *paths: str) -> str:
    """The path of a binary scripts/setup-system installs: a run where the set-up ran (CI, or as root) fails without it;
    only a local run without root may skip."""
    import os
    import shutil

    import pytest

    path = shutil.which(binary) or next((p for p in paths if os.access(p, os.X_OK)), None)
    if path is not None:
        return path
    if os.environ.get("CI") or os.geteuid() == 0:
        pytest.fail(f"{binary} is missing: scripts/setup-system installs the Debian package {package}")
    pytest.skip(f"{binary} is not installed (Debian package {package})")

"""Probe kinds, one file each; KINDS is the one list of them (the config loader reads its keys)."""

from __future__ import annotations

from urllib.parse import urlsplit

from latency_router.probes.base import EngineCounters, LossReason, Prober, Sample
from latency_router.probes.dns import DnsProber
from latency_router.probes.http import HttpProber
from latency_router.probes.icmp import IcmpProber
from latency_router.probes.tcp import TcpProber
from latency_router.probes.udp import UdpProber

KINDS: dict[str, type] = {
    "udp": UdpProber,
    "tcp": TcpProber,
    "http": HttpProber,
    "https": HttpProber,
    "icmp": IcmpProber,
    "dns": DnsProber,
}


def scheme_of(url: str) -> str:
    """The URL's scheme, or ValueError naming the allowed ones."""
    try:
        scheme = urlsplit(url).scheme.lower() if isinstance(url, str) and "://" in url else ""
    except ValueError as exc:  # e.g. an unclosed '[': say which URL
        raise ValueError(f"{url!r}: {exc}") from None
    if scheme not in KINDS:
        allowed = ", ".join(sorted(KINDS))
        shown = scheme or url
        raise ValueError(f"unknown scheme {shown!r} (expected one of: {allowed})")
    return scheme


def parse_url(url: str):
    """Validate a probe URL without opening anything; returns the kind's frozen spec."""
    return KINDS[scheme_of(url)].parse_url(url)


def make_prober(url: str, counters: EngineCounters | None = None) -> Prober:
    """Build the prober for a URL (sockets open lazily, on the first probe)."""
    cls = KINDS[scheme_of(url)]
    return cls(cls.parse_url(url), counters=counters)


__all__ = ["KINDS", "EngineCounters", "LossReason", "Prober", "Sample", "make_prober", "parse_url", "scheme_of"]

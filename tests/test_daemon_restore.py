"""The daemon's restore at start: rows come back only for targets that are the same (vantage, region, path, probe URL)."""

from __future__ import annotations

import asyncio

from latency_router.config import parse_config
from latency_router.daemon import Daemon, public_url
from latency_router.decider.table import RowKey
from latency_router.probes.base import Sample


def config(tmp_path, eu_probe: str = "udp://127.0.1.1:7007", agent: str = "fra1"):
    return parse_config(f"""
[agent]
name = "{agent}"
[store]
path = "{tmp_path / 'state.db'}"
[[regions]]
name = "eu"
lat = 0.0
lon = 0.0
[[regions.paths]]
name = "direct"
probe = "{eu_probe}"
answer = "192.0.2.1"
[[regions]]
name = "us"
lat = 0.0
lon = 0.0
[[regions.paths]]
name = "direct"
probe = "udp://127.0.2.1:7007"
answer = "192.0.2.2"
""")


def saved_daemon(tmp_path) -> Daemon:
    d = Daemon(config(tmp_path), None)
    for region in ("eu", "us"):
        key = RowKey("fra1", region, "direct")
        for t in range(5):
            d.latency_table.add_sample(key, Sample(target="x", kind="udp", sent_at=t, rtt_ms=10.0 + t), 100.0 + t)
            d.latency_table.add_round(key, 1.0 if region == "us" else 0.0, 100.0 + t)  # us fails every round: down
    asyncio.run(d.save())
    return d


def samples(d: Daemon) -> dict[str, tuple[int, str]]:
    snap = d.latency_table.snapshot(105.0)
    return {k[1]: (r.samples, str(r.health)) for k, r in snap.rows.items()}


def test_a_restart_restores_rows_of_unchanged_targets_with_their_health(tmp_path):
    saved_daemon(tmp_path)
    d = Daemon(config(tmp_path), None)
    d._restore()
    assert samples(d) == {"eu": (5, "up"), "us": (5, "down")}


def test_a_target_whose_probe_url_changed_starts_afresh(tmp_path):
    saved_daemon(tmp_path)
    d = Daemon(config(tmp_path, eu_probe="udp://127.0.1.9:7007"), None)
    d._restore()
    assert samples(d) == {"eu": (0, "unknown"), "us": (5, "down")}


def test_another_vantage_restores_nothing(tmp_path):
    saved_daemon(tmp_path)
    d = Daemon(config(tmp_path, agent="ams1"), None)
    d._restore()
    assert all(n == 0 for n, _ in samples(d).values())


def test_the_api_shows_probe_urls_without_credentials():
    assert public_url("https://user:pw@example.com:8443/health?key=s3cret") == "https://example.com:8443/health"
    assert public_url("udp://[2001:db8::1]:7007") == "udp://[2001:db8::1]:7007"
    assert public_url("icmp://192.0.2.1") == "icmp://192.0.2.1"

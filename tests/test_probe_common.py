"""What the probe kinds share: URL checks, the per-target address cache, kernel-timestamp pairing, the loop runner."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from latency_router.aio import run_async
from latency_router.probes import KINDS, make_prober, parse_url
from latency_router.probes.base import LossReason, Sample
from latency_router.probes.common import (
    CLOCK_KERNEL,
    CLOCK_SLACK_NS,
    CLOCK_STEPPED,
    CLOCK_USER,
    SO_RXQ_OVFL,
    SO_TIMESTAMPNS,
    AddressCache,
    DropCounter,
    pair_rtt,
    read_rx_cmsgs,
)
from latency_router.probes.scheduler import Scheduler
from latency_router.probes.stats import is_phased
from latency_router.probes.tcp import TcpProber

# ----- URL checks, the same for every kind


@pytest.mark.parametrize(
    "url, message",
    [
        ("tcp://a..b:80", "is neither an IP address nor a host name"),
        ("tcp://a\0b:80", "is neither an IP address nor a host name"),
        ("udp://a..b:7", "is neither an IP address nor a host name"),
        ("http://-x-.example/", "is neither an IP address nor a host name"),
        ("dns://bad_server!/x.test", "is neither an IP address nor a host name"),
        ("icmp://h\u00e9.example", "write an international name in its xn-- form"),
        ("udp://" + "a" * 64 + ".com:7", "is neither an IP address nor a host name"),
        ("tcp://127.1:80", "is neither an IP address nor a host name"),
        ("icmp://1.2.3.4:", "empty port after ':'"),
        ("tcp://1.2.3.4:/", "empty port after ':'"),
        ("http://[::1:80/", "Invalid IPv6 URL"),
        ("tcp://::1:80", "write an IPv6 address in brackets"),
        ("http://[fe80::1%25eth0]/", "IPv6 zone IDs ('%' in the address) are not supported"),
        ("tcp://[::1:80", "'tcp://[::1:80': Invalid IPv6 URL"),
        ("dns://127.0.0.1/x.test?type=TYPE99999", "unknown record type 'TYPE99999'"),
        ("dns://127.0.0.1/x.test?tcp=1&tcp=0", "'tcp' given twice"),
        ("dns://127.0.0.1/x.test?type=A&type=AAAA", "'type' given twice"),
        ("udp://127.0.0.1:7?size=64&size=64", "'size' given twice"),
        ("http://127.0.0.1/?status=200&status=204", "'status' given twice"),
        ("http://127.0.0.1/?phases=1&phases=2", "'phases' given twice"),
        ("tcp://user@127.0.0.1:80", "takes no user or password"),
        ("dns://127.0.0.1/x.test#frag", "takes no user, password or fragment"),
    ],
    ids=lambda v: v if "://" in v else "",
)
def test_bad_urls_are_refused_at_parse_time_with_a_clear_message(url: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_url(url)
    assert message in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(
    "url",
    ["tcp://a.b:80", "tcp://xn--h-1ga.example:80", "udp://_srv.example.:7", "http://127.0.0.1/?a=1&a=2",
     "icmp://[::1]", "dns://[::1]:5353/x.test?tcp=1"],
)
def test_good_urls_still_parse(url: str) -> None:
    assert parse_url(url).url == url


@given(st.text(max_size=60), st.sampled_from(sorted(KINDS)))
def test_any_text_after_a_known_scheme_parses_or_is_a_value_error(text: str, scheme: str) -> None:
    try:
        parse_url(f"{scheme}://{text}")
    except ValueError as exc:
        assert str(exc)


def test_only_tcp_and_http_are_phased() -> None:
    assert {kind for kind in KINDS if is_phased(kind)} == {"tcp", "http", "https"}
    assert not is_phased("no-such-kind")


def test_run_async_runs_a_coroutine_on_uvloop() -> None:
    async def which() -> str:
        return type(asyncio.get_running_loop()).__module__

    assert run_async(which()).startswith("uvloop")


# ----- kernel timestamps


@pytest.mark.parametrize(
    "rx, sent_wall, sent_perf, now_perf, expected",
    [
        (1_000_300_000, 1_000_000_000, 50, 50 + 400_000, (300_000, CLOCK_KERNEL)),
        (1_000_300_000, 1_000_000_000, 50, 50 + 300_000, (300_000, CLOCK_KERNEL)),  # equal: read just as it came
        (6_000_300_000, 1_000_000_000, 50, 50 + 400_000, (400_000, CLOCK_STEPPED)),  # stepped forward 5 s
        (1_000_000_000 + 400_000 + CLOCK_SLACK_NS + 1, 1_000_000_000, 0, 400_000, (400_000, CLOCK_STEPPED)),
        (999_000_000, 1_000_000_000, 50, 50 + 400_000, (400_000, CLOCK_STEPPED)),  # stepped back
        (0, 1_000_000_000, 50, 50 + 400_000, (400_000, CLOCK_USER)),  # no kernel stamp
    ],
    ids=["kernel", "kernel-at-bound", "stepped-forward", "just-past-slack", "stepped-back", "no-stamp"],
)
def test_pair_rtt_bounds_the_kernel_rtt_by_the_monotonic_one(rx, sent_wall, sent_perf, now_perf, expected) -> None:
    assert pair_rtt(rx, sent_wall, sent_perf, now_perf) == expected


def test_read_rx_cmsgs_reads_the_timestamp_and_the_drop_count() -> None:
    ancdata = [
        (socket.SOL_SOCKET, SO_TIMESTAMPNS, struct.pack("@ll", 1_700_000_000, 123_456_789)),
        (socket.SOL_SOCKET, SO_RXQ_OVFL, struct.pack("@I", 42)),
        (socket.IPPROTO_IP, SO_TIMESTAMPNS, b"\xff" * 16),  # same number at another level: not ours
    ]
    assert read_rx_cmsgs(ancdata) == (1_700_000_000_123_456_789, 42)
    assert read_rx_cmsgs([]) == (0, None)


def test_drop_counter_takes_increments_across_the_32_bit_wrap() -> None:
    drops = DropCounter()
    totals = (0, 5, 5, 0x70000000, 0xE0000000, 0xFFFFFFFE, 3, 2)
    assert [drops.delta(t) for t in totals] == [0, 5, 0, 0x6FFFFFFB, 0x70000000, 0x1FFFFFFE, 5, 0]  # 3 -> 2: not 4 G


def test_the_udp_socket_reads_real_kernel_timestamps() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b:
        b.bind(("127.0.0.1", 0))
        b.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        b.settimeout(5)
        a.sendto(b"x", b.getsockname())
        _, ancdata, _, _ = b.recvmsg(16, 256)
    rx_ns, _ = read_rx_cmsgs(ancdata)
    assert rx_ns > 1_600_000_000 * 10**9


# ----- the address cache


class FakeResolver:
    """socket.getaddrinfo for *.slow.test (blocks until released) and *.fast.test (at once): 127.0.0.1, or the
    address set in `answers`."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls: Counter[str] = Counter()
        self.running: Counter[str] = Counter()
        self.peak: Counter[str] = Counter()
        self.answers: dict[str, str] = {}
        self._lock = threading.Lock()
        self._real = socket.getaddrinfo

    def __call__(self, host, port, *args, **kwargs):
        if not isinstance(host, str) or not host.endswith((".slow.test", ".fast.test")):
            return self._real(host, port, *args, **kwargs)
        with self._lock:
            self.calls[host] += 1
            self.running[host] += 1
            self.peak[host] = max(self.peak[host], self.running[host])
        try:
            if host.endswith(".slow.test"):
                self.release.wait(20)  # bounded: a forgotten release cannot hang the run
            return self._real(self.answers.get(host, "127.0.0.1"), port, *args, **kwargs)
        finally:
            with self._lock:
                self.running[host] -= 1


def fake_resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeResolver]:
    """Install a FakeResolver as socket.getaddrinfo (which the probes' lookup threads call); for a fixture."""
    fake = FakeResolver()
    monkeypatch.setattr(socket, "getaddrinfo", fake)
    yield fake
    fake.release.set()  # no lookup thread is left waiting


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeResolver]:
    yield from fake_resolver(monkeypatch)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    yield sock
    sock.close()


async def test_a_name_is_looked_up_once_per_target_then_cached(resolver: FakeResolver, listener: socket.socket) -> None:
    p = TcpProber(TcpProber.parse_url(f"tcp://good.fast.test:{listener.getsockname()[1]}"))
    samples = [await p.probe(2.0) for _ in range(5)]
    assert all(s.ok for s in samples), samples
    assert resolver.calls["good.fast.test"] == 1


async def test_ip_literals_never_touch_the_resolver(resolver: FakeResolver, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as echo:
        echo.bind(("127.0.0.1", 0))
        probers = [make_prober(f"tcp://127.0.0.1:{port}"), make_prober(f"udp://127.0.0.1:{echo.getsockname()[1]}"),
                   make_prober(f"dns://127.0.0.1:{echo.getsockname()[1]}/x.test")]
        for p in probers:
            await p.probe(0.05)
            await p.aclose()
    cache = AddressCache("::1", 7, socket.SOCK_DGRAM)
    assert await cache.first() == (socket.AF_INET6, ("::1", 7, 0, 0)) and cache.lookups == 0
    assert resolver.calls == Counter()


async def test_a_slow_lookup_is_one_in_flight_and_a_refresh_never_makes_a_probe_wait(resolver: FakeResolver) -> None:
    cache = AddressCache("a.slow.test", 9, socket.SOCK_DGRAM, refresh_s=0.0)
    waits = [asyncio.create_task(cache.first()) for _ in range(5)]
    for _ in range(3):  # timed-out waits leave the lookup running, and later callers join it
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.05):
                await cache.first()
    assert cache.in_flight and cache.lookups == 1
    resolver.release.set()
    async with asyncio.timeout(10):
        assert set(await asyncio.gather(*waits)) == {(socket.AF_INET, ("127.0.0.1", 9))}
    resolver.release.clear()  # lookups hang again: the refresh (due at once, refresh_s=0) must not be waited for
    async with asyncio.timeout(1):
        assert await cache.first() == (socket.AF_INET, ("127.0.0.1", 9))
        assert await cache.first() == (socket.AF_INET, ("127.0.0.1", 9))
    assert cache.in_flight and cache.lookups == 2
    resolver.release.set()
    assert resolver.peak["a.slow.test"] == 1


async def test_a_failed_lookup_is_a_lost_sample_and_retried_by_the_next_probe(resolver: FakeResolver) -> None:
    p = make_prober("tcp://no-such-host.invalid:80")
    first, second = await p.probe(2.0), await p.probe(2.0)
    assert not first.ok and not second.ok and first.detail
    assert p._address.lookups == 2


async def test_slow_names_do_not_starve_other_targets(resolver: FakeResolver, listener: socket.socket) -> None:
    """Eight targets whose names never resolve, one whose name does: the loop's resolver threads (six here) must
    not fill up with the slow ones' lookups, so the good target keeps every probe."""
    port = listener.getsockname()[1]
    targets = [(f"slow{i}", make_prober(f"tcp://t{i}.slow.test:{port}")) for i in range(8)]
    targets.append(("good", make_prober(f"tcp://good.fast.test:{port}")))
    got: list[Sample] = []
    s = Scheduler(targets, got.append, interval_s=0.25, timeout_s=0.1, samples=2)
    task = asyncio.create_task(s.run())
    await asyncio.sleep(1.5)
    s.stop()
    async with asyncio.timeout(10):
        await task
    good = [x for x in got if x.target == "good"]
    slow = [x for x in got if x.target != "good"]
    assert len(good) >= 4 and all(x.ok for x in good), [x for x in good if not x.ok][:3]
    assert slow and all(x.loss is LossReason.TIMEOUT for x in slow)
    assert all(resolver.peak[f"t{i}.slow.test"] == 1 for i in range(8)), resolver.peak
    assert sum(resolver.calls[f"t{i}.slow.test"] for i in range(8)) == 8  # one lookup each, still hanging


def test_the_cache_moves_to_a_new_loop() -> None:
    cache = AddressCache("localhost", 9, socket.SOCK_DGRAM)
    first = uvloop.run(cache.first())
    assert asyncio.run(cache.first()) == first

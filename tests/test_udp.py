"""udp:// probes against real sockets on loopback: RTT, timeout, refused, late, duplicate and stray replies, drops."""

from __future__ import annotations

import asyncio
import select
import socket
import statistics
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pytest
import uvloop
from hypothesis import given
from hypothesis import strategies as st

from latency_router.probes import make_prober, parse_url
from latency_router.probes.base import EngineCounters, LossReason, Sample
from latency_router.probes.udp import DETAIL_KERNEL, HEADER, MAGIC, SO_TIMESTAMPNS, UdpProber, UdpSpec
from test_probe_common import FakeResolver, fake_resolver

LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeResolver]:
    """Names under .slow.test and .fast.test, answered by the test (see test_probe_common)."""
    yield from fake_resolver(monkeypatch)


@pytest.fixture(params=sorted(LOOPS))
def run(request) -> Callable[[Coroutine[Any, Any, Any]], Any]:
    """Run a scenario on the standard loop and on uvloop (the daemon's), each a fresh loop."""

    def runner(coro: Coroutine[Any, Any, Any]) -> Any:
        with asyncio.Runner(loop_factory=LOOPS[request.param]) as r:
            return r.run(asyncio.wait_for(coro, 30))

    return runner


class Echo:
    """A plain-socket UDP echo server in a thread, with misbehaviours on demand; it times its own holds."""

    def __init__(self, host: str = "127.0.0.1", *, delay_s: float = 0.0, copies: int = 1, answer: bool = True,
                 before: Callable[[bytes], list[bytes]] | None = None) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(family, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        self.sock.bind((host, 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"udp://[{host}]:{self.port}" if family == socket.AF_INET6 else f"udp://{host}:{self.port}"
        self.delay_s, self.copies, self.answer, self.before = delay_s, copies, answer, before
        self.received: list[bytes] = []
        self.holds_s: list[tuple[float, float]] = []  # (hold until sendto, hold until it returned)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        while not self._stop.is_set():
            ready, _, _ = select.select([self.sock], [], [], 0.05)
            if not ready:
                continue
            data, ancdata, _, peer = self.sock.recvmsg(65536, 256)
            # The hold runs from the kernel's receive stamp to sendto, both wall clock: this thread's own
            # wake-up and any preemption fall inside it, not between it and the probe's RTT.
            arrived_ns = next((sec * 10**9 + nsec for level, kind, raw in ancdata if kind == SO_TIMESTAMPNS
                               for sec, nsec in [struct.unpack("@ll", raw)]), time.time_ns())
            self.received.append(data)
            if not self.answer:
                continue
            for extra in self.before(data) if self.before else []:
                self.sock.sendto(extra, peer)
            if self.delay_s:
                # Sleep most of the hold, then spin: the hold is exact to microseconds, not to the scheduler's tick.
                time.sleep(max(0.0, self.delay_s - (time.time_ns() - arrived_ns) / 1e9 - 0.002))
                while time.time_ns() - arrived_ns < self.delay_s * 1e9:
                    pass
            before_ns = time.time_ns()
            for _ in range(self.copies):
                self.sock.sendto(data, peer)
            self.holds_s.append(((before_ns - arrived_ns) / 1e9, (time.time_ns() - arrived_ns) / 1e9))

    def __enter__(self) -> "Echo":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def closed_port(family: int = socket.AF_INET, host: str = "127.0.0.1") -> int:
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def prober(url: str, counters: EngineCounters | None = None, **kw: Any) -> UdpProber:
    return UdpProber(UdpProber.parse_url(url), counters, **kw)


async def settle(seconds: float) -> None:
    """Let the loop run (replies arrive, timers fire) for a while."""
    await asyncio.sleep(seconds)


# ----- parsing


@pytest.mark.parametrize(
    ("url", "spec"),
    [
        ("udp://127.0.0.1:7007", UdpSpec("udp://127.0.0.1:7007", "127.0.0.1", 7007, 64)),
        ("udp://[::1]:7007", UdpSpec("udp://[::1]:7007", "::1", 7007, 64)),
        ("udp://region.example.com:9?size=512", UdpSpec("udp://region.example.com:9?size=512", "region.example.com", 9, 512)),
        ("udp://127.0.0.1:7/?size=28", UdpSpec("udp://127.0.0.1:7/?size=28", "127.0.0.1", 7, 28)),
    ],
    ids=["ipv4", "ipv6", "name-size", "smallest-size"],
)
def test_parse_url_valid(url: str, spec: UdpSpec) -> None:
    assert UdpProber.parse_url(url) == spec
    assert parse_url(url) == spec  # through the registry


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("udp://127.0.0.1", "udp://HOST:PORT needs a port"),
        ("udp://[::1]", "udp://HOST:PORT needs a port"),
        ("udp://127.0.0.1:0", "the port must be a number within 1..65535"),
        ("udp://127.0.0.1:70000", "the port must be a number within 1..65535"),
        ("udp://127.0.0.1:x", "the port must be a number within 1..65535"),
        ("udp://:7007", "missing HOST"),
        ("udp://::1:7007", "write an IPv6 address in brackets"),
        ("udp://[::1:7007", "Invalid IPv6 URL"),
        ("udp://bad host:7007", "is neither an IP address nor a host name"),
        ("udp://a..b:7007", "is neither an IP address nor a host name"),
        ("udp://127.0.0.1:", "empty port after ':'"),
        ("udp://-bad-.example:7007", "is neither an IP address nor a host name"),
        ("udp://user@127.0.0.1:7007", "takes no user or password"),
        ("udp://127.0.0.1:7007/path", "takes no path"),
        ("udp://127.0.0.1:7007?size=27", "size must be within 28..65507"),
        ("udp://127.0.0.1:7007?size=70000", "size must be within 28..65507"),
        ("udp://127.0.0.1:7007?size=big", "size must be a whole number"),
        ("udp://127.0.0.1:7007?size=64&size=65", "'size' given twice"),
        ("udp://127.0.0.1:7007?ttl=3", "unknown option 'ttl'"),
        ("tcp://127.0.0.1:7007", "expected a udp:// URL"),
    ],
    ids=lambda v: v if v.startswith(("udp", "tcp")) else "",
)
def test_parse_url_invalid(url: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        UdpProber.parse_url(url)
    assert message in str(info.value)
    if "needs a port" in message:
        assert str(info.value) == message


@given(port=st.integers(1, 65535), size=st.integers(HEADER.size, 65507), v6=st.booleans())
def test_parse_url_round_trips(port: int, size: int, v6: bool) -> None:
    host = "[2001:db8::7]" if v6 else "192.0.2.7"
    spec = UdpProber.parse_url(f"udp://{host}:{port}?size={size}")
    assert (spec.host, spec.port, spec.size) == (host.strip("[]"), port, size)


def test_parse_opens_nothing() -> None:
    """A name that does not resolve is still a valid URL: resolution waits for the first probe."""
    assert UdpProber.parse_url("udp://no-such-host.invalid:7007").host == "no-such-host.invalid"


# ----- probing


def test_success_with_a_plausible_rtt(run) -> None:
    async def scenario() -> list[Sample]:
        p = make_prober(echo.url)
        try:
            return [await p.probe(1.0) for _ in range(5)]
        finally:
            await p.aclose()

    with Echo() as echo:
        samples = run(scenario())
    assert all(s.ok and s.kind == "udp" and s.target == echo.url for s in samples), samples
    assert all(0.0 < s.rtt_ms < 100.0 for s in samples), samples
    assert [s.seq for s in samples] == [0, 1, 2, 3, 4]
    assert all(s.detail == DETAIL_KERNEL for s in samples)  # Linux: kernel receive timestamps
    assert all(abs(s.sent_at - time.time()) < 60 for s in samples)
    # Each datagram: magic, a prober id, the seq, the wall-clock send time, padded to 64 bytes.
    assert [len(d) for d in echo.received] == [64] * 5
    fields = [HEADER.unpack_from(d) for d in echo.received]
    assert {f[0] for f in fields} == {MAGIC} and len({f[1] for f in fields}) == 1
    assert [f[2] for f in fields] == [0, 1, 2, 3, 4]
    assert all(abs(f[3] / 1e9 - s.sent_at) < 0.001 for f, s in zip(fields, samples))


def test_payload_size_option(run) -> None:
    async def scenario() -> Sample:
        p = make_prober(echo.url + "?size=1200")
        try:
            return await p.probe(1.0)
        finally:
            await p.aclose()

    with Echo() as echo:
        sample = run(scenario())
    assert sample.ok and [len(d) for d in echo.received] == [1200]


def test_rtt_matches_an_independent_timer(run) -> None:
    """The echo holds each reply 20 ms by its own clock: the probe must report 20 to 25 ms."""

    async def scenario() -> list[tuple[Sample, float]]:
        p = make_prober(echo.url)
        out = []
        try:
            for _ in range(7):
                t0 = time.perf_counter()
                s = await p.probe(1.0)
                out.append((s, (time.perf_counter() - t0) * 1e3))
        finally:
            await p.aclose()
        return out

    with Echo(delay_s=0.020) as echo:
        results = run(scenario())
    rtts = [s.rtt_ms for s, _ in results]
    assert all(s.ok for s, _ in results), results
    assert all(r >= 20.0 for r in rtts), rtts  # never shorter than the hold
    assert all(r <= wall for r, (_, wall) in zip(rtts, results)), results  # never longer than the caller waited
    # The RTT is the server's own hold (which a loaded machine may stretch) plus the loopback path, microseconds.
    for rtt, (held_s, returned_s) in zip(rtts, echo.holds_s):
        assert held_s * 1e3 - 0.05 <= rtt <= returned_s * 1e3 + 2.0, (rtt, held_s, returned_s)
    assert 20.0 <= statistics.median(rtts) <= 25.0, rtts


def test_timeout_against_a_silent_server(run) -> None:
    counters = EngineCounters()

    async def scenario() -> tuple[Sample, float, int]:
        p = prober(echo.url, counters)
        try:
            t0 = time.perf_counter()
            s = await p.probe(0.15)
            return s, time.perf_counter() - t0, p.in_flight
        finally:
            await p.aclose()

    with Echo(answer=False) as echo:
        sample, elapsed, in_flight = run(scenario())
    assert sample.loss is LossReason.TIMEOUT and sample.rtt_ms is None
    assert sample.detail == "no reply within 150 ms"
    assert 0.15 <= elapsed < 2.0  # never early
    assert in_flight == 0 and len(echo.received) == 1
    assert counters.late_replies == counters.duplicate_replies == counters.stray_replies == 0


def test_refused_on_a_closed_port_then_recovers_when_it_opens(run) -> None:
    """ICMP port unreachable is REFUSED for that probe; the socket keeps working (uvloop stops a poll on EPOLLERR)."""
    port = closed_port()
    url = f"udp://127.0.0.1:{port}"

    async def scenario() -> tuple[list[Sample], list[Sample], list[float]]:
        p = make_prober(url)
        try:
            refused = [await p.probe(1.0) for _ in range(3)]
            refused += await asyncio.gather(*(p.probe(1.0) for _ in range(20)))
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as srv:
                srv.bind(("127.0.0.1", port))
                srv.setblocking(False)
                loop = asyncio.get_running_loop()

                def echo() -> None:
                    while True:
                        try:
                            data, peer = srv.recvfrom(65536)
                        except BlockingIOError:
                            return
                        srv.sendto(data, peer)

                loop.add_reader(srv.fileno(), echo)
                try:
                    answered, waits = [], []
                    for _ in range(3):
                        t0 = time.perf_counter()
                        answered.append(await p.probe(3.0))
                        waits.append(time.perf_counter() - t0)
                finally:
                    loop.remove_reader(srv.fileno())
            return refused, answered, waits
        finally:
            await p.aclose()

    refused, answered, waits = run(scenario())
    assert all(s.loss is LossReason.REFUSED for s in refused), refused
    assert all(s.detail == "Connection refused" for s in refused)
    assert all(s.ok for s in answered), answered
    # Read as they came, not by the timeout sweep 3 s later: the reader is still registered after the error.
    assert all(w < 1.5 for w in waits), waits


def test_unresolvable_name_is_a_lost_sample(run) -> None:
    async def scenario() -> Sample:
        p = make_prober("udp://no-such-host.invalid:7007")
        try:
            return await p.probe(2.0)
        finally:
            await p.aclose()

    sample = run(scenario())
    assert not sample.ok and sample.loss in (LossReason.ERROR, LossReason.TIMEOUT, LossReason.UNREACHABLE)


def test_late_reply_is_counted_and_never_taken_for_a_fresh_one(run) -> None:
    counters = EngineCounters()

    async def scenario() -> tuple[Sample, Sample]:
        p = prober(echo.url, counters)
        try:
            first = await p.probe(0.1)  # the echo answers after 300 ms
            await settle(0.4)  # the late reply arrives
            echo.delay_s = 0.0
            second = await p.probe(1.0)
            return first, second
        finally:
            await p.aclose()

    with Echo(delay_s=0.3) as echo:
        first, second = run(scenario())
    assert first.loss is LossReason.TIMEOUT and first.seq == 0
    assert counters.late_replies == 1
    assert second.ok and second.seq == 1 and second.rtt_ms < 100  # its own reply, not the late one of seq 0
    assert counters.duplicate_replies == counters.stray_replies == 0


def test_reply_read_after_its_timeout_is_late_even_before_the_timer(run) -> None:
    """A busy loop reads a reply that came back after the timeout before the timer fires: lost and late, not an RTT."""
    counters = EngineCounters()

    async def scenario() -> Sample:
        p = prober(echo.url, counters)
        try:
            await p.open()
            task = asyncio.ensure_future(p.probe(0.05))
            await asyncio.sleep(0)  # the probe is sent
            time.sleep(0.3)  # block the loop: the reply (at 100 ms) waits in the socket, past the 50 ms timeout
            return await task
        finally:
            await p.aclose()

    with Echo(delay_s=0.1) as echo:
        sample = run(scenario())
    assert sample.loss is LossReason.TIMEOUT and sample.detail.startswith("reply after 10")
    assert counters.late_replies == 1 and counters.duplicate_replies == 0


def test_reply_in_time_but_read_late_keeps_its_kernel_rtt(run) -> None:
    """The kernel stamps the reply on arrival: a loop busy past the timeout does not turn a fast reply into a loss."""

    async def scenario() -> Sample:
        p = make_prober(echo.url)
        try:
            await p.open()
            task = asyncio.ensure_future(p.probe(0.05))
            await asyncio.sleep(0)
            time.sleep(0.15)
            return await task
        finally:
            await p.aclose()

    with Echo() as echo:
        sample = run(scenario())
    assert sample.ok and sample.rtt_ms < 50 and sample.detail == DETAIL_KERNEL


def test_duplicate_reply_is_counted_once(run) -> None:
    counters = EngineCounters()

    async def scenario() -> list[Sample]:
        p = prober(echo.url, counters)
        try:
            samples = [await p.probe(1.0) for _ in range(3)]
            await settle(0.1)
            return samples
        finally:
            await p.aclose()

    with Echo(copies=2) as echo:
        samples = run(scenario())
    assert all(s.ok for s in samples) and [s.seq for s in samples] == [0, 1, 2]
    assert counters.duplicate_replies == 3
    assert counters.late_replies == counters.stray_replies == 0


def test_foreign_datagrams_are_stray_and_ignored(run) -> None:
    counters = EngineCounters()

    def junk(data: bytes) -> list[bytes]:
        magic, prober_id, seq, sent = HEADER.unpack_from(data)
        return [
            b"hello, not a probe",  # someone else's protocol
            b"LR",  # too short for a header
            HEADER.pack(MAGIC, bytes(8), seq, sent),  # another prober's id
            HEADER.pack(MAGIC, prober_id, seq + 1000, sent),  # a seq never sent
        ]

    async def scenario() -> Sample:
        p = prober(echo.url, counters)
        try:
            return await p.probe(1.0)
        finally:
            await p.aclose()

    with Echo(before=junk) as echo:
        sample = run(scenario())
    assert sample.ok and sample.rtt_ms < 100
    assert counters.stray_replies == 4
    assert counters.late_replies == counters.duplicate_replies == 0


def test_ipv6_loopback(run) -> None:
    async def scenario() -> Sample:
        p = make_prober(echo.url)
        try:
            return await p.probe(1.0)
        finally:
            await p.aclose()

    with Echo("::1") as echo:
        sample = run(scenario())
    assert echo.url.startswith("udp://[::1]:")
    assert sample.ok and 0 < sample.rtt_ms < 100 and sample.detail == DETAIL_KERNEL


def test_ipv6_refused(run) -> None:
    async def scenario() -> Sample:
        p = make_prober(f"udp://[::1]:{closed_port(socket.AF_INET6, '::1')}")
        try:
            return await p.probe(1.0)
        finally:
            await p.aclose()

    assert run(scenario()).loss is LossReason.REFUSED


def test_thousands_in_flight_on_one_socket(run) -> None:
    from latency_router.probes.responder import EchoResponder

    async def scenario() -> tuple[list[Sample], int]:
        async with EchoResponder("127.0.0.1", 0) as echo:
            p = make_prober(echo.url)
            try:
                samples = await asyncio.gather(*(p.probe(5.0) for _ in range(3000)))
                return samples, p.in_flight
            finally:
                await p.aclose()

    samples, in_flight = run(scenario())
    assert all(s.ok for s in samples), [s for s in samples if not s.ok][:3]
    assert sorted(s.seq for s in samples) == list(range(3000))
    assert in_flight == 0


def test_bulk_path_delivers_each_outcome_once(run) -> None:
    counters = EngineCounters()

    async def scenario() -> tuple[list[tuple], int]:
        outcomes: list[tuple] = []
        done = asyncio.Event()

        def on_result(seq: int, sent_ns: int, rtt_ns: int | None, loss: LossReason | None, detail: str) -> None:
            outcomes.append((seq, sent_ns, rtt_ns, loss))
            if len(outcomes) == 1000:
                done.set()

        p = prober(echo.url, counters)
        try:
            await p.open()
            first = p.send_many(500, 2.0, on_result)
            second = p.send_probe(2.0, on_result)
            p.send_many(499, 2.0, on_result)
            await asyncio.wait_for(done.wait(), 10)
            await settle(0.05)
            assert (first, second) == (0, 500)
            return outcomes, p.in_flight
        finally:
            await p.aclose()

    with Echo() as echo:
        outcomes, in_flight = run(scenario())
    assert sorted(o[0] for o in outcomes) == list(range(1000))
    assert all(o[2] is not None and o[2] > 0 and o[3] is None for o in outcomes)
    assert in_flight == 0 and counters.duplicate_replies == 0


def test_send_before_open_is_a_usage_error() -> None:
    p = prober("udp://127.0.0.1:9")
    with pytest.raises(RuntimeError, match="await open"):
        p.send_probe(1.0, lambda *a: None)


def test_cancelled_probe_reply_counts_late(run) -> None:
    counters = EngineCounters()

    async def scenario() -> int:
        p = prober(echo.url, counters)
        try:
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(p.probe(5.0), 0.05)  # the caller gives up; the echo answers at 200 ms
            await settle(0.35)
            return p.in_flight
        finally:
            await p.aclose()

    with Echo(delay_s=0.2) as echo:
        in_flight = run(scenario())
    assert in_flight == 0
    assert counters.late_replies == 1 and counters.duplicate_replies == 0


def test_aclose_ends_probes_in_flight(run) -> None:
    async def scenario() -> Sample:
        p = make_prober(echo.url)
        task = asyncio.ensure_future(p.probe(5.0))
        await asyncio.sleep(0.05)
        await p.aclose()
        return await task

    with Echo(answer=False) as echo:
        sample = run(scenario())
    assert sample.loss is LossReason.ERROR and sample.detail == "prober closed"


def test_socket_drops_are_read_from_rxq_ovfl(run) -> None:
    """A tiny receive buffer and a blocked loop: the kernel drops replies, and SO_RXQ_OVFL tells us how many."""
    counters = EngineCounters()

    async def scenario() -> tuple[int, Counter]:
        outcomes: Counter = Counter()
        p = prober(echo.url, counters, rcvbuf_bytes=4096)
        try:
            await p.open()
            p.send_many(300, 0.5, lambda seq, sent, rtt, loss, detail: outcomes.update([loss]))
            time.sleep(0.3)  # the loop is blocked: replies pile up and overflow the small buffer
            await settle(0.8)
            return p.in_flight, outcomes
        finally:
            await p.aclose()

    with Echo() as echo:
        in_flight, outcomes = run(scenario())
    assert len(echo.received) == 300
    assert in_flight == 0 and sum(outcomes.values()) == 300
    answered, timed_out = outcomes[None], outcomes[LossReason.TIMEOUT]
    assert answered > 0 and timed_out > 0
    assert counters.socket_drops == timed_out  # every reply the kernel dropped, and only those


def test_probe_rejects_a_nonpositive_timeout(run) -> None:
    async def scenario() -> None:
        p = make_prober(echo.url)
        try:
            for bad in (0.0, -1.0, float("nan"), float("inf")):
                with pytest.raises(ValueError, match="positive"):
                    await p.probe(bad)
        finally:
            await p.aclose()

    with Echo() as echo:
        run(scenario())


def test_counters_are_shared_between_probers(run) -> None:
    counters = EngineCounters()

    async def scenario() -> None:
        a, b = prober(echo.url, counters), prober(echo.url, counters)
        try:
            await asyncio.gather(a.probe(1.0), b.probe(1.0))
            await settle(0.05)
        finally:
            await a.aclose()
            await b.aclose()

    with Echo(copies=2) as echo:
        run(scenario())
    assert counters.duplicate_replies == 2 and counters.stray_replies == 0


@pytest.mark.parametrize("same_queue", [False, True], ids=["other-timeout", "same-timeout"])
def test_a_callback_that_sends_does_not_delay_an_earlier_timeout(run, same_queue: bool) -> None:
    """A bulk caller re-probes from its callback; the new probe's later deadline must not push back the timer
    that still has an earlier probe to expire (B is due at 0.1 s; C, sent by A's callback, only at 30 s)."""

    async def scenario() -> tuple[dict, int]:
        p = prober(echo.url)
        await p.open()
        loop = asyncio.get_running_loop()
        b_done = loop.create_future()
        outcomes: dict[str, LossReason | None] = {}

        def record(name: str, then=None):
            def callback(seq, sent, rtt, loss, detail) -> None:
                outcomes[name] = loss
                if then is not None:
                    then()
            return callback

        def resend() -> None:
            p.send_probe(30.0, record("C"))

        p.send_probe(0.05 if not same_queue else 0.1, record("A", resend))
        if same_queue:
            await asyncio.sleep(0.02)
        p.send_probe(0.1, record("B", lambda: b_done.set_result(None)))
        try:
            async with asyncio.timeout(10):  # before the fix B waited for C's 30 s deadline
                await b_done
            return dict(outcomes), p.in_flight
        finally:
            await p.aclose()

    with Echo(answer=False) as echo:
        outcomes, in_flight = run(scenario())
    assert outcomes == {"A": LossReason.TIMEOUT, "B": LossReason.TIMEOUT}
    assert in_flight == 1  # C, still waiting for its own deadline


def test_a_wall_clock_step_falls_back_to_the_monotonic_rtt(run, monkeypatch: pytest.MonkeyPatch) -> None:
    """Send time 5 s behind the kernel's receive stamp (a step of the wall clock): the kernel RTT is refused."""
    from latency_router.probes import udp

    monkeypatch.setattr(udp, "time_ns", lambda: time.time_ns() - 5_000_000_000)

    async def scenario() -> Sample:
        p = prober(echo.url)
        try:
            return await p.probe(2.0)
        finally:
            await p.aclose()

    with Echo() as echo:
        sample = run(scenario())
    assert sample.ok and sample.rtt_ms is not None and sample.rtt_ms < 1000, sample
    assert "the wall clock stepped" in sample.detail


def test_a_name_is_followed_to_its_new_address(run, resolver) -> None:
    """The name moves from 127.0.0.1 to 127.0.0.2: the background refresh finds it, and the socket follows."""
    resolver.release.set()

    async def scenario() -> list[Sample]:
        p = prober(f"udp://echo.fast.test:{old.port}")
        try:
            p._address.refresh_s = 0.0  # refresh on every probe (in the background), instead of every minute
            samples = [await p.probe(2.0)]
            resolver.answers["echo.fast.test"] = "127.0.0.2"
            samples.append(await p.probe(2.0))  # still the old address: the refresh it started runs meanwhile
            async with asyncio.timeout(5):
                while p._address.cached()[0][1][0] != "127.0.0.2":
                    await asyncio.sleep(0.01)
            samples.append(await p.probe(2.0))
            return samples
        finally:
            await p.aclose()

    with Echo() as old:
        new = Echo("127.0.0.2")
        new.sock.close()  # take the same port on 127.0.0.2
        new.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        new.sock.bind(("127.0.0.2", old.port))
        with new:
            samples = run(scenario())
    assert all(s.ok for s in samples), samples
    assert len(old.received) == 2 and len(new.received) == 1

"""icmp:// probes: echo to 127.0.0.1 and ::1 over ping and raw sockets, timeouts, unreachable, and reply matching.

The kernel answers echo requests on the loopback. Each mode and each loss gets a network namespace of its own (its
own loopback and sysctls), so nothing here changes the host: ping_group_range picks the socket mode,
icmp_echo_ignore_all makes the kernel drop requests, and with no route but the loopback's nothing else is reachable.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

import pytest
import uvloop

from latency_router.probes import icmp
from latency_router.probes.base import EngineCounters, LossReason
from latency_router.probes.icmp import IcmpProber, IcmpSpec, checksum

TARGETS = {socket.AF_INET: "icmp://127.0.0.1", socket.AF_INET6: "icmp://[::1]"}
FAMILY_IDS = {socket.AF_INET: "ipv4", socket.AF_INET6: "ipv6"}
pytestmark = pytest.mark.root  # raw sockets and network namespaces


def prober(url: str, counters: EngineCounters | None = None) -> IcmpProber:
    return IcmpProber(IcmpProber.parse_url(url), counters)


def prepare(netns, mode: str, *, answer: bool = True) -> None:
    """Set the namespace up: loopback up, ping sockets allowed or not, echo answered or ignored."""
    groups = "0 2147483647" if mode == "dgram" else "1 0"
    ignore = "0" if answer else "1"
    netns.sh(
        f"ip link set lo up; echo '{groups}' > /proc/sys/net/ipv4/ping_group_range; "
        f"echo {ignore} > /proc/sys/net/ipv4/icmp_echo_ignore_all; "
        f"echo {ignore} > /proc/sys/net/ipv6/icmp/echo_ignore_all"
    )


@pytest.mark.parametrize(
    "url, host",
    [("icmp://127.0.0.1", "127.0.0.1"), ("icmp://[::1]", "::1"), ("icmp://example.net/", "example.net")],
    ids=["ipv4", "ipv6", "name"],
)
def test_parse_url_accepts(url: str, host: str) -> None:
    assert IcmpProber.parse_url(url) == IcmpSpec(url, host)


@pytest.mark.parametrize(
    "url, message",
    [
        ("icmp://127.0.0.1:7", "icmp://HOST takes no port"),
        ("icmp://127.0.0.1/x", "takes no path, query or user"),
        ("icmp://127.0.0.1?size=9", "takes no path, query or user"),
        ("icmp://1.2.3.4:", "empty port after ':'"),
        ("icmp://a..b", "is neither an IP address nor a host name"),
        ("icmp://", "missing HOST"),
        ("tcp://127.0.0.1", "expected a icmp:// URL"),
    ],
    ids=["port", "path", "query", "empty-port", "empty-label", "no-host", "scheme"],
)
def test_parse_url_rejects(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        IcmpProber.parse_url(url)


def test_checksum_matches_rfc1071_example() -> None:
    # RFC 1071 section 3: these bytes sum to 0xddf2, so the checksum is its complement.
    assert checksum(bytes.fromhex("0001f203f4f5f6f7")) == 0xFFFF - 0xDDF2
    assert checksum(b"\x01") == 0xFFFF - 0x0100  # odd length pads with a zero byte


@pytest.mark.parametrize("family", list(TARGETS), ids=FAMILY_IDS.get)
async def test_echo_on_this_host(family: int) -> None:
    """Whatever mode this host allows; the detail names it."""
    p = prober(TARGETS[family])
    samples = [await p.probe(2.0) for _ in range(3)]
    modes = p.socket_modes
    await p.aclose()
    assert all(s.ok for s in samples), samples
    assert all(0 < s.rtt_ms < 2000 for s in samples if s.rtt_ms is not None)
    assert all(f"{modes[family]} socket, kernel rx timestamp" in s.detail for s in samples)


@pytest.mark.parametrize("family", list(TARGETS), ids=FAMILY_IDS.get)
@pytest.mark.parametrize("mode", ["dgram", "raw"])
def test_echo_in_each_socket_mode(netns, mode: str, family: int) -> None:
    prepare(netns, mode)

    async def scenario():
        p = prober(TARGETS[family])
        try:
            return [await p.probe(2.0) for _ in range(3)], p.socket_modes
        finally:
            await p.aclose()

    samples, modes = netns.run(scenario)
    assert modes == {family: mode}
    assert all(s.ok and f"icmp echo, {mode} socket" in s.detail for s in samples), samples


@pytest.mark.parametrize("family", list(TARGETS), ids=FAMILY_IDS.get)
@pytest.mark.parametrize("mode", ["dgram", "raw"])
def test_timeout_when_echo_is_ignored(netns, mode: str, family: int) -> None:
    prepare(netns, mode, answer=False)

    async def scenario():
        p = prober(TARGETS[family])
        try:
            return await p.probe(0.2)
        finally:
            await p.aclose()

    sample = netns.run(scenario)
    assert sample.loss is LossReason.TIMEOUT, sample
    assert sample.detail == f"no echo reply within 200 ms ({mode} socket)"


@pytest.mark.parametrize("url", ["icmp://192.0.2.1", "icmp://[2001:db8::1]"], ids=["ipv4", "ipv6"])
def test_unreachable_when_there_is_no_route(netns, url: str) -> None:
    """The namespace has only its loopback: no route to a documentation address, and no packet can leave."""
    prepare(netns, "raw")

    async def scenario():
        p = prober(url)
        try:
            return await p.probe(1.0)
        finally:
            await p.aclose()

    sample = netns.run(scenario)
    assert sample.loss is LossReason.UNREACHABLE, sample
    assert "unreachable" in sample.detail.lower()


def test_echo_under_uvloop(netns) -> None:
    prepare(netns, "dgram")

    async def scenario():
        p = prober("icmp://127.0.0.1")
        try:
            return await p.probe(2.0)
        finally:
            await p.aclose()

    sample = netns.run(scenario, loop_factory=uvloop.new_event_loop)
    assert sample.ok, sample


async def test_many_in_flight_share_one_socket_per_family() -> None:
    counters = EngineCounters()
    probers = [prober(TARGETS[f], counters) for f in TARGETS] + [prober("icmp://127.0.0.2", counters)]
    samples = await asyncio.gather(*(p.probe(2.0) for p in probers for _ in range(30)))
    loop = asyncio.get_running_loop()
    shared = icmp._SOCKETS[loop]
    assert set(shared) == {socket.AF_INET, socket.AF_INET6}
    assert shared[socket.AF_INET].users == 2
    for p in probers:
        await p.aclose()
    assert all(s.ok for s in samples), [s for s in samples if not s.ok][:3]
    assert loop not in icmp._SOCKETS or not icmp._SOCKETS[loop]
    assert counters.stray_replies == 0 and counters.duplicate_replies == 0


# --- reply matching, with a hand-made responder ------------------------------------------------------------------

_HEADER = struct.Struct("!BBHHH")
REPLY_TYPE = {socket.AF_INET: 0, socket.AF_INET6: 129}
REQUEST_TYPE = {socket.AF_INET: 8, socket.AF_INET6: 128}
LOOPBACK = {socket.AF_INET: ("127.0.0.1", 0), socket.AF_INET6: ("::1", 0, 0, 0)}


class Responder:
    """A raw socket in the namespace that reads our echo requests and sends back replies of its choosing."""

    def __init__(self, family: int) -> None:
        self.family = family
        proto = socket.IPPROTO_ICMP if family == socket.AF_INET else socket.IPPROTO_ICMPV6
        self.sock = socket.socket(family, socket.SOCK_RAW, proto)
        self.sock.setblocking(False)

    async def request(self) -> tuple[int, int, bytes]:
        """The next echo request seen: (ident, seq, payload)."""
        ident, seq, payload, _ = await self.request_packet()
        return ident, seq, payload

    async def request_packet(self) -> tuple[int, int, bytes, bytes]:
        """The next echo request seen: (ident, seq, payload, the packet as read, with its IPv4 header)."""
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(2):
            while True:
                packet = await loop.sock_recv(self.sock, 2048)
                data = packet[(packet[0] & 0x0F) * 4 :] if self.family == socket.AF_INET else packet
                kind, _, _, ident, seq = _HEADER.unpack_from(data)
                if kind == REQUEST_TYPE[self.family]:
                    return ident, seq, data[_HEADER.size :], packet

    def unreachable(self, packet: bytes) -> None:
        """Send back 'destination unreachable' quoting the request, as a router on the way would."""
        if self.family == socket.AF_INET:
            quoted = packet[: (packet[0] & 0x0F) * 4 + 8]
            message = struct.pack("!BBHI", 3, 1, 0, 0) + quoted  # host unreachable
            message = struct.pack("!BBHI", 3, 1, checksum(message), 0) + quoted
        else:  # a raw ICMPv6 socket reads no IPv6 header: write the one the request had
            loopback = socket.inet_pton(socket.AF_INET6, "::1")
            header = struct.pack("!IHBB", 6 << 28, len(packet), 58, 64) + loopback + loopback
            message = struct.pack("!BBHI", 1, 3, 0, 0) + header + packet[:8]  # address unreachable
        self.sock.sendto(message, LOOPBACK[self.family])

    def reply(self, ident: int, seq: int, payload: bytes) -> None:
        packet = _HEADER.pack(REPLY_TYPE[self.family], 0, 0, ident, seq) + payload
        if self.family == socket.AF_INET:  # the kernel fills ICMPv6 checksums, not ICMP ones
            packet = _HEADER.pack(0, 0, checksum(packet), ident, seq) + payload
        self.sock.sendto(packet, LOOPBACK[self.family])


@pytest.mark.parametrize("family", list(TARGETS), ids=FAMILY_IDS.get)
@pytest.mark.parametrize("mode", ["dgram", "raw"])
def test_only_the_matching_reply_counts(netns, mode: str, family: int) -> None:
    """Wrong ident, wrong seq and wrong payload are not our reply; a repeat is a duplicate, a reply after the
    timeout is late, and a probe nobody answers times out."""
    prepare(netns, mode, answer=False)

    async def scenario():
        counters = EngineCounters()
        responder = Responder(family)
        p = prober(TARGETS[family], counters)
        try:
            probe = asyncio.create_task(p.probe(2.0))
            ident, seq, payload = await responder.request()
            responder.reply(ident ^ 0x5555, seq, payload)  # another program's ping
            responder.reply(ident, seq ^ 0x5555, payload)  # a sequence number we never sent
            responder.reply(ident, seq, b"X" * len(payload))  # our ident and seq, not our payload
            await asyncio.sleep(0.2)
            unanswered_while_wrong = not probe.done()
            responder.reply(ident, seq, payload)
            answered = await probe
            responder.reply(ident, seq, payload)  # the same reply again
            await asyncio.sleep(0.1)
            duplicates = counters.duplicate_replies

            timed_out = await asyncio.gather(p.probe(0.1), responder.request())
            late = timed_out[1]
            responder.reply(*late)
            await asyncio.sleep(0.1)
            return unanswered_while_wrong, answered, duplicates, timed_out[0], counters
        finally:
            await p.aclose()
            responder.sock.close()

    unanswered_while_wrong, answered, duplicates, timed_out, counters = netns.run(scenario)
    assert unanswered_while_wrong
    assert answered.ok, answered
    assert duplicates == 1
    assert timed_out.loss is LossReason.TIMEOUT
    assert counters.late_replies == 1
    assert counters.stray_replies == 1  # the wrong seq; the wrong ident never reaches a ping socket, a raw one skips it


@pytest.mark.parametrize("family", list(TARGETS), ids=FAMILY_IDS.get)
def test_icmp_error_quoting_our_request_is_unreachable(netns, family: int) -> None:
    """A raw socket reads ICMP errors too: one that quotes our ident and seq ends the probe as unreachable."""
    prepare(netns, "raw", answer=False)

    async def scenario():
        responder = Responder(family)
        p = prober(TARGETS[family])
        try:
            probe = asyncio.create_task(p.probe(2.0))
            *_, packet = await responder.request_packet()
            responder.unreachable(packet)
            return await probe
        finally:
            await p.aclose()
            responder.sock.close()

    sample = netns.run(scenario)
    assert sample.loss is LossReason.UNREACHABLE, sample
    assert "ICMP error type" in sample.detail and "(raw socket)" in sample.detail


async def test_a_wall_clock_step_falls_back_to_the_monotonic_rtt(monkeypatch: pytest.MonkeyPatch) -> None:
    """The send time reads 5 s behind the kernel's receive stamp, as after a step of the wall clock: refused."""
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() - 5_000_000_000)
    p = prober("icmp://127.0.0.1")
    try:
        sample = await p.probe(2.0)
    finally:
        await p.aclose()
    assert sample.ok and sample.rtt_ms is not None and sample.rtt_ms < 1000, sample
    assert "the wall clock stepped" in sample.detail


def test_closing_the_socket_under_a_waiting_probe_is_a_lost_sample(netns) -> None:
    """The last user lets go of the shared socket while another probe of it waits: that probe returns a lost
    sample (an error), it does not raise CancelledError into its caller."""
    prepare(netns, "dgram", answer=False)

    async def scenario():
        p = prober("icmp://127.0.0.1")
        waiting = asyncio.create_task(p.probe(5.0))
        await asyncio.sleep(0.2)
        await p.aclose()
        async with asyncio.timeout(5):
            return await waiting

    sample = netns.run(scenario)
    assert sample.loss is LossReason.ERROR, sample
    assert "SocketClosed" in sample.detail and "(dgram socket)" in sample.detail

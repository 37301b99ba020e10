"""dns:// probes against a tiny real nameserver on 127.0.0.1 port 0, written with dnspython, over UDP and TCP."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from collections.abc import AsyncIterator

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import dns.rrset
import pytest
import uvloop

from latency_router.probes.base import EngineCounters, LossReason
from latency_router.probes.dns import DnsProber, DnsSpec

ANSWER = "192.0.2.7"


def respond(wire: bytes) -> bytes | None:
    """The server's whole behaviour: A for ok.test, REFUSED for refused.test, silence for drop.test, else NXDOMAIN."""
    query = dns.message.from_wire(wire)
    question = query.question[0]
    name = question.name.to_text()
    if name == "drop.test.":
        return None
    reply = dns.message.make_response(query)
    if name == "ok.test." and question.rdtype == dns.rdatatype.A:
        reply.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", ANSWER))
    elif name == "refused.test.":
        reply.set_rcode(dns.rcode.REFUSED)
    elif name != "ok.test.":
        reply.set_rcode(dns.rcode.NXDOMAIN)
    return reply.to_wire()


class _Udp(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple) -> None:
        reply = respond(data)
        if reply is not None:
            self.transport.sendto(reply, addr)  # type: ignore[attr-defined]


async def _serve_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            reply = respond(await reader.readexactly(length))
            if reply is None:
                await asyncio.sleep(3600)  # a server that never answers; cancelled at teardown
            writer.write(struct.pack("!H", len(reply)) + reply)
            await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError):
        pass
    finally:
        writer.close()


@pytest.fixture
async def nameserver() -> AsyncIterator[int]:
    """UDP and TCP on the same 127.0.0.1 port; yields the port."""
    loop = asyncio.get_running_loop()
    for _ in range(20):  # the UDP port the kernel picks may be taken for TCP: try a few
        transport, _ = await loop.create_datagram_endpoint(_Udp, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        try:
            server = await asyncio.start_server(_serve_tcp, "127.0.0.1", port)
        except OSError:
            transport.close()
            continue
        break
    else:
        pytest.fail("no port free for both UDP and TCP")
    yield port
    transport.close()
    server.close()


def prober(url: str) -> DnsProber:
    return DnsProber(DnsProber.parse_url(url))


@pytest.mark.parametrize(
    "url, server, port, name, rdtype, tcp",
    [
        ("dns://127.0.0.1/ok.test", "127.0.0.1", 53, "ok.test.", dns.rdatatype.A, False),
        ("dns://127.0.0.1:5353/ok.test.?type=aaaa", "127.0.0.1", 5353, "ok.test.", dns.rdatatype.AAAA, False),
        ("dns://[::1]:53/example.com?type=MX&tcp=1", "::1", 53, "example.com.", dns.rdatatype.MX, True),
        ("dns://ns.example.net/a.b?tcp=0", "ns.example.net", 53, "a.b.", dns.rdatatype.A, False),
    ],
    ids=["default", "port-type", "ipv6-tcp", "named-server"],
)
def test_parse_url_accepts(url: str, server: str, port: int, name: str, rdtype: int, tcp: bool) -> None:
    assert DnsProber.parse_url(url) == DnsSpec(url, server, port, dns.name.from_text(name), rdtype, tcp)


@pytest.mark.parametrize(
    "url, message",
    [
        ("dns://127.0.0.1", r"dns://SERVER\[:PORT\]/NAME needs a NAME"),
        ("dns://127.0.0.1/", r"needs a NAME"),
        ("dns://127.0.0.1/ok.test?type=BOGUS", "unknown record type 'BOGUS'"),
        ("dns://127.0.0.1/ok.test?tcp=maybe", "tcp='maybe' must be 1 or 0"),
        ("dns://127.0.0.1/ok.test?class=IN", "unknown option 'class'"),
        ("dns://127.0.0.1:70000/ok.test", "the port must be a number"),
        ("dns:///ok.test", "missing HOST"),
        ("dns://127.0.0.1/" + "a" * 64 + ".test", "invalid NAME"),
        ("dns://127.0.0.1/ok.test?tcp=1&tcp=0", "'tcp' given twice"),
        ("dns://a..b/ok.test", "is neither an IP address nor a host name"),
    ],
    ids=["no-name", "empty-name", "type", "tcp-flag", "option", "port", "no-server", "label-too-long", "tcp-twice",
         "empty-label"],
)
def test_parse_url_rejects(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        DnsProber.parse_url(url)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_answer(nameserver: int, transport: str) -> None:
    flag = "?tcp=1" if transport == "tcp" else ""
    sample = await prober(f"dns://127.0.0.1:{nameserver}/ok.test{flag}").probe(2.0)
    assert sample.ok, sample
    assert sample.kind == "dns" and sample.rtt_ms is not None and 0 < sample.rtt_ms < 2000
    assert sample.phases_ms is not None and sample.rtt_ms == sample.phases_ms["query"]
    assert sample.detail.startswith(f"query over {transport}") and sample.detail.endswith("1 answer rrsets")
    assert "kernel rx timestamp" in sample.detail  # for tcp too: the first segment of the answer is stamped
    if transport == "tcp":
        assert sample.phases_ms["connect"] > 0


def test_answer_under_uvloop() -> None:
    async def scenario() -> tuple:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(_Udp, local_addr=("127.0.0.1", 0))
        port = transport.get_extra_info("sockname")[1]
        try:
            return await prober(f"dns://127.0.0.1:{port}/ok.test").probe(2.0), await prober(
                f"dns://127.0.0.1:{port}/nope.test"
            ).probe(2.0)
        finally:
            transport.close()

    good, bad = uvloop.run(scenario())
    assert good.ok and bad.loss is LossReason.BAD_STATUS, (good, bad)


@pytest.mark.parametrize("transport", ["udp", "tcp"])
@pytest.mark.parametrize("name, rcode", [("nope.test", "NXDOMAIN"), ("refused.test", "REFUSED")])
async def test_bad_rcode(nameserver: int, transport: str, name: str, rcode: str) -> None:
    flag = "?tcp=1" if transport == "tcp" else ""
    sample = await prober(f"dns://127.0.0.1:{nameserver}/{name}{flag}").probe(2.0)
    assert sample.loss is LossReason.BAD_STATUS, sample
    assert sample.detail == f"rcode {rcode}"


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_timeout_when_the_server_never_answers(nameserver: int, transport: str) -> None:
    flag = "?tcp=1" if transport == "tcp" else ""
    sample = await prober(f"dns://127.0.0.1:{nameserver}/drop.test{flag}").probe(0.3)
    assert sample.loss is LossReason.TIMEOUT, sample
    assert "300 ms" in sample.detail


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        return placeholder.getsockname()[1]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_refused_when_nothing_listens(transport: str) -> None:
    flag = "?tcp=1" if transport == "tcp" else ""
    sample = await prober(f"dns://127.0.0.1:{_free_port()}/ok.test{flag}").probe(2.0)
    assert sample.loss is LossReason.REFUSED, sample


async def test_junk_and_foreign_replies_are_skipped_and_counted() -> None:
    """A server that first sends junk and an answer to another query id: neither is taken for ours."""

    class Noisy(_Udp):
        def datagram_received(self, data: bytes, addr: tuple) -> None:
            self.transport.sendto(b"\x00" * 5, addr)  # type: ignore[attr-defined]
            query = dns.message.from_wire(data)
            query.id ^= 0xFFFF
            self.transport.sendto(respond(query.to_wire()), addr)  # type: ignore[attr-defined]
            if "junk-only" not in query.question[0].name.to_text():
                super().datagram_received(data, addr)

    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Noisy, local_addr=("127.0.0.1", 0))
    counters = EngineCounters()
    try:
        port = transport.get_extra_info("sockname")[1]
        good = await DnsProber(DnsProber.parse_url(f"dns://127.0.0.1:{port}/ok.test"), counters).probe(1.0)
        lost = await DnsProber(DnsProber.parse_url(f"dns://127.0.0.1:{port}/junk-only.test"), counters).probe(0.3)
    finally:
        transport.close()
    assert good.ok, good
    assert lost.loss is LossReason.TIMEOUT, lost
    assert counters.stray_replies == 4


async def test_many_queries_in_flight_each_get_their_answer(nameserver: int) -> None:
    p = prober(f"dns://127.0.0.1:{nameserver}/ok.test")
    samples = await asyncio.gather(*(p.probe(2.0) for _ in range(50)))
    assert all(s.ok for s in samples), [s for s in samples if not s.ok][:3]


@pytest.mark.parametrize("transport", ["udp", "tcp"])
async def test_a_wall_clock_step_falls_back_to_the_monotonic_rtt(nameserver: int, transport: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The send time reads 5 s behind the kernel's receive stamp, as after a step of the wall clock: the kernel RTT
    is bounded by the monotonic one measured around it, and refused."""
    real = time.time_ns
    monkeypatch.setattr(time, "time_ns", lambda: real() - 5_000_000_000)
    flag = "?tcp=1" if transport == "tcp" else ""
    sample = await prober(f"dns://127.0.0.1:{nameserver}/ok.test{flag}").probe(2.0)
    assert sample.ok and sample.rtt_ms is not None and sample.rtt_ms < 1000, sample
    assert "the wall clock stepped" in sample.detail


async def test_tcp_answer_split_over_segments_is_read_whole() -> None:
    """A server that writes the length, then the message in two parts: the reader puts them together."""

    async def split(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
        reply = respond(await reader.readexactly(length))
        for part in (struct.pack("!H", len(reply)), reply[:5], reply[5:]):
            writer.write(part)
            await writer.drain()
            await asyncio.sleep(0.02)
        writer.close()

    server = await asyncio.start_server(split, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        sample = await prober(f"dns://127.0.0.1:{port}/ok.test?tcp=1").probe(2.0)
    finally:
        server.close()
    assert sample.ok and sample.detail.endswith("1 answer rrsets"), sample

"""dns://SERVER[:PORT]/NAME[?type=A&tcp=1]: one query (built and parsed by dnspython); the RTT is its exchange time."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass
from typing import ClassVar

import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from latency_router.probes.base import EngineCounters, LossReason, Sample, wall_now
from latency_router.probes.common import (
    CLOCK_KERNEL,
    RX_CMSG_SPACE,
    AddressCache,
    DropCounter,
    enable_rx_timestamps,
    loss_of_exception,
    pair_rtt,
    parse_flag,
    query_options,
    read_rx_cmsgs,
    split_target,
)

_OPTIONS = ("type", "tcp")
_LENGTH = struct.Struct("!H")  # DNS over TCP: each message is preceded by its length
_READS_PER_WAKEUP = 16
_CLOCK_WORDS = {
    CLOCK_KERNEL: "kernel rx timestamp",
    "user": "user-space timer in the read callback (no kernel rx timestamp)",
    "stepped": "user-space timer in the read callback (the wall clock stepped during the probe)",
}
_Exchange = tuple[dns.message.Message, dict[str, float], str]  # the response, the phases in ms, how it was timed


@dataclass(frozen=True, slots=True)
class DnsSpec:
    """A parsed dns:// target: the server to ask and the question."""

    url: str
    server: str
    port: int
    qname: dns.name.Name
    rdtype: dns.rdatatype.RdataType
    tcp: bool


class DnsProber:
    """Asks SERVER for NAME once per probe over UDP (or TCP) and times the exchange."""

    kind: ClassVar[str] = "dns"

    def __init__(self, spec: DnsSpec, counters: EngineCounters | None = None) -> None:
        self.spec = spec
        self.url = spec.url
        self.counters = counters
        socktype = socket.SOCK_STREAM if spec.tcp else socket.SOCK_DGRAM
        self._address = AddressCache(spec.server, spec.port, socktype)

    @classmethod
    def parse_url(cls, url: str) -> DnsSpec:
        """Validate dns://SERVER[:PORT]/NAME[?type=A&tcp=1] without opening anything."""
        parts = split_target(url, "dns")
        name = parts.path.lstrip("/")
        if not name:
            raise ValueError("dns://SERVER[:PORT]/NAME needs a NAME to query")
        try:
            qname = dns.name.from_text(name)
        except dns.exception.DNSException as exc:
            raise ValueError(f"{url!r}: invalid NAME {name!r}: {exc}") from None
        if parts.username is not None or parts.password is not None or parts.fragment:
            raise ValueError(f"{url!r}: dns://SERVER[:PORT]/NAME takes no user, password or fragment")
        options = query_options(url, parts.query, _OPTIONS, f"expected: {', '.join(_OPTIONS)}")
        try:
            rdtype = dns.rdatatype.from_text(options.get("type", "A").upper())
        except (dns.exception.DNSException, ValueError):  # ValueError: TYPE99999, out of range
            raise ValueError(f"{url!r}: unknown record type {options['type']!r}") from None
        tcp = parse_flag(url, "tcp", options["tcp"]) if "tcp" in options else False
        return DnsSpec(url=url, server=parts.hostname, port=parts.port or 53, qname=qname, rdtype=rdtype, tcp=tcp)

    async def probe(self, timeout_s: float) -> Sample:
        """One query; a timeout, a refusal or any rcode other than NOERROR is a lost Sample."""
        spec = self.spec
        sent_at = wall_now()
        try:
            async with asyncio.timeout(timeout_s):
                family, sockaddr = await self._address.first()
                query = dns.message.make_query(spec.qname, spec.rdtype)
                exchange = self._tcp if spec.tcp else self._udp
                response, phases, clock = await exchange(query, family, sockaddr)
        except Exception as exc:  # noqa: BLE001 - one bad target is a lost sample, never an exception
            self._address.refresh_soon()  # the name may point elsewhere by now (rate-limited)
            reason, detail = loss_of_exception(exc, f"no answer within {timeout_s * 1e3:g} ms", (TimeoutError, dns.exception.Timeout))
            return Sample.lost(self.url, self.kind, sent_at, reason, detail)
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            return Sample.lost(self.url, self.kind, sent_at, LossReason.BAD_STATUS, f"rcode {dns.rcode.to_text(rcode)}")
        how = "tcp, on the open connection (the connect phase includes event-loop delay)" if spec.tcp else "udp"
        detail = f"query over {how}, {_CLOCK_WORDS[clock]}, {len(response.answer)} answer rrsets"
        return Sample(self.url, self.kind, sent_at, rtt_ms=phases["query"], detail=detail, phases_ms=phases)

    async def _udp(self, query: dns.message.Message, family: int, sockaddr: tuple) -> _Exchange:
        # dnspython only builds and parses: the exchange is ours, so that the RTT is the kernel's receive timestamp
        # minus time.time_ns() just before send, untouched by event-loop lag and by the parse.
        loop = asyncio.get_running_loop()
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            enable_rx_timestamps(sock)
            sock.connect(sockaddr)  # connected: a port-unreachable answer surfaces as refused
            done: asyncio.Future[tuple[int, int, dns.message.Message]] = loop.create_future()
            drops = DropCounter()
            loop.add_reader(sock.fileno(), self._on_readable, sock, query, done, drops)
            try:
                wire = query.to_wire()
                send_perf_ns, send_ns = time.perf_counter_ns(), time.time_ns()
                sock.send(wire)
                rx_ns, rx_perf_ns, response = await done
            finally:
                loop.remove_reader(sock.fileno())
        finally:
            sock.close()
        rtt_ns, clock = pair_rtt(rx_ns, send_ns, send_perf_ns, rx_perf_ns)
        return response, {"query": rtt_ns / 1e6}, clock

    def _on_readable(self, sock: socket.socket, query: dns.message.Message, done: asyncio.Future,
                     drops: DropCounter) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                data, ancdata, _flags, _addr = sock.recvmsg(65535, RX_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ECONNREFUSED from an ICMP port unreachable
                if not done.done():
                    done.set_exception(exc)
                return
            perf_ns = time.perf_counter_ns()
            rx_ns, dropped = read_rx_cmsgs(ancdata)
            if dropped is not None and self.counters is not None:
                self.counters.socket_drops += drops.delta(dropped)
            try:
                response = dns.message.from_wire(data)
                ours = query.is_response(response)
            except dns.exception.DNSException:
                ours = False
            if not ours:  # junk or another query's answer: keep waiting for ours
                if self.counters is not None:
                    self.counters.stray_replies += 1
                continue
            if not done.done():
                done.set_result((rx_ns, perf_ns, response))
            elif self.counters is not None:
                self.counters.duplicate_replies += 1

    async def _tcp(self, query: dns.message.Message, family: int, sockaddr: tuple) -> _Exchange:
        # Over TCP the RTT is the query on the open connection, timed as over UDP: the kernel's receive timestamp of
        # the reply's first segment against the wall-clock send time. The connect is a phase beside it (timed
        # around an await, so it includes event-loop delay), as http's is.
        loop = asyncio.get_running_loop()
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setblocking(False)
            enable_rx_timestamps(sock)
            start = time.perf_counter_ns()
            await loop.sock_connect(sock, sockaddr)
            connected = time.perf_counter_ns()
            wire = query.to_wire()
            done: asyncio.Future[tuple[int, int, bytes]] = loop.create_future()
            reader = _TcpReader(sock, done)
            loop.add_reader(sock.fileno(), reader.on_readable)
            try:
                send_perf_ns, send_ns = time.perf_counter_ns(), time.time_ns()
                await loop.sock_sendall(sock, _LENGTH.pack(len(wire)) + wire)
                rx_ns, rx_perf_ns, data = await done
            finally:
                loop.remove_reader(sock.fileno())
        finally:
            sock.close()
        response = dns.message.from_wire(data)
        if not query.is_response(response):
            raise dns.exception.FormError("the answer over tcp does not match the query")
        rtt_ns, clock = pair_rtt(rx_ns, send_ns, send_perf_ns, rx_perf_ns)
        return response, {"connect": (connected - start) / 1e6, "query": rtt_ns / 1e6}, clock

    async def aclose(self) -> None:
        """Nothing to release: each probe closes its own socket."""


class _TcpReader:
    """Reads one length-prefixed DNS message off a TCP socket, stamping the arrival of its first bytes."""

    __slots__ = ("sock", "done", "buf", "rx_ns", "perf_ns")

    def __init__(self, sock: socket.socket, done: asyncio.Future) -> None:
        self.sock, self.done = sock, done
        self.buf = bytearray()
        self.rx_ns = self.perf_ns = 0

    def on_readable(self) -> None:
        if self.done.done():
            return
        try:
            data, ancdata, _flags, _addr = self.sock.recvmsg(65535 + _LENGTH.size, RX_CMSG_SPACE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.done.set_exception(exc)
            return
        if not self.buf:  # the reply's first segment: its arrival is what the RTT ends on
            self.perf_ns = time.perf_counter_ns()
            self.rx_ns = read_rx_cmsgs(ancdata)[0]
        if not data:
            self.done.set_exception(ConnectionResetError("the server closed the connection without an answer"))
            return
        self.buf += data
        if len(self.buf) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(self.buf)
            if len(self.buf) >= _LENGTH.size + length:
                self.done.set_result((self.rx_ns, self.perf_ns, bytes(self.buf[_LENGTH.size : _LENGTH.size + length])))


__all__ = ["DnsProber", "DnsSpec"]

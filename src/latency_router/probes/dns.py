"""dns://SERVER[:PORT]/NAME[?type=A&tcp=1]: one query (built and parsed by dnspython); the RTT is its exchange time."""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from dataclasses import dataclass
from typing import ClassVar
from urllib.parse import parse_qsl

import dns.asyncbackend
import dns.asyncquery
import dns.exception
import dns.message
import dns.name
import dns.rcode
import dns.rdatatype

from latency_router.probes.base import EngineCounters, LossReason, Sample, wall_now
from latency_router.probes.common import describe, loss_of_oserror, parse_flag, resolve, split_target

_OPTIONS = ("type", "tcp")
_TIMESPEC = struct.Struct("@qq")
_SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_CMSG_SPACE = socket.CMSG_SPACE(_TIMESPEC.size)
_READS_PER_WAKEUP = 16
_Exchange = tuple[dns.message.Message, dict[str, float]]  # the response and the phases in milliseconds


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
        self._backend = dns.asyncbackend.get_backend("asyncio")

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
        options: dict[str, str] = {}
        for key, value in parse_qsl(parts.query, keep_blank_values=True):
            if key not in _OPTIONS:
                raise ValueError(f"{url!r}: unknown option {key!r} (expected: {', '.join(_OPTIONS)})")
            options[key] = value
        try:
            rdtype = dns.rdatatype.from_text(options.get("type", "A").upper())
        except dns.exception.DNSException:
            raise ValueError(f"{url!r}: unknown record type {options['type']!r}") from None
        tcp = parse_flag(url, "tcp", options["tcp"]) if "tcp" in options else False
        return DnsSpec(url=url, server=parts.hostname, port=parts.port or 53, qname=qname, rdtype=rdtype, tcp=tcp)

    async def probe(self, timeout_s: float) -> Sample:
        """One query; a timeout, a refusal or any rcode other than NOERROR is a lost Sample."""
        spec = self.spec
        sent_at = wall_now()
        try:
            async with asyncio.timeout(timeout_s):
                family, sockaddr = await resolve(spec.server, spec.port, socket.SOCK_DGRAM)
                query = dns.message.make_query(spec.qname, spec.rdtype)
                exchange = self._tcp if spec.tcp else self._udp
                response, phases = await exchange(query, family, sockaddr[0])
        except (TimeoutError, dns.exception.Timeout):
            return self._lost(sent_at, LossReason.TIMEOUT, f"no answer within {timeout_s * 1e3:g} ms")
        except OSError as exc:
            return self._lost(sent_at, loss_of_oserror(exc), describe(exc))
        except Exception as exc:  # noqa: BLE001 - one bad target is a lost sample, never an exception
            return self._lost(sent_at, LossReason.ERROR, describe(exc))
        rcode = response.rcode()
        if rcode != dns.rcode.NOERROR:
            return self._lost(sent_at, LossReason.BAD_STATUS, f"rcode {dns.rcode.to_text(rcode)}")
        how = "tcp, on the open connection" if spec.tcp else "udp, kernel rx timestamp"
        detail = f"query over {how}, {len(response.answer)} answer rrsets"
        return Sample(self.url, self.kind, sent_at, rtt_ms=phases["query"], detail=detail, phases_ms=phases)

    async def _udp(self, query: dns.message.Message, family: int, where: str) -> _Exchange:
        # Over UDP the exchange is ours and dnspython only builds and parses: the RTT is then the kernel's receive
        # timestamp minus time.time_ns() just before send, untouched by event-loop lag and by the parse.
        loop = asyncio.get_running_loop()
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.SOL_SOCKET, _SO_TIMESTAMPNS, 1)
            sock.connect((where, self.spec.port))  # connected: a port-unreachable answer surfaces as refused
            done: asyncio.Future[tuple[int | None, int, dns.message.Message]] = loop.create_future()
            loop.add_reader(sock.fileno(), self._on_readable, sock, query, done)
            try:
                wire = query.to_wire()
                send_ns, send_perf_ns = time.time_ns(), time.perf_counter_ns()
                sock.send(wire)
                rx_ns, rx_perf_ns, response = await done
            finally:
                loop.remove_reader(sock.fileno())
        finally:
            sock.close()
        if rx_ns is not None and rx_ns >= send_ns:
            return response, {"query": (rx_ns - send_ns) / 1e6}
        return response, {"query": (rx_perf_ns - send_perf_ns) / 1e6}  # no timestamp, or the wall clock stepped

    def _on_readable(self, sock: socket.socket, query: dns.message.Message, done: asyncio.Future) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                data, ancdata, _flags, _addr = sock.recvmsg(65535, _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # e.g. ECONNREFUSED from an ICMP port unreachable
                if not done.done():
                    done.set_exception(exc)
                return
            perf_ns = time.perf_counter_ns()
            rx_ns = None
            for level, kind, cdata in ancdata:
                if level == socket.SOL_SOCKET and kind == _SO_TIMESTAMPNS and len(cdata) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(cdata)
                    rx_ns = sec * 1_000_000_000 + nsec
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

    async def _tcp(self, query: dns.message.Message, family: int, where: str) -> _Exchange:
        # Over TCP the RTT is the query on the open connection; the connect is a phase beside it, as http's is.
        start = time.perf_counter_ns()
        sock = await self._backend.make_socket(family, socket.SOCK_STREAM, 0, None, (where, self.spec.port))
        connected = time.perf_counter_ns()
        async with sock:
            response = await dns.asyncquery.tcp(query, where, port=self.spec.port, sock=sock)
            done = time.perf_counter_ns()
        return response, {"connect": (connected - start) / 1e6, "query": (done - connected) / 1e6}

    def _lost(self, sent_at: float, reason: LossReason, detail: str) -> Sample:
        return Sample.lost(self.url, self.kind, sent_at, reason, detail)

    async def aclose(self) -> None:
        """Nothing to release: each probe closes its own socket."""


__all__ = ["DnsProber", "DnsSpec"]

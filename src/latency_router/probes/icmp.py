"""icmp://HOST: ICMP / ICMPv6 echo; the RTT pairs time.time_ns() at send with the kernel's receive timestamp."""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import os
import random
import socket
import struct
import time
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from typing import ClassVar

from latency_router.probes.base import EngineCounters, Sample, wall_now
from latency_router.probes.common import (
    CLOCK_KERNEL,
    CLOCK_USER,
    RX_CMSG_SPACE,
    AddressCache,
    DropCounter,
    enable_rx_timestamps,
    loss_of_exception,
    pair_rtt,
    read_rx_cmsgs,
    split_target,
)

_HEADER = struct.Struct("!BBHHH")  # type, code, checksum, identifier, sequence
_CLOCK_WORDS = {CLOCK_KERNEL: "kernel rx timestamp", CLOCK_USER: "userspace rx timestamp"}
_STEPPED_WORDS = "userspace rx timestamp (the wall clock stepped during the probe)"
_READS_PER_WAKEUP = 256  # bounded so that a flood cannot hold the loop
_RECENT = 4096  # finished sequence numbers remembered to tell late and duplicate replies from strays


@dataclass(frozen=True, slots=True)
class _Family:
    """What differs between ICMP and ICMPv6."""

    family: int
    proto: int
    echo_request: int
    echo_reply: int
    errors: frozenset[int]  # types that carry our request back: unreachable, time exceeded
    inner_ip_len: int | None  # None: read the IPv4 header length from the packet


_V4 = _Family(socket.AF_INET, socket.IPPROTO_ICMP, 8, 0, frozenset({3, 11}), None)
_V6 = _Family(socket.AF_INET6, socket.IPPROTO_ICMPV6, 128, 129, frozenset({1, 3}), 40)


def checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071) of data."""
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def open_icmp_socket(family: int) -> tuple[socket.socket, str]:
    """An unprivileged ping socket where net.ipv4.ping_group_range allows it, else a raw socket (CAP_NET_RAW)."""
    proto = _V4.proto if family == socket.AF_INET else _V6.proto
    try:
        return socket.socket(family, socket.SOCK_DGRAM, proto), "dgram"
    except OSError as exc:
        if exc.errno not in (errno.EACCES, errno.EPERM, errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
            raise
    try:
        return socket.socket(family, socket.SOCK_RAW, proto), "raw"
    except PermissionError:
        raise PermissionError(
            errno.EPERM,
            "icmp needs a ping socket (add this group to net.ipv4.ping_group_range) or CAP_NET_RAW for a raw socket",
        ) from None


class SocketClosed(Exception):
    """The echo socket closed while a probe waited on it (its last user let go, or the loop changed)."""


class _Pending:
    __slots__ = ("future", "addr", "send_ns", "send_perf_ns", "counters", "answered")

    def __init__(self, future: asyncio.Future, addr: str, counters: EngineCounters | None) -> None:
        self.future = future
        self.addr = addr
        self.counters = counters
        self.send_ns = 0
        self.send_perf_ns = 0
        self.answered = False


class EchoSocket:
    """One ICMP socket per (event loop, address family), shared by every icmp prober on that loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop, family: int) -> None:
        self.loop = loop
        self.f = _V4 if family == socket.AF_INET else _V6
        self.sock, self.mode = open_icmp_socket(family)
        self.users = 0
        self.counters: EngineCounters | None = None  # where replies nobody asked for are counted
        self._waiting: dict[int, _Pending] = {}
        self._recent: OrderedDict[int, _Pending] = OrderedDict()
        self._drops = DropCounter()
        self._token = os.urandom(8)
        self._payload = self._token + b"latency-router"
        self._seq = random.randrange(1 << 16)
        try:
            self.sock.setblocking(False)
            enable_rx_timestamps(self.sock)
            if self.mode == "dgram":
                # The kernel owns the identifier of a ping socket (its "port") and routes replies by it.
                self.sock.bind(("::", 0, 0, 0) if family == socket.AF_INET6 else ("0.0.0.0", 0))
                self.ident = self.sock.getsockname()[1]
            else:
                self.ident = random.randrange(1, 1 << 16)
                self._filter_raw()
            loop.add_reader(self.sock.fileno(), self._on_readable)
        except BaseException:
            self.sock.close()
            raise

    def _filter_raw(self) -> None:
        # A raw socket sees every ICMP packet of the host: let the kernel keep only echo replies and errors.
        wanted = {self.f.echo_reply, *self.f.errors}
        if self.f is _V4:
            blocked = ~sum(1 << t for t in wanted) & 0xFFFFFFFF
            self.sock.setsockopt(255, 1, struct.pack("=I", blocked))  # SOL_RAW, ICMP_FILTER
        else:
            words = [0xFFFFFFFF] * 8
            for t in wanted:
                words[t >> 5] &= ~(1 << (t & 31))
            self.sock.setsockopt(socket.IPPROTO_ICMPV6, 1, struct.pack("=8I", *words))  # ICMP6_FILTER

    def _next_seq(self) -> int:
        for _ in range(1 << 16):
            self._seq = (self._seq + 1) & 0xFFFF
            if self._seq not in self._waiting:
                self._recent.pop(self._seq, None)
                return self._seq
        raise OSError(errno.ENOBUFS, "all 65536 ICMP sequence numbers are in flight")

    async def echo(self, sockaddr: tuple, counters: EngineCounters | None) -> tuple[int, str]:
        """Send one echo request and wait for its reply; returns (RTT in ns, how it was timed)."""
        seq = self._next_seq()
        header = _HEADER.pack(self.f.echo_request, 0, 0, self.ident, seq)
        packet = header + self._payload
        if self.f is _V4:  # the kernel fills the ICMPv6 checksum itself (and any ping socket's)
            packet = _HEADER.pack(self.f.echo_request, 0, checksum(packet), self.ident, seq) + self._payload
        pending = _Pending(self.loop.create_future(), str(ipaddress.ip_address(sockaddr[0])), counters)
        self._waiting[seq] = pending
        try:
            # perf first, then wall: the monotonic RTT then spans the kernel one, which pair_rtt bounds by it
            pending.send_perf_ns = time.perf_counter_ns()
            pending.send_ns = time.time_ns()
            self.sock.sendto(packet, sockaddr)
            return await pending.future
        finally:
            del self._waiting[seq]
            if not pending.future.done():
                pending.future.cancel()
            self._recent[seq] = pending
            while len(self._recent) > _RECENT:
                self._recent.popitem(last=False)

    def _on_readable(self) -> None:
        for _ in range(_READS_PER_WAKEUP):
            try:
                data, ancdata, _flags, src = self.sock.recvmsg(2048, RX_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an error queued on the socket (e.g. a ping socket's ICMP error): nothing to match it to
            perf_ns = time.perf_counter_ns()
            rx_ns, drops = read_rx_cmsgs(ancdata)
            if drops is not None:
                delta = self._drops.delta(drops)
                if self.counters is not None:
                    self.counters.socket_drops += delta
            self._handle(data, src[0], rx_ns, perf_ns)

    def _handle(self, data: bytes, src: str, rx_ns: int, perf_ns: int) -> None:
        if self.mode == "raw" and self.f is _V4:
            data = data[(data[0] & 0x0F) * 4 :] if data else data  # a raw IPv4 socket hands over the IP header too
        if len(data) < _HEADER.size:
            return
        icmp_type, code, _, ident, seq = _HEADER.unpack_from(data)
        if icmp_type == self.f.echo_reply:
            if ident == self.ident and data[_HEADER.size : _HEADER.size + len(self._token)] == self._token:
                self._reply(seq, src, rx_ns, perf_ns)
            # else: another program's ping, seen by a raw socket: none of our business
        elif icmp_type in self.f.errors:
            self._error(data, icmp_type, code, src)

    def _reply(self, seq: int, src: str, rx_ns: int, perf_ns: int) -> None:
        pending = self._waiting.get(seq)
        if pending is not None and pending.addr == src and not pending.future.done():
            pending.answered = True
            rtt_ns, clock = pair_rtt(rx_ns, pending.send_ns, pending.send_perf_ns, perf_ns)
            pending.future.set_result((rtt_ns, _CLOCK_WORDS.get(clock, _STEPPED_WORDS)))
            return
        finished = self._recent.get(seq)
        if finished is not None and finished.addr == src:
            counters = finished.counters or self.counters
            if counters is not None:
                if finished.answered:
                    counters.duplicate_replies += 1
                else:
                    counters.late_replies += 1
            finished.answered = True  # a second copy of a late reply is a duplicate
        elif self.counters is not None:
            self.counters.stray_replies += 1

    def _error(self, data: bytes, icmp_type: int, code: int, src: str) -> None:
        # The error quotes our request: its IP header, then the first 8 bytes of our ICMP header.
        inner = data[_HEADER.size :]
        ip_len = self.f.inner_ip_len if self.f.inner_ip_len is not None else (inner[0] & 0x0F) * 4 if inner else 0
        quoted = inner[ip_len:]
        if len(quoted) < _HEADER.size:
            return
        q_type, _, _, q_ident, q_seq = _HEADER.unpack_from(quoted)
        pending = self._waiting.get(q_seq)
        if q_type == self.f.echo_request and q_ident == self.ident and pending and not pending.future.done():
            text = f"ICMP error type {icmp_type} code {code} from {src}"
            pending.future.set_exception(OSError(errno.EHOSTUNREACH, text))

    def close(self) -> None:
        """Stop reading and close the socket; probes still waiting end with an error (never a cancellation)."""
        try:
            self.loop.remove_reader(self.sock.fileno())
        except (RuntimeError, ValueError, OSError):
            pass  # the loop is already closed
        for pending in self._waiting.values():
            if not pending.future.done() and not self.loop.is_closed():
                pending.future.set_exception(SocketClosed("the shared ICMP socket was closed before the reply"))
        self.sock.close()


_SOCKETS: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, EchoSocket]] = weakref.WeakKeyDictionary()


def acquire(family: int, counters: EngineCounters | None) -> EchoSocket:
    """The running loop's shared echo socket for a family, opened on first use; pair with release()."""
    loop = asyncio.get_running_loop()
    per_loop = _SOCKETS.setdefault(loop, {})
    endpoint = per_loop.get(family)
    if endpoint is None:
        endpoint = per_loop[family] = EchoSocket(loop, family)
    endpoint.users += 1
    if counters is not None:
        endpoint.counters = counters
    return endpoint


def release(endpoint: EchoSocket) -> None:
    """Drop one user of an echo socket; the last one closes it."""
    endpoint.users -= 1
    if endpoint.users <= 0:
        per_loop = _SOCKETS.get(endpoint.loop, {})
        if per_loop.get(endpoint.f.family) is endpoint:
            del per_loop[endpoint.f.family]
        endpoint.close()


@dataclass(frozen=True, slots=True)
class IcmpSpec:
    """A parsed icmp:// target."""

    url: str
    host: str


class IcmpProber:
    """Sends one ICMP echo request per probe to HOST and waits for the matching reply."""

    kind: ClassVar[str] = "icmp"

    def __init__(self, spec: IcmpSpec, counters: EngineCounters | None = None) -> None:
        self.spec = spec
        self.url = spec.url
        self.counters = counters
        self._endpoints: dict[int, EchoSocket] = {}
        self._address = AddressCache(spec.host, 0, socket.SOCK_DGRAM)

    @classmethod
    def parse_url(cls, url: str) -> IcmpSpec:
        """Validate icmp://HOST without opening anything."""
        parts = split_target(url, "icmp")
        if parts.port is not None or parts.netloc.endswith(":"):
            raise ValueError(f"{url!r}: icmp://HOST takes no port")
        if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username is not None or "?" in url:
            raise ValueError(f"{url!r}: icmp://HOST takes no path, query or user")
        return IcmpSpec(url=url, host=parts.hostname)

    def _endpoint(self, family: int) -> EchoSocket:
        endpoint = self._endpoints.get(family)
        if endpoint is not None and endpoint.loop is not asyncio.get_running_loop():
            release(endpoint)  # probed from another loop before: that loop's socket is of no use here
            endpoint = None
        if endpoint is None:
            endpoint = self._endpoints[family] = acquire(family, self.counters)
        return endpoint

    @property
    def socket_modes(self) -> dict[int, str]:
        """The socket mode ('dgram' or 'raw') of each family this prober has used."""
        return {family: e.mode for family, e in self._endpoints.items()}

    async def probe(self, timeout_s: float) -> Sample:
        """One echo; no matching reply within timeout_s is a lost Sample, an ICMP error is unreachable."""
        sent_at = wall_now()
        mode = "socket not open"
        try:
            async with asyncio.timeout(timeout_s):
                family, sockaddr = await self._address.first()
                endpoint = self._endpoint(family)
                mode = f"{endpoint.mode} socket"
                rtt_ns, clock = await endpoint.echo(sockaddr, self.counters)
        except Exception as exc:  # noqa: BLE001 - one bad target is a lost sample, never an exception
            self._address.refresh_soon()  # the name may point elsewhere by now (rate-limited)
            reason, detail = loss_of_exception(exc, f"no echo reply within {timeout_s * 1e3:g} ms")
            return Sample.lost(self.url, self.kind, sent_at, reason, f"{detail} ({mode})")
        return Sample(self.url, self.kind, sent_at, rtt_ms=rtt_ns / 1e6, detail=f"icmp echo, {mode}, {clock}")

    async def aclose(self) -> None:
        """Release this prober's share of the echo sockets."""
        endpoints, self._endpoints = list(self._endpoints.values()), {}
        for endpoint in endpoints:
            release(endpoint)


__all__ = ["EchoSocket", "IcmpProber", "IcmpSpec", "SocketClosed", "acquire", "checksum", "open_icmp_socket", "release"]

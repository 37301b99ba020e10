"""udp://HOST:PORT[?size=N]: echo probes on one connected socket; the RTT is the kernel's receive timestamp minus
the wall-clock send time (a user-space timer where the platform has no kernel timestamps)."""

from __future__ import annotations

import asyncio
import errno
import math
import os
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter_ns, time_ns
from typing import ClassVar

from latency_router.probes.base import EngineCounters, LossReason, Sample
from latency_router.probes.common import (
    CLOCK_KERNEL,
    GENERIC_LINUX,
    CLOCK_USER,
    RX_CMSG_SPACE,
    SO_TIMESTAMPNS,
    AddressCache,
    DropCounter,
    describe,
    enable_option,
    enable_rx_timestamps,
    loss_of_oserror,
    pair_rtt,
    query_options,
    read_rx_cmsgs,
    split_target,
)

# The payload: magic, this prober's random id, sequence number, wall-clock send time (ns); padded with zeros to size.
MAGIC = b"LRu1"
HEADER = struct.Struct("!4s8sQq")
_SEQ_TIME = struct.Struct("!Qq")  # the per-probe part of HEADER, written at offset 12
DEFAULT_SIZE = 64
MAX_SIZE = 65507  # the largest UDP payload over IPv4
DEFAULT_RCVBUF = 4 << 20  # bytes asked for (the kernel doubles it): thousands of small replies, each ~1 KiB of truesize

SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if GENERIC_LINUX else None)
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55 if GENERIC_LINUX else None)
IP_RECVERR = getattr(socket, "IP_RECVERR", 11 if sys.platform == "linux" else None)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25 if sys.platform == "linux" else None)
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", None)

_MEMINFO = struct.Struct("@9I")  # SK_MEMINFO_*: the last one, SK_MEMINFO_DROPS, is the counter SO_RXQ_OVFL reports
_EXTENDED_ERR = struct.Struct("@IBBBBII")  # struct sock_extended_err: ee_errno first
_ANC_ERR_SIZE = socket.CMSG_SPACE(_EXTENDED_ERR.size + 28) + 64
_SOL_SOCKET = socket.SOL_SOCKET
_RECVERR_CMSGS = {(socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)}

_DRAIN_MAX = 4096  # datagrams read per wake-up before other callbacks get their turn
_MIN_SWEEP_S = 0.001

# What the sequence ring remembers of each recent seq, so that a reply without a waiting probe is told apart.
_RING = 1 << 17
_RING_MASK = _RING - 1
_PENDING, _ANSWERED, _EXPIRED, _LATE_ANSWERED = 0, 1, 2, 3

DETAIL_KERNEL = "echo round trip: kernel receive timestamp minus wall-clock send time"
DETAIL_USER = "echo round trip: user-space timer (no kernel receive timestamp)"
DETAIL_STEPPED = "echo round trip: user-space timer (the wall clock stepped during the probe)"
_DETAIL = {CLOCK_KERNEL: DETAIL_KERNEL, CLOCK_USER: DETAIL_USER}

ResultCallback = Callable[[int, int, "int | None", "LossReason | None", str], None]
"""Bulk-path completion: (seq, sent_wall_ns, rtt_ns or None, loss reason or None, detail)."""


@dataclass(frozen=True, slots=True)
class UdpSpec:
    """A parsed udp:// target: where to send and how large each probe datagram is."""

    url: str
    host: str
    port: int
    size: int = DEFAULT_SIZE


def parse_udp_url(url: str, *, allow_port_zero: bool = False) -> tuple[str, int, dict[str, str]]:
    """(host, port, query) of udp://HOST:PORT[?...], validated; ValueError in the URL's own words."""
    parts = split_target(url, "udp", allow_port_zero=allow_port_zero)
    if parts.port is None:
        raise ValueError("udp://HOST:PORT needs a port")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r}: udp://HOST:PORT takes no user or password")
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError(f"{url!r}: udp://HOST:PORT takes no path or fragment")
    return parts.hostname, parts.port, query_options(url, parts.query, None)  # type: ignore[return-value]


def set_rcvbuf(sock: socket.socket, size_bytes: int) -> int:
    """Ask for a receive buffer of size_bytes (SO_RCVBUFFORCE when allowed, above rmem_max); returns what the kernel gave."""
    if SO_RCVBUFFORCE is not None:
        try:
            sock.setsockopt(_SOL_SOCKET, SO_RCVBUFFORCE, size_bytes)
            return sock.getsockopt(_SOL_SOCKET, socket.SO_RCVBUF)
        except OSError:
            pass  # not root (no CAP_NET_ADMIN): the plain option, capped by net.core.rmem_max
    try:
        sock.setsockopt(_SOL_SOCKET, socket.SO_RCVBUF, size_bytes)
    except OSError:
        pass
    return sock.getsockopt(_SOL_SOCKET, socket.SO_RCVBUF)


class UdpProber:
    """Echo probes to one HOST:PORT over one socket, any number in flight, each matched to its reply by sequence."""

    kind: ClassVar[str] = "udp"

    def __init__(self, spec: UdpSpec, counters: EngineCounters | None = None, *, rcvbuf_bytes: int = DEFAULT_RCVBUF) -> None:
        self.spec = spec
        self.url = spec.url
        self.counters = counters if counters is not None else EngineCounters()
        self.rcvbuf_bytes = rcvbuf_bytes
        self.kernel_timestamps = False  # set when the socket opens
        self.rcvbuf_effective = 0
        self._id = os.urandom(8)
        self._next_seq = 0
        self._state = bytearray(_RING)
        self._pending: dict[int, tuple] = {}  # seq -> (future | None, callback | None, sent_wall_ns, sent_perf_ns, timeout_ns)
        self._deadlines: dict[int, deque[tuple[int, int]]] = {}  # timeout_ns -> (deadline_perf_ns, seq), in send order
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0
        self._tx = bytearray(spec.size)
        HEADER.pack_into(self._tx, 0, MAGIC, self._id, 0, 0)
        self._rx = bytearray(max(spec.size, HEADER.size))
        self._rx_bufs = [self._rx]
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._opening: asyncio.Task | None = None
        self._recverr = False
        self._recover_scheduled = False
        self._drops = DropCounter()
        self._address = AddressCache(spec.host, spec.port, socket.SOCK_DGRAM)
        self._peer: tuple[int, tuple] | None = None  # (family, sockaddr) the socket is connected to

    @classmethod
    def parse_url(cls, url: str) -> UdpSpec:
        """Validate udp://HOST:PORT[?size=N] without opening anything."""
        host, port, query = parse_udp_url(url)
        size = DEFAULT_SIZE
        for key, value in query.items():
            if key != "size":
                raise ValueError(f"{url!r}: unknown option {key!r} (udp:// takes size=N)")
            if not (value.isascii() and value.isdigit()):
                raise ValueError(f"{url!r}: size must be a whole number of bytes, got {value!r}")
            size = int(value)
            if not HEADER.size <= size <= MAX_SIZE:
                raise ValueError(
                    f"{url!r}: size must be within {HEADER.size}..{MAX_SIZE} bytes (the probe header takes {HEADER.size})")
        return UdpSpec(url=url, host=host, port=port, size=size)

    # ----- opening and closing

    @property
    def in_flight(self) -> int:
        """Probes sent and neither answered nor timed out yet."""
        return len(self._pending)

    async def open(self) -> None:
        """Resolve the target and open the socket on the running loop (probe() does it on first use)."""
        loop = asyncio.get_running_loop()
        while self._sock is None or self._loop is not loop:
            task = self._opening
            if task is None or task.get_loop() is not loop:
                task = self._opening = loop.create_task(self._open(loop))
            try:
                await asyncio.shield(task)
            finally:
                if task.done() and self._opening is task:
                    self._opening = None  # a failed open is retried by the next probe

    async def _open(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sock is not None:
            self._close_socket(LossReason.ERROR, "the event loop changed")
        family, addr = await self._address.first()
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            self.rcvbuf_effective = set_rcvbuf(sock, self.rcvbuf_bytes)
            self.kernel_timestamps = enable_rx_timestamps(sock)
            if MSG_ERRQUEUE is not None:
                v6 = family == socket.AF_INET6
                level, option = (socket.IPPROTO_IPV6, IPV6_RECVERR) if v6 else (socket.IPPROTO_IP, IP_RECVERR)
                self._recverr = enable_option(sock, level, option)
            sock.connect(addr)  # the kernel then drops datagrams from anyone else, and reports ICMP errors to us
            loop.add_reader(sock.fileno(), self._on_readable)
        except BaseException:
            sock.close()
            raise
        self._sock, self._loop, self._peer, self._drops = sock, loop, (family, addr), DropCounter()

    def _follow_address(self) -> None:
        """Point the socket at the target's current address once a background lookup changed it."""
        addresses = self._address.cached()  # also starts the periodic refresh when it is due
        if not addresses or addresses[0] == self._peer or self._sock is None:
            return
        family, addr = addresses[0]
        if self._peer is not None and family == self._peer[0]:
            try:
                self._sock.connect(addr)
            except OSError:
                return  # keep the old address; the next refresh tries again
            self._peer = addresses[0]
        else:  # another family needs another socket: the next open makes it
            self._close_socket(LossReason.ERROR, f"the address of {self.spec.host!r} changed family")

    async def aclose(self) -> None:
        """Close the socket; probes still in flight end as lost (ERROR, prober closed)."""
        self._close_socket(LossReason.ERROR, "prober closed")

    def _close_socket(self, reason: LossReason, detail: str) -> None:
        sock, loop = self._sock, self._loop
        self._sock = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        loop_alive = loop is not None and not loop.is_closed()
        if sock is not None:
            self._poll_drops(sock)  # one last look at the drop counter before the socket goes
            if loop_alive:
                loop.remove_reader(sock.fileno())
            sock.close()
        self._deadlines.clear()
        pending, self._pending = self._pending, {}
        for seq, entry in pending.items():
            self._state[seq & _RING_MASK] = _EXPIRED
            if loop_alive:  # the waiters of a closed loop are gone with it
                self._deliver(entry, seq, None, reason, detail)

    # ----- sending

    async def probe(self, timeout_s: float) -> Sample:
        """Send one echo request and return its Sample; lost with TIMEOUT, REFUSED, UNREACHABLE or ERROR, never raises."""
        if not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ValueError("the timeout must be a positive, finite number of seconds")
        loop = asyncio.get_running_loop()
        if self._sock is not None and self._loop is loop and not self._address.literal:
            self._follow_address()
        if self._sock is None or self._loop is not loop:
            started = time_ns()
            try:
                async with asyncio.timeout(timeout_s):
                    await self.open()
            except TimeoutError:
                detail = f"could not resolve {self.spec.host!r} within {timeout_s * 1e3:g} ms"
                return Sample.lost(self.url, self.kind, started / 1e9, LossReason.TIMEOUT, detail)
            except OSError as exc:
                return Sample.lost(self.url, self.kind, started / 1e9, loss_of_oserror(exc), describe(exc))
        fut = loop.create_future()
        seq = self._send(int(timeout_s * 1e9), fut, None)
        try:
            seq, sent_wall, rtt_ns, loss, detail = await fut
        finally:
            if not fut.done() or fut.cancelled():
                # The caller gave up first: forget the probe, and count its reply as late should it come.
                if self._pending.pop(seq, None) is not None:
                    self._state[seq & _RING_MASK] = _EXPIRED
        if loss is None:
            return Sample(self.url, self.kind, sent_wall / 1e9, rtt_ms=rtt_ns / 1e6, detail=detail, seq=seq)
        self._address.refresh_soon()  # the name may point elsewhere by now (rate-limited; never for an IP literal)
        return Sample.lost(self.url, self.kind, sent_wall / 1e9, loss, detail, seq=seq)

    def send_probe(self, timeout_s: float, on_result: ResultCallback) -> int:
        """Bulk path: send one probe now (the socket must be open) and return its seq; on_result gets its outcome."""
        return self._send(int(timeout_s * 1e9), None, on_result)

    def send_many(self, count: int, timeout_s: float, on_result: ResultCallback) -> int:
        """Bulk path: send count probes back to back; each outcome reaches on_result from the loop. Returns the first seq."""
        first = self._next_seq
        timeout_ns = int(timeout_s * 1e9)
        send = self._send
        for _ in range(count):
            send(timeout_ns, None, on_result)
        return first

    def _send(self, timeout_ns: int, fut: asyncio.Future | None, cb: ResultCallback | None) -> int:
        sock = self._sock
        if sock is None:
            raise RuntimeError("the UdpProber is not open: await open() first")
        if timeout_ns <= 0:
            raise ValueError("the timeout must be positive")
        seq = self._next_seq
        self._next_seq = seq + 1
        tx = self._tx
        sent_perf = perf_counter_ns()
        sent_wall = time_ns()  # wall clock, to pair with the kernel's CLOCK_REALTIME receive timestamp
        _SEQ_TIME.pack_into(tx, 12, seq, sent_wall)
        try:
            sock.send(tx)
        except OSError as exc:
            failure = self._send_failed(exc, tx)
            if failure is not None:
                self._state[seq & _RING_MASK] = _EXPIRED
                self._deliver((fut, cb, sent_wall, sent_perf, timeout_ns), seq, None, *failure)
                return seq
        self._state[seq & _RING_MASK] = _PENDING
        self._pending[seq] = (fut, cb, sent_wall, sent_perf, timeout_ns)
        deadline = sent_perf + timeout_ns
        queue = self._deadlines.get(timeout_ns)
        if queue is None:
            queue = self._deadlines[timeout_ns] = deque()
        queue.append((deadline, seq))
        if self._timer is None or deadline < self._timer_at:
            self._arm(deadline, sent_perf)
        return seq

    def _send_failed(self, exc: OSError, tx: bytearray) -> tuple[LossReason, str] | None:
        """A failed send: retry once when the error was an earlier datagram's ICMP report; else this probe's loss."""
        self.counters.extra["udp_send_errors"] = self.counters.extra.get("udp_send_errors", 0) + 1
        if exc.errno in (errno.EAGAIN, errno.ENOBUFS):
            return LossReason.ERROR, describe(exc)
        self._schedule_recovery()  # a pending socket error means an ICMP report is queued: read it
        try:
            self._sock.send(tx)  # type: ignore[union-attr]
        except OSError as again:
            return loss_of_oserror(again), describe(again)
        return None

    @staticmethod
    def _deliver(entry: tuple, seq: int, rtt_ns: int | None, loss: LossReason | None, detail: str) -> None:
        fut, cb, sent_wall = entry[0], entry[1], entry[2]
        if fut is not None:
            if not fut.done():
                fut.set_result((seq, sent_wall, rtt_ns, loss, detail))
            return
        try:
            cb(seq, sent_wall, rtt_ns, loss, detail)
        except Exception as exc:  # noqa: BLE001 - a caller's bug must not stop the reader for every other probe
            asyncio.get_running_loop().call_exception_handler(
                {"message": "UdpProber result callback failed", "exception": exc})

    # ----- receiving

    def _on_readable(self) -> None:
        """Drain the socket until EAGAIN (bounded): match each reply to its probe by seq."""
        sock = self._sock
        if sock is None:
            return
        recv_into, bufs, rx = sock.recvmsg_into, self._rx_bufs, self._rx
        unpack, header_size, my_id = HEADER.unpack_from, HEADER.size, self._id
        pending, state, counters = self._pending, self._state, self.counters
        got = 0
        troubled = False
        for _ in range(_DRAIN_MAX):
            try:
                n, ancdata, _flags, _addr = recv_into(bufs, RX_CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:
                troubled = True
                self._on_socket_error(exc)
                if self._sock is None:
                    return
                continue
            now = perf_counter_ns()
            got += 1
            rx_ns, drops = read_rx_cmsgs(ancdata)
            if drops is not None:
                counters.socket_drops += self._drops.delta(drops)
            if n < header_size:
                counters.stray_replies += 1
                continue
            magic, rid, seq, _ = unpack(rx)
            if magic != MAGIC or rid != my_id:
                counters.stray_replies += 1
                continue
            entry = pending.pop(seq, None)
            if entry is None:
                self._unexpected(seq)
                continue
            rtt, clock = pair_rtt(rx_ns, entry[2], entry[3], now)
            detail = _DETAIL.get(clock, DETAIL_STEPPED)
            if rtt > entry[4]:
                # Past its timeout (the timer had not fired yet): a late reply, and the probe is lost, as promised.
                state[seq & _RING_MASK] = _LATE_ANSWERED
                counters.late_replies += 1
                self._deliver(entry, seq, None, LossReason.TIMEOUT, self._timeout_detail(entry[4], rtt))
                continue
            state[seq & _RING_MASK] = _ANSWERED
            fut = entry[0]
            if fut is not None:
                if not fut.done():
                    fut.set_result((seq, entry[2], rtt, None, detail))
            else:
                self._deliver(entry, seq, rtt, None, detail)
        if (got == 0 or troubled) and self._recverr:
            # A wake-up with nothing to read is the error queue calling (EPOLLERR): read it, or it calls forever.
            if self._drain_error_queue() or troubled:
                self._schedule_recovery()

    def _unexpected(self, seq: int) -> None:
        """A well-formed reply with no probe waiting: late (its probe timed out), duplicate, or stray."""
        counters = self.counters
        if seq >= self._next_seq:
            counters.stray_replies += 1
        elif self._next_seq - seq > _RING:
            counters.late_replies += 1  # older than the ring remembers: it can only be very late
        else:
            slot = seq & _RING_MASK
            if self._state[slot] == _EXPIRED:
                self._state[slot] = _LATE_ANSWERED
                counters.late_replies += 1
            else:
                counters.duplicate_replies += 1

    def _poll_drops(self, sock: socket.socket) -> None:
        """Read the drop counter directly: SO_RXQ_OVFL only tells on the next datagram the socket manages to queue."""
        if SO_MEMINFO is None:
            return
        try:
            raw = sock.getsockopt(_SOL_SOCKET, SO_MEMINFO, _MEMINFO.size)
        except OSError:
            return
        if len(raw) >= _MEMINFO.size:
            self.counters.socket_drops += self._drops.delta(_MEMINFO.unpack_from(raw)[8])

    def _on_socket_error(self, exc: OSError) -> None:
        """An ICMP report surfaced as an exception: with IP_RECVERR the error queue says which probe; else all pending."""
        if self._recverr:
            self._drain_error_queue()
            return
        reason, detail = loss_of_oserror(exc), describe(exc)
        for seq in list(self._pending):
            entry = self._pending.pop(seq)
            self._state[seq & _RING_MASK] = _EXPIRED
            self._deliver(entry, seq, None, reason, detail)

    def _drain_error_queue(self) -> int:
        """Read the queued ICMP reports (IP_RECVERR); each quotes our datagram, so the loss lands on its own probe."""
        sock = self._sock
        handled = 0
        while sock is not None and handled < _DRAIN_MAX:
            try:
                data, ancdata, _flags, _addr = sock.recvmsg(HEADER.size, _ANC_ERR_SIZE, MSG_ERRQUEUE)
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                break
            handled += 1
            err = 0
            for level, kind, cdata in ancdata:
                if (level, kind) in _RECVERR_CMSGS and len(cdata) >= _EXTENDED_ERR.size:
                    err = _EXTENDED_ERR.unpack_from(cdata)[0]
            if len(data) < HEADER.size or err == 0:
                continue
            magic, rid, seq, _ = HEADER.unpack_from(data)
            entry = self._pending.pop(seq, None) if magic == MAGIC and rid == self._id else None
            if entry is None:
                continue
            self._state[seq & _RING_MASK] = _EXPIRED
            self._deliver(entry, seq, None, loss_of_oserror(OSError(err, "")), os.strerror(err))
        return handled

    def _schedule_recovery(self) -> None:
        if not self._recover_scheduled and self._loop is not None and self._sock is not None:
            self._recover_scheduled = True
            self._loop.call_soon(self._recover)

    def _recover(self) -> None:
        """After a socket error: read the error queue, and re-register the reader.

        libuv (uvloop) stops a poll handle on EPOLLERR, which is how a queued ICMP error shows;
        registering again is harmless on the standard loop.
        """
        self._recover_scheduled = False
        sock, loop = self._sock, self._loop
        if sock is None or loop is None:
            return
        if self._recverr:
            self._drain_error_queue()
        loop.remove_reader(sock.fileno())
        loop.add_reader(sock.fileno(), self._on_readable)

    # ----- timeouts

    def _arm(self, deadline_ns: int, now_ns: int) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline_ns
        delay_s = max((deadline_ns - now_ns) / 1e9, _MIN_SWEEP_S)
        self._timer = self._loop.call_later(delay_s, self._sweep)  # type: ignore[union-attr]

    def _sweep(self) -> None:
        """Expire probes whose deadline passed, after reading what the kernel already holds (it may answer them)."""
        self._timer = None
        if self._sock is None:
            return
        self._on_readable()
        if self._sock is None:
            return
        self._poll_drops(self._sock)
        if self._recverr and self._drain_error_queue():
            self._schedule_recovery()
        now = perf_counter_ns()
        pending, state = self._pending, self._state
        earliest = None
        for timeout_ns, queue in list(self._deadlines.items()):
            while queue and queue[0][0] <= now:
                _, seq = queue.popleft()
                entry = pending.pop(seq, None)
                if entry is not None:
                    state[seq & _RING_MASK] = _EXPIRED
                    self._deliver(entry, seq, None, LossReason.TIMEOUT, self._timeout_detail(timeout_ns))
            if queue:
                if earliest is None or queue[0][0] < earliest:
                    earliest = queue[0][0]
            else:
                del self._deadlines[timeout_ns]
        # A callback above may have sent a probe and armed the timer for its (later) deadline: re-arm for ours then.
        if earliest is not None and self._sock is not None and (self._timer is None or earliest < self._timer_at):
            self._arm(earliest, now)

    @staticmethod
    def _timeout_detail(timeout_ns: int, rtt_ns: int | None = None) -> str:
        if rtt_ns is None:
            return f"no reply within {timeout_ns / 1e6:g} ms"
        return f"reply after {rtt_ns / 1e6:.3f} ms, past the {timeout_ns / 1e6:g} ms timeout"


__all__ = ["DEFAULT_SIZE", "HEADER", "MAGIC", "SO_TIMESTAMPNS", "ResultCallback", "UdpProber", "UdpSpec", "parse_udp_url",
           "set_rcvbuf"]

"""udp://HOST:PORT[?size=N]: echo probes on one connected socket; the RTT is the kernel's receive timestamp minus
the wall-clock send time (a user-space timer where the platform has no kernel timestamps)."""

from __future__ import annotations

import asyncio
import errno
import os
import platform
import re
import socket
import struct
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from time import perf_counter_ns, time_ns
from typing import ClassVar
from urllib.parse import parse_qsl, urlsplit

from latency_router.probes.base import EngineCounters, LossReason, Sample
from latency_router.probes.common import describe, ip_literal, loss_of_oserror, resolve

# The payload: magic, this prober's random id, sequence number, wall-clock send time (ns); padded with zeros to size.
MAGIC = b"LRu1"
HEADER = struct.Struct("!4s8sQq")
_SEQ_TIME = struct.Struct("!Qq")  # the per-probe part of HEADER, written at offset 12
DEFAULT_SIZE = 64
MAX_SIZE = 65507  # the largest UDP payload over IPv4
DEFAULT_RCVBUF = 4 << 20  # bytes asked for (the kernel doubles it): thousands of small replies, each ~1 KiB of truesize

# Socket options by number: Python's socket module lacks them. The values are asm-generic Linux; a few
# architectures (alpha, mips, parisc, sparc) number them differently, and there we go without.
_GENERIC_LINUX = sys.platform == "linux" and platform.machine().lower() in (
    "x86_64", "amd64", "i386", "i686", "aarch64", "arm64", "armv7l", "armv8l", "riscv64", "ppc64le", "ppc64", "s390x",
    "loongarch64")
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35 if _GENERIC_LINUX else None)
SO_RXQ_OVFL = getattr(socket, "SO_RXQ_OVFL", 40 if _GENERIC_LINUX else None)
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33 if _GENERIC_LINUX else None)
SO_MEMINFO = getattr(socket, "SO_MEMINFO", 55 if _GENERIC_LINUX else None)
IP_RECVERR = getattr(socket, "IP_RECVERR", 11 if sys.platform == "linux" else None)
IPV6_RECVERR = getattr(socket, "IPV6_RECVERR", 25 if sys.platform == "linux" else None)
MSG_ERRQUEUE = getattr(socket, "MSG_ERRQUEUE", None)

_TIMESPEC = struct.Struct("@ll")  # struct timespec of SCM_TIMESTAMPNS (time_t and long are both native long)
_U32 = struct.Struct("@I")
_MEMINFO = struct.Struct("@9I")  # SK_MEMINFO_*: the last one, SK_MEMINFO_DROPS, is the counter SO_RXQ_OVFL reports
_EXTENDED_ERR = struct.Struct("@IBBBBII")  # struct sock_extended_err: ee_errno first
_ANC_SIZE = socket.CMSG_SPACE(_TIMESPEC.size) + socket.CMSG_SPACE(_U32.size) + 64
_ANC_ERR_SIZE = socket.CMSG_SPACE(_EXTENDED_ERR.size + 28) + 64
_SOL_SOCKET = socket.SOL_SOCKET
_RECVERR_CMSGS = {(socket.IPPROTO_IP, IP_RECVERR), (socket.IPPROTO_IPV6, IPV6_RECVERR)}

_DRAIN_MAX = 4096  # datagrams read per wake-up before other callbacks get their turn
_CLOCK_SLACK_NS = 1_000_000  # a kernel RTT this far above the monotonic one means the wall clock stepped
_MIN_SWEEP_S = 0.001

# What the sequence ring remembers of each recent seq, so that a reply without a waiting probe is told apart.
_RING = 1 << 17
_RING_MASK = _RING - 1
_PENDING, _ANSWERED, _EXPIRED, _LATE_ANSWERED = 0, 1, 2, 3

DETAIL_KERNEL = "echo round trip: kernel receive timestamp minus wall-clock send time"
DETAIL_USER = "echo round trip: user-space timer (no kernel receive timestamp)"
DETAIL_STEPPED = "echo round trip: user-space timer (the wall clock stepped during the probe)"

_LABEL = r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"^(?=.{{1,253}}\.?$){_LABEL}(\.{_LABEL})*\.?$")

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
    if not isinstance(url, str) or not url.lower().startswith("udp://"):
        raise ValueError(f"expected a udp:// URL, got {url!r}")
    netloc = url[6:].split("/", 1)[0].split("?", 1)[0].split("#", 1)[0]
    if netloc.count(":") > 1 and "[" not in netloc:
        raise ValueError(f"{url!r}: write an IPv6 address in brackets, e.g. udp://[::1]:7007")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        text = "the port must be a number within 1..65535" if "port" in str(exc).lower() else str(exc)
        raise ValueError(f"{url!r}: {text}") from None
    if not parts.hostname:
        raise ValueError(f"{url!r}: missing HOST")
    if port is None:
        raise ValueError("udp://HOST:PORT needs a port")
    if port == 0 and not allow_port_zero:
        raise ValueError(f"{url!r}: the port must be a number within 1..65535")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r}: udp://HOST:PORT takes no user or password")
    if parts.path not in ("", "/") or parts.fragment:
        raise ValueError(f"{url!r}: udp://HOST:PORT takes no path or fragment")
    host = parts.hostname
    if ip_literal(host) is None and not _HOST_NAME.match(host):
        raise ValueError(f"{url!r}: {host!r} is neither an IP address nor a host name")
    query: dict[str, str] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in query:
            raise ValueError(f"{url!r}: {key!r} given twice")
        query[key] = value
    if parts.query and not query:
        raise ValueError(f"{url!r}: cannot read the query {parts.query!r}")
    return host, port, query


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


def _enable(sock: socket.socket, level: int, option: int | None) -> bool:
    if option is None:
        return False
    try:
        sock.setsockopt(level, option, 1)
    except OSError:
        return False
    return True


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
        self._drops_seen = 0

    @classmethod
    def parse_url(cls, url: str) -> UdpSpec:
        """Validate udp://HOST:PORT[?size=N] without opening anything."""
        host, port, query = parse_udp_url(url)
        size = DEFAULT_SIZE
        for key, value in query.items():
            if key != "size":
                raise ValueError(f"{url!r}: unknown option {key!r} (udp:// takes size=N)")
            if not value.isdigit():
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
        family, addr = await resolve(self.spec.host, self.spec.port, socket.SOCK_DGRAM)
        sock = socket.socket(family, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            self.rcvbuf_effective = set_rcvbuf(sock, self.rcvbuf_bytes)
            self.kernel_timestamps = _enable(sock, _SOL_SOCKET, SO_TIMESTAMPNS)
            _enable(sock, _SOL_SOCKET, SO_RXQ_OVFL)
            if MSG_ERRQUEUE is not None:
                v6 = family == socket.AF_INET6
                level, option = (socket.IPPROTO_IPV6, IPV6_RECVERR) if v6 else (socket.IPPROTO_IP, IP_RECVERR)
                self._recverr = _enable(sock, level, option)
            sock.connect(addr)  # the kernel then drops datagrams from anyone else, and reports ICMP errors to us
            loop.add_reader(sock.fileno(), self._on_readable)
        except BaseException:
            sock.close()
            raise
        self._sock, self._loop, self._drops_seen = sock, loop, 0

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
        if not timeout_s > 0:
            raise ValueError("the timeout must be positive")
        loop = asyncio.get_running_loop()
        if self._sock is None or self._loop is not loop:
            started = time_ns()
            try:
                async with asyncio.timeout(timeout_s):
                    await self.open()
            except TimeoutError:
                detail = f"could not resolve {self.spec.host!r} within {timeout_s * 1e3:g} ms"
                return self._lost(started, LossReason.TIMEOUT, detail)
            except OSError as exc:
                return self._lost(started, loss_of_oserror(exc), describe(exc))
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

    def _lost(self, sent_wall_ns: int, reason: LossReason, detail: str) -> Sample:
        return Sample.lost(self.url, self.kind, sent_wall_ns / 1e9, reason, detail)

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
                n, ancdata, _flags, _addr = recv_into(bufs, _ANC_SIZE)
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
            rx_ns = 0
            for level, kind, data in ancdata:
                if level == _SOL_SOCKET:
                    if kind == SO_TIMESTAMPNS:
                        sec, nsec = _TIMESPEC.unpack_from(data)
                        rx_ns = sec * 1_000_000_000 + nsec
                    elif kind == SO_RXQ_OVFL:
                        self._note_drops(_U32.unpack_from(data)[0])
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
            monotonic_rtt = now - entry[3]
            if rx_ns:
                rtt = rx_ns - entry[2]
                if 0 <= rtt <= monotonic_rtt + _CLOCK_SLACK_NS:
                    detail = DETAIL_KERNEL
                else:
                    rtt, detail = monotonic_rtt, DETAIL_STEPPED
            else:
                rtt, detail = monotonic_rtt, DETAIL_USER
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

    def _note_drops(self, total: int) -> None:
        """SO_RXQ_OVFL carries the socket's running drop count (32 bits): add what is new to socket_drops."""
        delta = (total - self._drops_seen) & 0xFFFFFFFF
        if 0 < delta < 1 << 31:
            self.counters.socket_drops += delta
            self._drops_seen = total

    def _poll_drops(self, sock: socket.socket) -> None:
        """Read the drop counter directly: SO_RXQ_OVFL only tells on the next datagram the socket manages to queue."""
        if SO_MEMINFO is None:
            return
        try:
            raw = sock.getsockopt(_SOL_SOCKET, SO_MEMINFO, _MEMINFO.size)
        except OSError:
            return
        if len(raw) >= _MEMINFO.size:
            self._note_drops(_MEMINFO.unpack_from(raw)[8])

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
        if earliest is not None and self._timer is None and self._sock is not None:
            self._arm(earliest, now)

    @staticmethod
    def _timeout_detail(timeout_ns: int, rtt_ns: int | None = None) -> str:
        if rtt_ns is None:
            return f"no reply within {timeout_ns / 1e6:g} ms"
        return f"reply after {rtt_ns / 1e6:.3f} ms, past the {timeout_ns / 1e6:g} ms timeout"


__all__ = ["DEFAULT_SIZE", "HEADER", "MAGIC", "ResultCallback", "UdpProber", "UdpSpec", "parse_udp_url", "set_rcvbuf"]

"""The lab's calibration: plain blocking sockets timed by the kernel, and the statistic that makes an overhead.

Each hold basis has its own cost between the moment a hold is counted from and the moment the reply reaches
its client. The calibration measures it by holding every reply for a known time (zero for the read basis)
and comparing the round trip with the bare one (no rules), so that only the delayer's own cost is subtracted.
"""

from __future__ import annotations

import socket
import struct
import time

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_TIMESPEC = struct.Struct("=qq")
# struct tcp_info (linux/tcp.h): 8 one-byte fields, then 32-bit fields; tcpi_rtt (microseconds) is the 16th
_TCP_INFO = struct.Struct("=8B24I")
_TCPI_RTT = 8 + 15

# What a hold is counted from: the kernel's stamp of the queued packet, the echo request's kernel receive
# stamp, or the moment the delayer read the packet (the fallback, which adds the delayer's wake-up time).
BASES = ("kernel", "echo", "read")
HOLD_NS = 2_000_000  # the calibration hold: long enough that a release sleeps and wakes as a real one does
# The statistic: a low quantile, since noise from other work only adds time; subtracting the low quantile of
# (held - hold) less the low quantile of bare can therefore not make a reply earlier than its delay asks.
QUANTILE = 0.10
MAX_OVERHEAD_US = 1000.0  # a calibration above this measured noise, not the delayer


def quantile(values: list[int] | list[float], q: float) -> float:
    """Nearest-rank quantile of unsorted values (0 for none)."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return float(ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1)))])


def udp_rtts_ns(address: str, port: int, count: int, timeout_s: float = 0.5) -> list[int]:
    """RTTs of `count` sequential UDP echoes: the reply's kernel receive stamp minus time.time_ns() before send."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.settimeout(timeout_s)
    out: list[int] = []
    try:
        s.connect((address, port))
        for i in range(count):
            payload = b"lab-calibration-%08d" % i
            sent = time.time_ns()
            s.send(payload)
            try:
                while True:
                    data, anc, _flags, _addr = s.recvmsg(256, 64)
                    if data == payload:
                        break
            except (socket.timeout, ConnectionRefusedError):
                continue
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= _TIMESPEC.size:
                    sec, nsec = _TIMESPEC.unpack_from(value)
                    out.append(sec * 1_000_000_000 + nsec - sent)
    finally:
        s.close()
    return out


def tcp_rtts_ns(address: str, port: int, count: int, timeout_s: float = 0.5) -> list[int]:
    """Handshake RTTs of `count` sequential connects, as the kernel measured them (TCP_INFO.tcpi_rtt)."""
    option = getattr(socket, "TCP_INFO", 11)
    out: list[int] = []
    for _ in range(count):
        try:
            with socket.create_connection((address, port), timeout=timeout_s) as s:
                raw = s.getsockopt(socket.IPPROTO_TCP, option, _TCP_INFO.size)
                # RST on close: no FIN exchange, no TIME_WAIT left behind by hundreds of probes
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            continue
        if len(raw) >= _TCP_INFO.size:
            rtt_us = _TCP_INFO.unpack_from(raw)[_TCPI_RTT]
            if rtt_us:
                out.append(rtt_us * 1000)
    return out


def overhead_us(held_ns: list[int], bare_ns: list[int], hold_ns: int) -> float:
    """What the delayer adds beyond the hold: low quantile of (held - hold) minus low quantile of bare, clamped."""
    if not held_ns or not bare_ns:
        return 0.0
    extra = (quantile(held_ns, QUANTILE) - hold_ns - quantile(bare_ns, QUANTILE)) / 1e3
    return round(min(MAX_OVERHEAD_US, max(0.0, extra)), 1)


def summary_us(values_ns: list[int]) -> dict[str, float | int]:
    """Count, p10, p50 and p90 in microseconds: what a calibration phase saw."""
    return {"n": len(values_ns), **{f"p{int(q * 100)}": round(quantile(values_ns, q) / 1e3, 1) for q in (0.1, 0.5, 0.9)}}

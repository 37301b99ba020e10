"""Helpers the benchmarks share: the bounded probe driver, error statistics, limits and JSON output."""

from __future__ import annotations

import asyncio
import json
import os
import resource
import socket
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from latency_router.probes.stats import percentile as sorted_percentile

# One probe as the driver sees it, given the worker's index: the measured RTT in milliseconds, or the
# reason it was lost (a short word such as "timeout").
ProbeOnce = Callable[[int], Awaitable[float | str]]


def install_uvloop() -> str:
    """Use uvloop when it is installed (as the daemon does); returns the loop's name."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return "asyncio"
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    return "uvloop"


def require_root(benchmark: str) -> None:
    """Exit with a clear message when not root: the lab's NFQUEUE delayer needs it."""
    if os.geteuid() != 0:
        print(f"{benchmark}: needs root (the lab injects delay with iptables NFQUEUE)", file=sys.stderr)
        raise SystemExit(2)


def raise_nofile(want: int = 65536) -> int:
    """Raise the open-file limit toward `want` (each probe in flight may hold a socket); returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if os.geteuid() == 0 and hard != resource.RLIM_INFINITY and hard < want:
        # Root may lift the hard limit too; an unprivileged run keeps what it has.
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
        except (ValueError, OSError):
            pass
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def free_port(host: str, kind: int = socket.SOCK_DGRAM) -> int:
    """A port that is free on `host` right now (UDP by default)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0-100) with linear interpolation, or None for no values."""
    return sorted_percentile(sorted(values), q) if values else None


def _round(x: float | None, digits: int = 1) -> float | None:
    return None if x is None else round(x, digits)


def error_stats_us(measured_ms: Sequence[float], injected_ms: float) -> dict:
    """Measured minus injected delay, in microseconds: p50, p99 and the mean."""
    errors = [(m - injected_ms) * 1000.0 for m in measured_ms]
    return {
        "p50": _round(percentile(errors, 50)),
        "p99": _round(percentile(errors, 99)),
        "mean": _round(sum(errors) / len(errors)) if errors else None,
    }


@dataclass(slots=True)
class DriveResult:
    """What one driver run brought back: each probe's RTT (None if lost) and the wall time it took."""

    rtts_ms: list[float | None] = field(default_factory=list)
    loss_reasons: Counter = field(default_factory=Counter)
    first_error: str = ""  # the text of the first exception a probe callable raised (counted as lost)
    wall_s: float = 0.0
    stopped_by_time: bool = False

    @property
    def completed(self) -> int:
        return len(self.rtts_ms)

    @property
    def ok_ms(self) -> list[float]:
        return [r for r in self.rtts_ms if r is not None]

    @property
    def loss(self) -> float | None:
        return None if not self.rtts_ms else round(1.0 - len(self.ok_ms) / len(self.rtts_ms), 4)

    @property
    def rate(self) -> float:
        """Completed probes (answered or lost) per second of wall time."""
        return self.completed / self.wall_s if self.wall_s > 0 else 0.0

    def summary(self, injected_ms: float) -> dict:
        """The JSON figure: n, rate, loss and the error against the injected delay."""
        out = {
            "n": self.completed,
            "rate": round(self.rate, 1),
            "loss": self.loss,
            "error_us": error_stats_us(self.ok_ms, injected_ms),
            "wall_s": round(self.wall_s, 3),
        }
        if self.loss_reasons:
            out["loss_reasons"] = dict(self.loss_reasons)
        if self.stopped_by_time:
            out["stopped_by_time"] = True
        if self.first_error:
            out["first_error"] = self.first_error
        return out


async def drive(
    probe_once: ProbeOnce, count: int, concurrency: int, time_limit_s: float, stagger_s: float = 0.0
) -> DriveResult:
    """Run `count` probes with `concurrency` of them outstanding at every moment, stopping early at `time_limit_s`.

    With `stagger_s`, worker i starts i/concurrency of it late, so that replies arrive spread out instead of in bursts.
    """
    result = DriveResult()
    remaining = count
    deadline = time.perf_counter() + time_limit_s

    async def worker(index: int) -> None:
        nonlocal remaining
        if stagger_s > 0:
            await asyncio.sleep(stagger_s * index / concurrency)
        while remaining > 0:
            if time.perf_counter() >= deadline:
                result.stopped_by_time = True
                return
            remaining -= 1
            try:
                outcome = await probe_once(index)
            except Exception as exc:  # a driver-side failure is a lost probe, not a crashed benchmark
                if not result.first_error:
                    result.first_error = f"{type(exc).__name__}: {exc}"
                outcome = "driver_error"
            if isinstance(outcome, str):
                result.loss_reasons[outcome] += 1
                result.rtts_ms.append(None)
            else:
                result.rtts_ms.append(outcome)

    start = time.perf_counter_ns()
    await asyncio.gather(*(worker(i) for i in range(max(1, min(concurrency, count)))))
    result.wall_s = (time.perf_counter_ns() - start) / 1e9
    return result


def ratio(numerator: float | None, denominator: float | None, digits: int = 3) -> float | None:
    """numerator / denominator, or None where either is missing or the denominator is zero."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return round(numerator / denominator, digits)


def parse_int_list(text: str) -> list[int]:
    """`1,100,1000` -> [1, 100, 1000] (for command-line flags)."""
    return [int(part) for part in text.split(",") if part.strip()]


def parse_str_list(text: str) -> list[str]:
    """`udp,tcp` -> ["udp", "tcp"] (for command-line flags)."""
    return [part.strip() for part in text.split(",") if part.strip()]


def loadavg() -> list[float]:
    """The machine's 1, 5 and 15 minute load averages (printed beside results: other work competes with the lab)."""
    return [round(x, 2) for x in os.getloadavg()]


def emit(obj: dict) -> None:
    """Print the benchmark's one JSON object on stdout."""
    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")
    sys.stdout.flush()


def log(benchmark: str, text: str) -> None:
    """Progress on stderr, so stdout stays one JSON object."""
    print(f"[{benchmark}] {text}", file=sys.stderr, flush=True)


def _serve_dns(host: str, port: int, answer: str, ready, stop) -> None:
    """A tiny authoritative DNS server over UDP: every A query gets `answer`; runs until `stop` is set."""
    import select

    import dns.flags
    import dns.message
    import dns.rrset

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((host, port))
    cached: dict[bytes, bytes] = {}
    ready.set()
    try:
        while not stop.is_set():
            # A short select timeout keeps the loop bounded: it re-checks `stop` at least every 0.2 s.
            readable, _, _ = select.select([sock], [], [], 0.2)
            if not readable:
                continue
            for _ in range(256):  # drain what is queued, bounded
                try:
                    wire, peer = sock.recvfrom(4096, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    break
                # Every query after the first of its kind is answered from a cache keyed by everything but its ID,
                # so the server's own time stays a few microseconds and never queues replies.
                body = cached.get(wire[2:])
                if body is None:
                    try:
                        query = dns.message.from_wire(wire)
                    except Exception:  # garbage is dropped, as a real server would
                        continue
                    response = dns.message.make_response(query)
                    response.flags |= dns.flags.AA
                    for question in query.question:
                        response.answer.append(dns.rrset.from_text(question.name, 60, "IN", "A", answer))
                    body = response.to_wire()[2:]
                    if len(cached) < 1024:
                        cached[wire[2:]] = body
                sock.sendto(wire[:2] + body, peer)
    finally:
        sock.close()


class DnsServerProcess:
    """The tiny DNS server in its own process, so its work does not queue behind the probers being measured."""

    def __init__(self, host: str, port: int | None = None, answer: str = "192.0.2.1") -> None:
        import multiprocessing

        self.host = host
        self.port = port or free_port(host)
        self.answer = answer
        ctx = multiprocessing.get_context("spawn")
        self._ready = ctx.Event()
        self._stop = ctx.Event()
        self._proc = ctx.Process(
            target=_serve_dns, args=(host, self.port, answer, self._ready, self._stop), daemon=True, name="bench-dns"
        )

    def start(self, timeout_s: float = 10.0) -> None:
        """Start the server and wait until its socket is bound."""
        self._proc.start()
        if not self._ready.wait(timeout_s):
            self.stop()
            raise RuntimeError(f"DNS server on {self.host}:{self.port} did not start within {timeout_s}s")

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the server and reap its process."""
        self._stop.set()
        self._proc.join(timeout_s)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout_s)


async def probe_ours(prober, timeout_s: float) -> float | str:
    """One probe through the scheduler's guard, as the daemon sends it: the RTT in ms or the loss reason."""
    from latency_router.probes.scheduler import guarded_probe

    sample = await guarded_probe(prober, timeout_s)
    return sample.rtt_ms if sample.ok else str(sample.loss)


def _kernel_drops(stats: dict) -> int:
    kernel = stats.get("kernel_queue", {}) or {}
    return int(kernel.get("queue_dropped", 0) or 0) + int(kernel.get("user_dropped", 0) or 0)


def lab_window(after: dict, before: dict) -> dict:
    """What the lab did during one figure (stats read with reset before it, and after it): lateness, rate, on time.

    The kernel's queue drop counters are totals since the queue was bound, so the window takes their difference.
    """
    from latency_router.lab.lab import ON_TIME_P99_US

    lateness = after.get("lateness_us", {})
    drops = _kernel_drops(after) - _kernel_drops(before)
    p99 = lateness.get("p99_us")
    return {
        "lateness_us": {k: lateness.get(f"{k}_us") for k in ("p50", "p99", "max")},
        "released": lateness.get("count"),
        "delayed_per_s": after.get("delayed_per_s"),
        "kernel_queue_dropped": drops,
        "on_time": p99 is not None and p99 <= ON_TIME_P99_US and drops == 0,
    }


async def lab_settle(lab, within_s: float) -> None:
    """Wait (bounded) until the lab holds no packet, so one figure's tail does not land in the next one's window."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        stats = await asyncio.to_thread(lab.stats)
        if not stats.get("held_now"):
            return
        await asyncio.sleep(0.05)


# Kernel counters that show a figure's traffic was disturbed outside the lab's delayer (system-wide, so work
# running beside the benchmark can move them too).
KERNEL_COUNTERS = {
    ("TcpExt", "ListenOverflows"): "listen_overflows",
    ("TcpExt", "TCPSynRetrans"): "syn_retransmits",
    ("TcpExt", "SyncookiesSent"): "syncookies_sent",
    ("Udp", "RcvbufErrors"): "udp_rcvbuf_errors",
}


def kernel_counters() -> dict[str, int]:
    """The KERNEL_COUNTERS now, from /proc/net/netstat and /proc/net/snmp (empty where unreadable)."""
    out: dict[str, int] = {}
    for path in ("/proc/net/netstat", "/proc/net/snmp"):
        try:
            with open(path) as f:
                lines = f.read().splitlines()
        except OSError:
            continue
        # Each section is two lines: "Prefix: names..." then "Prefix: values...".
        for names, values in zip(lines[::2], lines[1::2]):
            prefix = names.split(":", 1)[0]
            for name, value in zip(names.split()[1:], values.split()[1:]):
                key = KERNEL_COUNTERS.get((prefix, name))
                if key is not None:
                    out[key] = int(value)
    return out


def counters_delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    """after - before for every counter both have."""
    return {k: after[k] - before[k] for k in after if k in before}

"""UDP throughput: sustained echo probes from this one process (uvloop) to the responder in another, for a bounded time.

Prints one JSON object: offered and achieved probes/s, replies, losses, late and duplicate replies, the client socket's
drops (SO_RXQ_OVFL), the kernel's UDP error counters from /proc/net/snmp before and after, and the RTT p50/p99.
As root (with iproute2) it runs in a network namespace of its own, so that /proc/net/snmp counts only its own traffic;
`--netns off` runs it in the current one. Goal: 25,000 probes/s or more (aim 40,000) with zero drops over 60 s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import select
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import emit, install_uvloop, log  # noqa: E402 - the benchmarks directory is put on the path just above

NAME = "udp_throughput"
GOAL_RATE, AIM_RATE = 25_000, 40_000
SNMP_FIELDS = ("InDatagrams", "NoPorts", "InErrors", "OutDatagrams", "RcvbufErrors", "SndbufErrors", "MemErrors")
LISTENING = re.compile(r"listening on udp://127\.0\.0\.1:(\d+)")


def read_udp_snmp() -> dict[str, int]:
    """The Udp: counters of /proc/net/snmp (this network namespace's)."""
    with open("/proc/net/snmp") as f:
        rows = [line.split() for line in f if line.startswith("Udp:")]
    names, values = rows[0][1:], [int(v) for v in rows[1][1:]]
    table = dict(zip(names, values))
    return {k: table[k] for k in SNMP_FIELDS if k in table}


class Responder:
    """The echo responder in a subprocess: `python -m latency_router.probes.responder`, its port read from its banner."""

    def __init__(self, mode: str, cpu: int | None) -> None:
        self.mode, self.cpu = mode, cpu
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.summary = ""

    def start(self, timeout_s: float = 15.0) -> int:
        cmd = [sys.executable, "-m", "latency_router.probes.responder", "--listen", "udp://127.0.0.1:0", "--mode", self.mode]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     preexec_fn=(lambda: os.sched_setaffinity(0, {self.cpu})) if self.cpu is not None else None)
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout_s)
        line = self.proc.stdout.readline() if ready else ""  # the one banner line, flushed once bound
        match = LISTENING.search(line)
        if match is None:
            self.stop()
            raise RuntimeError(f"the responder did not start within {timeout_s:g} s: {line!r} {self.summary}")
        self.port = int(match.group(1))
        return self.port

    def cpu_s(self) -> float | None:
        """The responder's CPU time so far (user + system), from /proc/PID/stat."""
        try:
            with open(f"/proc/{self.proc.pid}/stat") as f:  # type: ignore[union-attr]
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, AttributeError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            _, err = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate(timeout=10)
        self.summary = (err or "").strip().splitlines()[-1] if (err or "").strip() else ""
        self.proc = None

    def echoed(self) -> int | None:
        match = re.search(r"echoing (\d+) datagrams", self.summary)
        return int(match.group(1)) if match else None


def pct(ordered: list[int], q: float) -> float | None:
    """The q-th percentile (nearest rank) of sorted nanoseconds, in milliseconds."""
    if not ordered:
        return None
    return round(ordered[min(len(ordered) - 1, int(q / 100.0 * len(ordered)))] / 1e6, 4)


async def measure(args, port: int) -> dict:
    from latency_router.probes.base import EngineCounters
    from latency_router.probes.udp import UdpProber

    counters = EngineCounters()
    prober = UdpProber(UdpProber.parse_url(f"udp://127.0.0.1:{port}?size={args.size}"), counters)
    await prober.open()
    for _ in range(200):  # warm the path outside the window
        await prober.probe(1.0)
    counters.late_replies = counters.duplicate_replies = counters.stray_replies = counters.socket_drops = 0

    rtts: list[int] = []
    losses: Counter[str] = Counter()
    on_rtt = rtts.append

    def on_result(seq: int, sent_ns: int, rtt_ns: int | None, loss, detail: str) -> None:
        if rtt_ns is not None:
            on_rtt(rtt_ns)
        else:
            losses[str(loss)] += 1

    def on_task(task: asyncio.Task) -> None:
        sample = task.result()
        if sample.ok:
            on_rtt(int(sample.rtt_ms * 1e6))
        else:
            losses[str(sample.loss)] += 1

    loop = asyncio.get_running_loop()
    timeout_s = args.timeout

    def send_tasks(n: int) -> None:
        # The coroutine API as a scheduler would use it: one Task per probe.
        for _ in range(n):
            loop.create_task(prober.probe(timeout_s)).add_done_callback(on_task)

    def send_bulk(n: int) -> None:
        prober.send_many(n, timeout_s, on_result)

    send = send_bulk if args.api == "bulk" else send_tasks

    rate, tick_s = float(args.rate), args.tick_ms / 1000.0
    max_burst = max(1, int(rate * args.max_burst_ms / 1000.0))
    lags: list[float] = []
    snmp_before = read_udp_snmp()
    usage_before = resource.getrusage(resource.RUSAGE_SELF)
    sent = 0
    start = time.perf_counter()
    last = start
    while True:
        now = time.perf_counter()
        elapsed = now - start
        if elapsed >= args.seconds:
            break
        lags.append(now - last - tick_s)
        last = now
        due = int(elapsed * rate) - sent
        if due > 0:
            n = min(due, max_burst)  # after a stall, catch up in bounded bursts rather than one flood
            send(n)
            sent += n
        await asyncio.sleep(tick_s)
    window_s = time.perf_counter() - start
    usage_after = resource.getrusage(resource.RUSAGE_SELF)
    # Let every probe end (answered or timed out) before the counters are read.
    settle_until = time.perf_counter() + args.timeout + 0.5
    while prober.in_flight and time.perf_counter() < settle_until:
        await asyncio.sleep(0.01)
    snmp_after = read_udp_snmp()
    await prober.aclose()

    rtts.sort()
    lags.sort()
    replies = len(rtts)
    lost = sum(losses.values())
    delta = {k: snmp_after[k] - snmp_before.get(k, 0) for k in snmp_after}
    zero_drops = counters.socket_drops == 0 and delta.get("RcvbufErrors", 0) == 0 and delta.get("InErrors", 0) == 0
    achieved = sent / window_s
    return {
        "offered_rate": rate,
        "achieved_rate": round(achieved, 1),
        "reply_rate": round(replies / window_s, 1),
        "seconds": round(window_s, 3),
        "sent": sent,
        "replies": replies,
        "lost": lost,
        "loss_reasons": dict(losses),
        "late_replies": counters.late_replies,
        "duplicate_replies": counters.duplicate_replies,
        "stray_replies": counters.stray_replies,
        "socket_drops": counters.socket_drops,
        "udp_snmp": {"before": snmp_before, "after": snmp_after, "delta": delta},
        "rtt_ms": {"p50": pct(rtts, 50), "p99": pct(rtts, 99), "p999": pct(rtts, 99.9), "max": pct(rtts, 100)},
        "rtt_means": "echo round trip: kernel receive timestamp minus wall-clock send time" if prober.kernel_timestamps
        else "echo round trip: user-space timer",
        "tick_lag_ms": {"p50": pct([int(x * 1e9) for x in lags], 50), "p99": pct([int(x * 1e9) for x in lags], 99),
                        "max": pct([int(x * 1e9) for x in lags], 100)},
        "client": {
            "api": args.api,
            "payload_bytes": args.size,
            "timeout_s": args.timeout,
            "rcvbuf_bytes": prober.rcvbuf_effective,
            "kernel_timestamps": prober.kernel_timestamps,
            "cpu_s": {"user": round(usage_after.ru_utime - usage_before.ru_utime, 2),
                      "sys": round(usage_after.ru_stime - usage_before.ru_stime, 2)},
        },
        "checks": {
            # Sent and answered both count: a rate the responder did not echo back is no rate.
            f"rate_at_least_{GOAL_RATE}": min(achieved, replies / window_s) >= GOAL_RATE * 0.995,
            f"rate_at_least_{AIM_RATE}": min(achieved, replies / window_s) >= AIM_RATE * 0.995,
            "zero_drops": zero_drops,
            "zero_loss": lost == 0,
        },
    }


def run_here(args) -> int:
    loop_name = install_uvloop()
    if args.client_cpu is not None:
        os.sched_setaffinity(0, {args.client_cpu})
    responder = Responder(args.responder_mode, args.responder_cpu)
    port = responder.start()
    log(NAME, f"responder ({args.responder_mode} mode) on 127.0.0.1:{port}; {args.rate:g} probes/s for {args.seconds:g} s")
    cpu_before = responder.cpu_s()
    try:
        result = asyncio.run(measure(args, port))
        cpu_after = responder.cpu_s()
    finally:
        responder.stop()
    out = {
        "benchmark": NAME,
        "loop": loop_name,
        "netns": args.inside_netns,
        **result,
        "responder": {"mode": args.responder_mode, "process": "subprocess", "echoed": responder.echoed(),
                      "cpu_s": None if cpu_before is None or cpu_after is None else round(cpu_after - cpu_before, 2)},
        "goal": {"rate": GOAL_RATE, "aim": AIM_RATE, "zero_drops_over_s": 60},
    }
    emit(out)
    return 0


def run_in_netns(args, argv: list[str]) -> int:
    """Re-run this script inside a fresh network namespace (loopback up), then delete it."""
    name = f"lr-udpbench-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", name], check=True, timeout=10)
    try:
        subprocess.run(["ip", "netns", "exec", name, "ip", "link", "set", "lo", "up"], check=True, timeout=10)
        cmd = ["ip", "netns", "exec", name, sys.executable, str(Path(__file__).resolve()), *argv, "--inside-netns", name]
        return subprocess.run(cmd, timeout=args.seconds + args.timeout + 60).returncode
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False, timeout=10)


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=60.0, help="length of the measured window (default 60)")
    p.add_argument("--rate", type=float, default=float(AIM_RATE), help=f"offered probes per second (default {AIM_RATE})")
    p.add_argument("--timeout", type=float, default=1.0, help="per-probe timeout in seconds (default 1)")
    p.add_argument("--size", type=int, default=64, help="probe payload in bytes (default 64)")
    p.add_argument("--responder-mode", choices=("fast", "dgram"), default="fast", help="the responder's echo loop")
    p.add_argument("--tick-ms", type=float, default=1.0, help="the sender's pacing tick (default 1 ms)")
    p.add_argument("--max-burst-ms", type=float, default=20.0, help="most probes sent in one tick, as ms of the rate")
    p.add_argument("--api", choices=("bulk", "probe"), default="bulk",
                   help="bulk: UdpProber.send_many with a callback; probe: one Task per probe() call")
    p.add_argument("--client-cpu", type=int, default=None, help="pin this process to a CPU")
    p.add_argument("--responder-cpu", type=int, default=None, help="pin the responder to a CPU")
    p.add_argument("--netns", choices=("auto", "on", "off"), default="auto",
                   help="run in a network namespace of its own (auto: when root with iproute2)")
    p.add_argument("--inside-netns", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.seconds <= 0 or args.rate <= 0 or args.timeout <= 0 or args.tick_ms <= 0:
        p.error("--seconds, --rate, --timeout and --tick-ms must be positive")
    return args


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    can_netns = os.geteuid() == 0 and shutil.which("ip") is not None
    if args.inside_netns is None and (args.netns == "on" or (args.netns == "auto" and can_netns)):
        if not can_netns:
            print(f"{NAME}: --netns on needs root and iproute2", file=sys.stderr)
            return 2
        return run_in_netns(args, argv)
    return run_here(args)


if __name__ == "__main__":
    sys.exit(main())

"""The lab's own accuracy: UDP echo RTT error and release lateness at paced packet rates, one lab path per delay.

Prints one JSON object. Needs root for nfqueue mode. The UDP client is a plain paced sender timed with kernel
receive stamps (CLOCK_REALTIME) against time.time_ns() taken just before each send; the TCP figure (one
connect at a time) reads each handshake's TCP_INFO.tcpi_rtt. Both are independent of the lab and of the
project's probes. Every figure also gives the delayer's CPU share, its wake-up (kernel stamp to read) and
which basis its holds were counted from. Every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import select
import socket
import struct
import sys
import time

from latency_router.lab import Lab, LabPathSpec
from latency_router.lab.calibrate import tcp_rtts_ns

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
_PAYLOAD = struct.Struct("!QQ")  # sequence, send time (time.time_ns)
_TS = struct.Struct("=qq")


def _cpu_s(pid: int) -> float:
    """User plus system CPU seconds of one process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def paced_echo(address: str, port: int, rate: float, seconds: float, drain_s: float) -> dict:
    """Send `rate` echoes per second for `seconds`, collect replies for `drain_s` more; RTT errors need the delay."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.connect((address, port))
    s.setblocking(False)
    total = int(rate * seconds)
    rtts_ns: list[int] = []
    seen = set()
    start = time.perf_counter_ns()
    period_ns = 1e9 / rate
    sent = 0
    end_ns = start + int((seconds + drain_s) * 1e9)
    try:
        while time.perf_counter_ns() < end_ns and len(seen) < total:
            now = time.perf_counter_ns()
            while sent < total and start + sent * period_ns <= now:
                try:
                    s.send(_PAYLOAD.pack(sent, time.time_ns()))
                except BlockingIOError:
                    break
                sent += 1
            while True:
                try:
                    data, anc, _flags, _addr = s.recvmsg(64, 64)
                except BlockingIOError:
                    break
                if len(data) != _PAYLOAD.size:
                    continue
                seq, sent_ns = _PAYLOAD.unpack(data)
                for level, kind, value in anc:
                    if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                        sec, nsec = _TS.unpack_from(value)
                        if seq not in seen:
                            seen.add(seq)
                            rtts_ns.append(sec * 1_000_000_000 + nsec - sent_ns)
            wait_ns = (start + sent * period_ns - time.perf_counter_ns()) if sent < total else 5_000_000
            select.select([s], [], [], max(0.0, min(wait_ns, 5_000_000)) / 1e9)
    finally:
        s.close()
    return {"sent": sent, "received": len(seen), "rtts_ns": rtts_ns,
            "send_s": round((min(time.perf_counter_ns(), end_ns) - start) / 1e9, 3)}


def sequential_connects(address: str, port: int, count: int, seconds: float) -> dict:
    """One connect at a time for at most `seconds`: handshake RTTs (tcpi_rtt) in ns."""
    rtts_ns: list[int] = []
    start = time.perf_counter()
    attempts = 0
    while attempts < count and time.perf_counter() - start < seconds:
        attempts += 1
        rtts_ns += tcp_rtts_ns(address, port, 1, timeout_s=2.0)
    return {"sent": attempts, "received": len(rtts_ns), "rtts_ns": rtts_ns,
            "send_s": round(time.perf_counter() - start, 3)}


def _basis_delta(after: dict, before: dict) -> dict:
    """Packets per kind and hold basis within one figure (the lab counts them since its start)."""
    out = {kind: {b: n - before.get(kind, {}).get(b, 0) for b, n in per.items()} for kind, per in after.items()}
    return {kind: {b: n for b, n in per.items() if n} for kind, per in out.items() if any(per.values())}


def _q(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(q * (len(values) - 1) + 0.5))]


async def run(args: argparse.Namespace) -> dict:
    delays_ms = [float(x) for x in args.delays.split(",")]
    rates = [float(x) for x in args.rates.split(",")]
    paths = [LabPathSpec(f"d{i}", "direct", f"{args.address_prefix}.{i + 1}", delay_s=d / 1e3)
             for i, d in enumerate(delays_ms)]
    lab = Lab(paths, mode=args.mode, queue_num=args.queue_num, priority=args.priority)
    figures = []
    await lab.start()
    try:
        info = lab.stats()
        engine_pid = lab.engine_pid  # the delayer's CPU use per figure
        plan = [(path, delay_ms, "udp", rate) for path, delay_ms in zip(paths, delays_ms) for rate in rates]
        if args.tcp_connects:
            plan += [(path, delay_ms, "tcp", None) for path, delay_ms in zip(paths, delays_ms)]
        for path, delay_ms, kind, rate in plan:
            lab.stats(reset=True)
            before = lab.stats()
            cpu0 = _cpu_s(engine_pid) if engine_pid else 0.0
            if kind == "udp":
                res = await asyncio.to_thread(paced_echo, path.address, path.udp_port, rate, args.seconds,
                                              delay_ms / 1e3 + 0.5)
            else:
                res = await asyncio.to_thread(sequential_connects, path.address, path.tcp_port,
                                              args.tcp_connects, args.seconds * 5)
            after = lab.stats()
            cpu1 = _cpu_s(engine_pid) if engine_pid else 0.0
            errors_us = [r / 1e3 - delay_ms * 1e3 for r in res["rtts_ns"]]
            kernel_drops = sum(after["kernel_queue"].get(k, 0) - before["kernel_queue"].get(k, 0)
                               for k in ("queue_dropped", "user_dropped")) if after.get("kernel_queue") else 0
            figures.append({
                "kind": kind,
                "delay_ms": delay_ms,
                "rate_per_s": rate if kind == "udp" else round(res["received"] / max(1e-9, res["send_s"]), 1),
                "in_flight": round(rate * delay_ms / 1e3) if kind == "udp" else 1,
                "sent": res["sent"],
                "received": res["received"],
                "rtt_error_us": {"min": _q(errors_us, 0.0), "p1": _q(errors_us, 0.01), "p50": _q(errors_us, 0.5),
                                 "p99": _q(errors_us, 0.99)},
                "early": sum(1 for e in errors_us if e < 0),
                "lateness_us": after["lateness_us"],
                "wake_us": after.get("read_latency_us"),
                "hold_basis": _basis_delta(after.get("hold_basis", {}), before.get("hold_basis", {})),
                "warm_sends": after.get("warm_sends", 0) - before.get("warm_sends", 0),
                "kernel_queue_dropped": kernel_drops,
                "engine_cpu_share": round((cpu1 - cpu0) / max(1e-9, res["send_s"]), 3),
                "on_time": after["lateness_us"]["p99_us"] <= 500 and kernel_drops == 0,
            })
            print(json.dumps(figures[-1]), file=sys.stderr, flush=True)
            await asyncio.sleep(delay_ms / 1e3 + 0.2)
    finally:
        await lab.stop()
    return {"benchmark": "lab_calibration", "mode": info["mode"], "priority": info["priority"],
            "calibration": info["calibration"], "rtt_error_is": "client RTT (kernel rx stamp) minus the lab's delay",
            "figures": figures}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--delays", default="20,200", help="comma-separated delays in ms, one lab path each")
    p.add_argument("--rates", default="50,100,1000,5000,8000", help="comma-separated echo rates per second")
    p.add_argument("--seconds", type=float, default=3.0, help="sending time per figure")
    p.add_argument("--tcp-connects", type=int, default=200,
                   help="sequential TCP connects per delay (handshake RTT from tcpi_rtt); 0 for none")
    p.add_argument("--mode", default="nfqueue", choices=("nfqueue", "userspace", "auto"))
    p.add_argument("--priority", default="realtime", choices=("realtime", "nice", "normal"))
    p.add_argument("--queue-num", type=int, default=233)
    p.add_argument("--address-prefix", default="127.0.233")
    args = p.parse_args()
    if args.mode == "nfqueue" and os.geteuid() != 0:
        print("lab_calibration: nfqueue mode needs root", file=sys.stderr)
        return 2
    print(json.dumps(asyncio.run(run(args)), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())

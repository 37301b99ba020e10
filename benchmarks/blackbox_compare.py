"""Probe rate and error side by side with Prometheus blackbox_exporter: same driver, same lab targets, same run.

Prints one JSON object. Needs root (the lab's NFQUEUE delayer) and the blackbox_exporter binary. One asyncio
driver runs a bounded number of probes at a fixed concurrency, either through blackbox_exporter's
/probe?module=M&target=T endpoint or through our probers in this process; rate is completed probes per second
of wall time, error is the measured RTT minus the delay the lab injects.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import aiohttp  # noqa: E402

from _common import (  # noqa: E402 - the benchmarks directory is put on the path just above
    DnsServerProcess,
    DriveResult,
    counters_delta,
    drive,
    emit,
    free_port,
    install_uvloop,
    kernel_counters,
    lab_settle,
    loadavg,
    lab_window,
    log,
    parse_int_list,
    parse_str_list,
    probe_ours,
    raise_nofile,
    ratio,
    require_root,
)

NAME = "blackbox_compare"
SHARED_KINDS = ("tcp", "http", "icmp", "dns")  # the kinds both have; blackbox_exporter has no UDP echo
DNS_NAME = "probe.lab."
BLACKBOX_BINARY_NAMES = ("prometheus-blackbox-exporter", "blackbox_exporter")

# The one figure read from blackbox_exporter's metrics for each kind, and what it times.
BLACKBOX_FIGURES: dict[str, tuple[str, str]] = {
    "tcp": (
        "probe_duration_seconds",
        "whole probe (resolve + connect + close): blackbox_exporter exposes no connect-only figure for tcp",
    ),
    "http": (
        'probe_http_duration_seconds{phase="processing"}',
        "request written to first response byte, on the new connection blackbox_exporter opens for every probe",
    ),
    "icmp": ('probe_icmp_duration_seconds{phase="rtt"}', "echo request to echo reply"),
    "dns": (
        'probe_dns_duration_seconds{phase="request"}',
        "query sent to answer received (probe_dns_lookup_time_seconds times resolving the target, not the query)",
    ),
}
OUR_FIGURES = {
    "udp": "echo round trip: kernel receive timestamp minus wall-clock send time",
    "tcp": "TCP_INFO.tcpi_rtt of the handshake",
    "http": "time to first byte on a warm connection",
    "icmp": "echo request to echo reply",
    "dns": "query sent to answer received",
}


def blackbox_config(timeout_s: float, dns_name: str) -> str:
    """blackbox_exporter's YAML: one module per kind both sides have, IPv4 only, as the lab is."""
    ip4 = "      preferred_ip_protocol: ip4\n      ip_protocol_fallback: false\n"
    return (
        "modules:\n"
        f"  tcp:\n    prober: tcp\n    timeout: {timeout_s:g}s\n    tcp:\n{ip4}"
        f"  http:\n    prober: http\n    timeout: {timeout_s:g}s\n    http:\n{ip4}"
        f"  icmp:\n    prober: icmp\n    timeout: {timeout_s:g}s\n    icmp:\n{ip4}"
        f"  dns:\n    prober: dns\n    timeout: {timeout_s:g}s\n    dns:\n{ip4}"
        f'      query_name: "{dns_name}"\n      query_type: A\n      transport_protocol: udp\n'
        "      valid_rcodes: [NOERROR]\n"
    )


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text exposition -> {'name{labels}': value}, comments skipped."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        try:
            out[key] = float(value)
        except ValueError:
            continue
    return out


def find_blackbox(explicit: str | None) -> str:
    """The blackbox_exporter binary: the flag's, else the first of its usual names on PATH."""
    if explicit:
        return explicit
    for name in BLACKBOX_BINARY_NAMES:
        found = shutil.which(name)
        if found:
            return found
    raise SystemExit(f"{NAME}: blackbox_exporter not found (install the Debian package prometheus-blackbox-exporter)")


class BlackboxExporter:
    """Our own blackbox_exporter on 127.0.0.1 and a free port, with a generated config; stopped at the end."""

    def __init__(self, binary: str, workdir: str, timeout_s: float, dns_name: str) -> None:
        self.binary = binary
        self.workdir = workdir
        self.timeout_s = timeout_s
        self.dns_name = dns_name
        self.port = 0
        self.version = ""
        self._proc: asyncio.subprocess.Process | None = None
        self._log_path = os.path.join(workdir, "blackbox.log")
        self._log = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, session: aiohttp.ClientSession, ready_within_s: float = 10.0) -> None:
        """Write the config, start the exporter, and wait (bounded) until it answers /-/healthy."""
        config = os.path.join(self.workdir, "blackbox.yml")
        with open(config, "w") as f:
            f.write(blackbox_config(self.timeout_s, self.dns_name))
        version = await asyncio.create_subprocess_exec(
            self.binary, "--version", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        out, _ = await asyncio.wait_for(version.communicate(), 10.0)
        self.version = out.decode(errors="replace").splitlines()[0].strip() if out else ""
        self.port = free_port("127.0.0.1", socket.SOCK_STREAM)
        self._log = open(self._log_path, "wb")
        self._proc = await asyncio.create_subprocess_exec(
            self.binary,
            f"--config.file={config}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--log.level=warn",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=self._log,
            stderr=self._log,
        )
        deadline = time.monotonic() + ready_within_s
        while time.monotonic() < deadline and self._proc.returncode is None:
            try:
                async with session.get(f"{self.base_url}/-/healthy", timeout=aiohttp.ClientTimeout(total=1)) as r:
                    if r.status == 200:
                        return
            except (aiohttp.ClientError, asyncio.TimeoutError):
                pass
            await asyncio.sleep(0.05)
        await self.stop()
        with open(self._log_path, "rb") as f:
            tail = f.read()[-500:].decode(errors="replace")
        raise RuntimeError(f"blackbox_exporter did not become healthy within {ready_within_s:g}s: {tail}")

    async def stop(self) -> None:
        """Terminate the exporter (kill it after 5 s) and close its log."""
        if self._proc is not None and self._proc.returncode is None:
            self._proc.terminate()
            try:
                await asyncio.wait_for(self._proc.wait(), 5.0)
            except asyncio.TimeoutError:
                self._proc.kill()
                await self._proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    async def probe(self, session: aiohttp.ClientSession, module: str, target: str) -> float | str:
        """One /probe call: the kind's figure in milliseconds, or why it failed (probe_success 0, no figure)."""
        params = {"module": module, "target": target}
        # Prometheus sends its scrape timeout in this header; the exporter subtracts its 0.5 s offset from it.
        headers = {"X-Prometheus-Scrape-Timeout-Seconds": f"{self.timeout_s + 0.5:g}"}
        async with session.get(f"{self.base_url}/probe", params=params, headers=headers) as r:
            text = await r.text()
            if r.status != 200:
                return f"http_{r.status}"
        metrics = parse_metrics(text)
        if metrics.get("probe_success") != 1.0:
            return "probe_failed"
        value = metrics.get(BLACKBOX_FIGURES[module][0])
        return "no_figure" if value is None else value * 1000.0


def targets(address: str, dns_port: int) -> tuple[dict[str, str], dict[str, str]]:
    """(our probe URLs, blackbox_exporter targets) for every kind, all on the same lab address."""
    ours = {
        "udp": f"udp://{address}:7007",
        "tcp": f"tcp://{address}:7080",
        "http": f"http://{address}:8080/",
        "icmp": f"icmp://{address}",
        "dns": f"dns://{address}:{dns_port}/{DNS_NAME}",
    }
    theirs = {
        "tcp": f"{address}:7080",
        "http": f"http://{address}:8080/",
        "icmp": address,
        "dns": f"{address}:{dns_port}",
    }
    return ours, theirs


def pool_size(kind: str, concurrency: int) -> int:
    """Probers per run: http needs a warm connection per probe in flight; the other kinds share one prober."""
    return concurrency if kind == "http" else 1


class Bench:
    """Runs one side's kind at one concurrency through the shared driver and records it with the lab's window."""

    def __init__(self, lab, session: aiohttp.ClientSession, blackbox: BlackboxExporter, args, injected_ms: float) -> None:
        self.lab = lab
        self.session = session
        self.blackbox = blackbox
        self.args = args
        self.injected_ms = injected_ms
        self.timeout_s = args.timeout_ms / 1000.0

    async def _measure(self, once, concurrency: int, count: int | None = None) -> dict:
        await lab_settle(self.lab, within_s=2.0)
        before = await asyncio.to_thread(self.lab.stats, True)
        kernel_before = kernel_counters()
        # Both sides start their workers spread over one injected delay, so replies come steadily, not in one burst.
        result = await drive(once, count or self.args.probes, concurrency, self.args.max_seconds,
                             stagger_s=self.injected_ms / 1000.0)
        kernel = counters_delta(kernel_counters(), kernel_before)
        after = await asyncio.to_thread(self.lab.stats)
        return {"concurrency": concurrency, **result.summary(self.injected_ms), "lab": lab_window(after, before),
                "kernel": kernel}

    async def ours(self, kind: str, url: str, concurrency: int) -> dict:
        from latency_router.probes import make_prober

        pool = [make_prober(url) for _ in range(pool_size(kind, concurrency))]
        try:
            # Warm sockets and connections outside the measured window, as a running daemon has them.
            await asyncio.gather(*(probe_ours(p, self.timeout_s) for p in pool))

            async def once(worker: int) -> float | str:
                return await probe_ours(pool[worker % len(pool)], self.timeout_s)

            return await self._measure(once, concurrency, self.args.udp_probes if kind == "udp" else None)
        finally:
            await asyncio.gather(*(p.aclose() for p in pool), return_exceptions=True)

    async def ours_udp_bulk(self, url: str, concurrency: int) -> dict:
        """UDP through the prober's callback path (send_probe): no task per probe, `concurrency` kept in flight."""
        from latency_router.probes import make_prober

        prober = make_prober(url)
        try:
            await prober.open()
            await lab_settle(self.lab, within_s=2.0)
            before = await asyncio.to_thread(self.lab.stats, True)
            kernel_before = kernel_counters()
            result = await bulk_udp(prober, self.args.udp_probes, concurrency, self.args.max_seconds, self.timeout_s,
                                    stagger_s=self.injected_ms / 1000.0)
            kernel = counters_delta(kernel_counters(), kernel_before)
            after = await asyncio.to_thread(self.lab.stats)
        finally:
            await prober.aclose()
        return {"concurrency": concurrency, **result.summary(self.injected_ms), "lab": lab_window(after, before),
                "kernel": kernel}

    async def theirs(self, kind: str, target: str, concurrency: int) -> dict:
        # Warm the driver's connections to the exporter outside the measured window, as ours are warmed.
        await asyncio.gather(*(self.blackbox.probe(self.session, kind, target) for _ in range(concurrency)))

        async def once(worker: int) -> float | str:
            return await self.blackbox.probe(self.session, kind, target)

        return await self._measure(once, concurrency)


async def bulk_udp(
    prober, count: int, concurrency: int, time_limit_s: float, timeout_s: float, stagger_s: float = 0.0
) -> DriveResult:
    """Keep `concurrency` UDP probes in flight through send_probe callbacks until `count` are back (or time is up)."""
    result = DriveResult()
    loop = asyncio.get_running_loop()
    done = loop.create_future()
    sent = 0
    sending = False
    deadline = time.perf_counter() + time_limit_s

    def send_next() -> None:
        nonlocal sent, sending
        if sent >= count or time.perf_counter() >= deadline:
            if result.completed >= sent and not done.done():
                result.stopped_by_time = sent < count
                done.set_result(None)
            return
        sent += 1
        sending = True
        try:
            prober.send_probe(timeout_s, on_result)
        finally:
            sending = False

    def on_result(_seq: int, _sent_wall_ns: int, rtt_ns: int | None, loss, _detail: str) -> None:
        if rtt_ns is None:
            result.loss_reasons[str(loss)] += 1
            result.rtts_ms.append(None)
        else:
            result.rtts_ms.append(rtt_ns / 1e6)
        # Each outcome sends the next probe, so the number in flight stays fixed without a task per probe;
        # an outcome delivered from inside send_probe (a failed send) defers it, so failures cannot recurse.
        if sending:
            loop.call_soon(send_next)
        else:
            send_next()

    start = time.perf_counter_ns()
    first = min(concurrency, count)
    for i in range(first):
        loop.call_later(stagger_s * i / first, send_next)
    try:
        await asyncio.wait_for(done, time_limit_s + stagger_s + 2 * timeout_s)
    except asyncio.TimeoutError:
        result.stopped_by_time = True
    result.wall_s = (time.perf_counter_ns() - start) / 1e9
    return result


def _abs(x: float | None) -> float | None:
    return None if x is None else abs(x)


def best(figures: list[dict]) -> dict | None:
    """The figure with the highest rate."""
    return max(figures, key=lambda f: f["rate"], default=None)


def compare(ours: dict, theirs: dict) -> dict:
    """One kind at the same concurrency: rate ours/theirs (higher is better), |error| ours/theirs (lower is better)."""
    return {
        "rate_ratio": ratio(ours["rate"], theirs["rate"]),
        "error_ratio": ratio(_abs(ours["error_us"]["p50"]), _abs(theirs["error_us"]["p50"])),
        "error_ratio_p99": ratio(_abs(ours["error_us"]["p99"]), _abs(theirs["error_us"]["p99"])),
    }


async def run(args) -> dict:
    from latency_router.lab import Lab, LabPathSpec

    kinds = parse_str_list(args.kinds)
    for kind in kinds:
        if kind not in (*SHARED_KINDS, "udp"):
            raise SystemExit(f"{NAME}: unknown kind {kind!r} (expected some of udp, {', '.join(SHARED_KINDS)})")
    plan = Plan(kinds, args.concurrency, parse_int_list(args.best_concurrency), parse_int_list(args.blackbox_concurrency))
    address = f"{args.address_prefix}.1"
    region = "bench"
    lab = Lab([LabPathSpec(region=region, path="direct", address=address, delay_s=args.delay_ms / 1000.0)],
              mode=args.lab_mode, queue_num=args.queue_num)
    binary = find_blackbox(args.blackbox)
    started = time.perf_counter()
    load_before = loadavg()
    dns_server = DnsServerProcess(address) if "dns" in kinds else None
    await lab.start()
    try:
        if dns_server is not None:
            dns_server.start()
        lab_info = await asyncio.to_thread(lab.stats)
        injected_ms = lab.truth(region, "direct") * 1000.0
        our_urls, their_targets = targets(address, dns_server.port if dns_server else 53)
        connector = aiohttp.TCPConnector(limit=max(plan.theirs_cs) + 8)
        with tempfile.TemporaryDirectory(prefix="bench-blackbox-") as workdir:
            async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
                blackbox = BlackboxExporter(binary, workdir, args.timeout_ms / 1000.0, DNS_NAME)
                await blackbox.start(session)
                try:
                    bench = Bench(lab, session, blackbox, args, injected_ms)
                    per_kind = await run_kinds(bench, plan, our_urls, their_targets)
                finally:
                    await blackbox.stop()
    finally:
        if dns_server is not None:
            dns_server.stop()
        await lab.stop()
    out = {
        "benchmark": NAME,
        "loop": args.loop,
        # Other work on the machine competes with the lab, the exporter and the prober: say how busy it was.
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load_before, "loadavg_after": loadavg()},
        "blackbox_exporter": blackbox.version,
        "lab": {"mode": lab_info["mode"], "queue_num": lab_info["queue_num"], "calibration": lab_info["calibration"]},
        "delay_ms": injected_ms,
        "concurrency": plan.same_c,
        "probes_per_run": args.probes,
        "udp_probes_per_run": args.udp_probes if "udp" in kinds else None,
        "rate_is": "completed probes (answered or lost) per second of wall time, through the same asyncio driver",
        "error_is": "measured RTT minus the lab's injected delay, in microseconds",
        "ratios_are": "rate_ratio = ours / blackbox (>= 1: at least its rate); "
                      "error_ratio = |ours| / |blackbox| p50 error (< 1: smaller)",
        "figures": {
            "ours": {k: OUR_FIGURES[k] for k in kinds},
            "blackbox": {k: f"{BLACKBOX_FIGURES[k][0]}: {BLACKBOX_FIGURES[k][1]}" for k in kinds if k in SHARED_KINDS},
        },
        "kinds": {k: v for k, v in per_kind.items() if k != "udp"},
    }
    if "udp" in per_kind:
        out["udp"] = udp_against_best(per_kind)
    out["checks"] = checks(out)
    out["wall_s"] = round(time.perf_counter() - started, 1)
    return out


@dataclass(frozen=True)
class Plan:
    """Which kinds run, and at which concurrencies: the shared one, then each side's sweep for its best rate."""

    kinds: list[str]
    same_c: int
    ours_extra: list[int]
    theirs_extra: list[int]

    @property
    def ours_cs(self) -> list[int]:
        return sorted({self.same_c, *self.ours_extra})

    @property
    def theirs_cs(self) -> list[int]:
        return sorted({self.same_c, *self.theirs_extra})


def sweep(runs: list[dict]) -> dict:
    """A sweep's figures by concurrency, in short."""
    keep = ("rate", "error_us", "loss")
    return {str(f["concurrency"]): {**{k: f[k] for k in keep}, "lab_on_time": f["lab"]["on_time"]} for f in runs}


async def run_kinds(bench: Bench, plan: Plan, our_urls: dict, their_targets: dict) -> dict:
    """Every kind: blackbox_exporter and ours at the same concurrency, then each side's concurrency sweep."""
    per_kind: dict[str, dict] = {}
    for kind in plan.kinds:
        shared = kind in SHARED_KINDS
        ours: dict[int, dict] = {}
        theirs: dict[int, dict] = {}
        # Alternate sides at each concurrency so that drift in the machine's load touches both alike.
        for c in sorted(set(plan.ours_cs) | set(plan.theirs_cs)):
            if shared and c in plan.theirs_cs:
                log(NAME, f"{kind}: blackbox_exporter at concurrency {c}")
                theirs[c] = await bench.theirs(kind, their_targets[kind], c)
            if c in plan.ours_cs:
                log(NAME, f"{kind}: ours at concurrency {c}")
                ours[c] = await bench.ours(kind, our_urls[kind], c)
        entry: dict = {"ours": ours[plan.same_c]}
        if shared:
            entry["blackbox"] = theirs[plan.same_c]
            entry.update(compare(ours[plan.same_c], theirs[plan.same_c]))
        entry["ours_best"] = best(list(ours.values()))
        entry["ours_sweep"] = sweep(list(ours.values()))
        if shared:
            entry["blackbox_best"] = best(list(theirs.values()))
            entry["blackbox_sweep"] = sweep(list(theirs.values()))
            entry["best_rate_ratio"] = ratio(entry["ours_best"]["rate"], entry["blackbox_best"]["rate"])
        if kind == "udp":
            bulk = []
            for c in plan.ours_cs:
                log(NAME, f"udp: ours through the callback path at concurrency {c}")
                bulk.append(await bench.ours_udp_bulk(our_urls["udp"], c))
            entry["ours_bulk_best"] = best(bulk)
            entry["ours_bulk_sweep"] = sweep(bulk)
        per_kind[kind] = entry
    return per_kind


def udp_against_best(per_kind: dict) -> dict:
    """Our UDP figures against blackbox_exporter's best rate over every kind and concurrency it ran."""
    udp = per_kind["udp"]
    candidates = [
        {"kind": kind, "concurrency": f["concurrency"], "rate": f["rate"]}
        for kind, entry in per_kind.items() if kind in SHARED_KINDS
        for f in [entry["blackbox_best"]]
    ]
    theirs = best(candidates)
    their_rate = None if theirs is None else theirs["rate"]
    return {
        **udp,
        "blackbox_best": theirs,
        "rate_ratio_vs_blackbox_best": ratio(udp["ours_best"]["rate"], their_rate),
        "bulk_is": "UdpProber.send_probe callbacks, no task per probe "
                   "(an extra figure; the ratio above uses the shared driver)",
        "bulk_rate_ratio_vs_blackbox_best": ratio(udp["ours_bulk_best"]["rate"], their_rate),
    }


def checks(out: dict) -> dict:
    """The design's targets: per shared kind at least blackbox's rate and a smaller error; UDP 10x its best rate."""
    result: dict = {}
    for kind, entry in out["kinds"].items():
        rr, er = entry.get("rate_ratio"), entry.get("error_ratio")
        result[f"{kind}_rate_at_least_blackbox"] = None if rr is None else rr >= 1.0
        result[f"{kind}_error_smaller"] = None if er is None else er < 1.0
    udp = out.get("udp")
    if udp is not None:
        r = udp.get("rate_ratio_vs_blackbox_best")
        result["udp_rate_at_least_10x_blackbox_best"] = None if r is None else r >= 10.0
    return result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--kinds", default="tcp,http,icmp,dns,udp", help="comma-separated kinds (default: all five)")
    p.add_argument("--delay-ms", type=float, default=10.0, help="the lab path's injected delay (default 10)")
    p.add_argument("--concurrency", type=int, default=32, help="probes in flight side by side (default 32)")
    p.add_argument("--best-concurrency", default="128,512", help="more concurrencies for our best rate (default 128,512)")
    p.add_argument("--blackbox-concurrency", default="128",
                   help="more concurrencies for blackbox's best rate (default 128)")
    p.add_argument("--probes", type=int, default=2000, help="probes per run (default 2000)")
    p.add_argument("--udp-probes", type=int, default=20000,
                   help="probes per UDP run (default 20000: UDP runs ten times faster, and a run needs some length)")
    p.add_argument("--max-seconds", type=float, default=6.0, help="time bound of one run (default 6)")
    p.add_argument("--timeout-ms", type=float, default=2000.0, help="probe timeout on both sides (default 2000)")
    p.add_argument("--blackbox", default=None, help="blackbox_exporter binary (default: found on PATH)")
    p.add_argument("--queue-num", type=int, default=233, help="the lab's NFQUEUE number (default 233)")
    p.add_argument("--address-prefix", default="127.0.233", help="the lab path's /24 (default 127.0.233)")
    p.add_argument("--lab-mode", default="nfqueue", choices=("nfqueue", "auto", "userspace"))
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    require_root(NAME)
    raise_nofile()
    args.loop = install_uvloop()
    emit(asyncio.run(run(args)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The lab, checked with an independent timer: plain blocking sockets timed with perf_counter_ns, never our probes.

Runs as root (here and in CI): the nfqueue mode needs it. Every test uses its own 127.0.20x.y addresses and
queue number so that it cannot collide with another lab running on the same machine.
"""

from __future__ import annotations

import http.client
import os
import select
import signal
import socket
import statistics
import struct
import subprocess
import sys
import time

import pytest

from latency_router.lab import Lab, LabError, LabEventSpec, LabPathSpec
from latency_router.lab import iptables

pytestmark = pytest.mark.root

MS = 1_000_000
SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)


def spec(address: str, delay_ms: float, **kw) -> LabPathSpec:
    region = kw.pop("region", "r1")
    name = kw.pop("path", "direct")
    return LabPathSpec(region, name, address, delay_s=delay_ms / 1e3, **kw)


def udp_rtts_ns(address: str, port: int, count: int, timeout_s: float = 0.5) -> list[int | None]:
    """Sequential UDP echoes from a plain socket; None for a lost one.

    The reply's time is the kernel's receive stamp (CLOCK_REALTIME), paired with time.time_ns() taken just
    before sending, so a test process that waits for a CPU does not add its own wake-up to the RTT.
    """
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.settimeout(timeout_s)
    s.connect((address, port))
    out: list[int | None] = []
    try:
        for i in range(count):
            payload = b"test-%06d" % i
            t = time.time_ns()
            s.send(payload)
            try:
                while True:
                    data, anc, _, _ = s.recvmsg(64, 64)
                    if data == payload:
                        break
            except socket.timeout:
                out.append(None)
                continue
            (level, kind, value), = anc
            assert (level, kind) == (socket.SOL_SOCKET, SO_TIMESTAMPNS)
            sec, nsec = struct.unpack("=qq", value[:16])
            out.append(sec * 1_000_000_000 + nsec - t)
    finally:
        s.close()
    return out


def lab_rules() -> str:
    return subprocess.run(["iptables-save", "-t", "mangle"], capture_output=True, text=True, check=True).stdout


def icmp_rtt_ns(address: str, ident: int, seq: int, timeout_s: float = 1.0) -> int | None:
    """One ICMP echo through a raw socket (root); None when no reply came."""
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    s.settimeout(timeout_s)
    try:
        body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"lab-icmp"
        total = sum(struct.unpack("!%dH" % (len(body) // 2), body))
        total = (total >> 16) + (total & 0xFFFF)
        csum = ~(total + (total >> 16)) & 0xFFFF
        packet = body[:2] + struct.pack("!H", csum) + body[4:]
        t = time.perf_counter_ns()
        s.sendto(packet, (address, 0))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            try:
                data, (src, _) = s.recvfrom(256)
            except socket.timeout:
                return None
            ihl = (data[0] & 0x0F) * 4
            kind, _, _, rid, rseq = struct.unpack_from("!BBHHH", data, ihl)
            if src == address and kind == 0 and rid == ident and rseq == seq:
                return time.perf_counter_ns() - t
        return None
    finally:
        s.close()


# -- specs, no processes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"address": "127.0.0.1"}, "must not be 127.0.0.1"),
        ({"address": "10.0.0.1"}, "must be in 127.0.0.0/8"),
        ({"address": "::1"}, "must be in 127.0.0.0/8"),
        ({"address": "localhost"}, "is not an IPv4 address"),
        ({"address": "127.0.1.1", "delay_s": 0.001, "jitter_s": 0.002}, "jitter must not exceed delay"),
        ({"address": "127.0.1.1", "loss": 1.5}, "loss must be in [0, 1]"),
    ],
    ids=["clients-source", "not-loopback", "ipv6", "hostname", "jitter", "loss"],
)
def test_path_spec_rejects(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        LabPathSpec("r1", "direct", **kwargs)


def test_lab_rejects_shared_address_and_unknown_event_path():
    with pytest.raises(ValueError, match="already used by r1/direct"):
        Lab([spec("127.0.209.1", 1), spec("127.0.209.1", 1, path="accelerator")])
    with pytest.raises(ValueError, match="r9/direct, which is not a lab path"):
        Lab([spec("127.0.209.1", 1)], events=[LabEventSpec("r9", "direct", "outage", 1.0, 2.0)])
    with pytest.raises(ValueError, match="an outage needs an end after its start"):
        LabEventSpec("r1", "direct", "outage", 2.0, 1.0)


def test_truth_follows_events_without_starting():
    lab = Lab(
        [spec("127.0.209.1", 20)],
        events=[LabEventSpec("r1", "direct", "step", 5.0, delay_s=0.030),
                LabEventSpec("r1", "direct", "outage", 10.0, 12.0)],
    )
    assert lab.truth("r1", "direct", at=1.0) == pytest.approx(0.020)
    assert lab.truth("r1", "direct", at=6.0) == pytest.approx(0.050)
    assert lab.truth("r1", "direct", at=11.0) == float("inf")
    assert lab.loss("r1", "direct", at=11.0) == 1.0
    assert lab.truth("r1", "direct", at=12.0) == pytest.approx(0.050)
    with pytest.raises(KeyError, match="no lab path r1/accelerator"):
        lab.truth("r1", "accelerator")


# -- nfqueue mode ----------------------------------------------------------------------------------


async def test_udp_echo_rtt_matches_the_delay():
    async with Lab([spec("127.0.201.1", 20)], mode="nfqueue", queue_num=2001) as lab:
        assert lab.mode == "nfqueue"
        rtts = udp_rtts_ns("127.0.201.1", 7007, 100)
        stats = lab.stats()
    got = [r for r in rtts if r is not None]
    assert len(got) == 100
    median_ms = statistics.median(got) / MS
    assert 20.0 <= median_ms <= 20.5, (median_ms, stats["lateness_us"])
    assert min(got) >= 20 * MS * 0.999  # never meaningfully early
    assert stats["packets_delayed"] >= 100
    assert stats["calibration"]["probes"] == lab.calibration_probes
    assert set(stats["lateness_us"]) == {"p50_us", "p99_us", "max_us", "count"}
    assert lab.truth("r1", "direct") == pytest.approx(0.020)


async def test_tcp_handshake_and_icmp_reply_are_delayed():
    paths = [spec("127.0.201.2", 20)]
    async with Lab(paths, mode="nfqueue", queue_num=2002) as lab:
        connects = []
        for _ in range(5):
            t = time.perf_counter_ns()
            with socket.create_connection(("127.0.201.2", 7080), timeout=2):
                connects.append(time.perf_counter_ns() - t)
        icmp = [icmp_rtt_ns("127.0.201.2", os.getpid() & 0xFFFF, i) for i in range(5)]
        assert lab.stats()["handshake_delayed"] is True
    assert min(connects) >= 20 * MS * 0.999, connects  # the SYN-ACK waited
    assert None not in icmp
    assert min(icmp) >= 20 * MS * 0.999, icmp  # the kernel's echo reply passes OUTPUT too


def tcp_connect_ns(address: str, port: int) -> int:
    """Wall time of one blocking connect (SYN sent to SYN-ACK processed), closed with a reset to leave no TIME_WAIT."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        t = time.perf_counter_ns()
        s.connect((address, port))
        elapsed = time.perf_counter_ns() - t
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        return elapsed
    finally:
        s.close()


async def test_tcp_handshake_is_held_from_the_kernel_stamp():
    # the SYN-ACK is held from the kernel's queueing stamp, not from when the delayer read it: a plain connect
    # through a 20 ms path takes 20 ms plus loopback costs, never less
    async with Lab([spec("127.0.201.8", 20)], mode="nfqueue", queue_num=2021) as lab:
        lab.stats(reset=True)
        connects = []
        for _ in range(60):
            connects.append(tcp_connect_ns("127.0.201.8", 7080))
            time.sleep(0.002)  # gaps let the delayer fall idle, as a low probe rate does
        stats = lab.stats()
    assert stats["hold_basis"]["tcp"].get("kernel", 0) >= 60, stats["hold_basis"]
    assert stats["calibration"]["tcp_basis"].get("kernel", 0) >= stats["calibration"]["held_probes"] // 2
    median_ms = statistics.median(connects) / MS
    assert 20.0 <= median_ms <= 20.5, (median_ms, stats["lateness_us"], stats["calibration"])
    assert min(connects) >= 20 * MS * 0.999, connects  # never meaningfully early


async def test_hold_basis_is_counted_per_packet_kind():
    async with Lab([spec("127.0.201.9", 5)], mode="nfqueue", queue_num=2022) as lab:
        udp_rtts_ns("127.0.201.9", 7007, 10)
        for _ in range(10):
            tcp_connect_ns("127.0.201.9", 7080)
        icmp = [icmp_rtt_ns("127.0.201.9", (os.getpid() + 1) & 0xFFFF, i) for i in range(5)]
        stats = lab.stats()
    basis = stats["hold_basis"]
    assert basis["udp"] == {"echo": 10}, basis  # held from the echo request's receive stamp
    assert basis["tcp"].get("kernel", 0) >= 10, basis  # held from the kernel's queueing stamp (INPUT hook)
    assert basis["icmp"] == {"read": 5}, basis  # OUTPUT hook: no stamp, held from the delayer's read
    assert None not in icmp and min(icmp) >= 5 * MS * 0.999
    overhead = stats["calibration"]["overhead_us"]
    assert set(overhead) == {"kernel", "echo", "read"} and all(0 <= v <= 1000 for v in overhead.values())


async def test_listeners_queue_hundreds_of_connects_they_have_not_accepted_yet():
    # the default backlog (100-128) overflows at 1,000 connects in flight: SYNs are dropped and retried a
    # second later; with the listeners stopped, every handshake must still complete in the kernel
    per_port = 300
    async with Lab([spec("127.0.203.5", 1)], mode="userspace", queue_num=2023) as lab:
        pid = lab.servers_pid
        assert pid is not None
        socks: list[socket.socket] = []
        os.kill(pid, signal.SIGSTOP)
        try:
            for port in (7080, 8080):
                for _ in range(per_port):
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                    s.setblocking(False)
                    socks.append(s)
                    s.connect_ex(("127.0.203.5", port))
            poller = select.poll()
            pending = {s.fileno(): s for s in socks}
            for fd in pending:
                poller.register(fd, select.POLLOUT)
            deadline = time.monotonic() + 0.8  # well before the first SYN retransmission (1 s)
            while pending and time.monotonic() < deadline:
                for fd, _events in poller.poll(50):
                    poller.unregister(fd)
                    pending.pop(fd)
            connected = sum(1 for s in socks if s.fileno() not in pending
                            and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0)
        finally:
            os.kill(pid, signal.SIGCONT)
            for s in socks:
                s.close()
    assert connected == 2 * per_port


async def test_tcp_echo_and_http_keep_alive():
    async with Lab([spec("127.0.201.3", 10)], mode="nfqueue", queue_num=2003):
        with socket.create_connection(("127.0.201.3", 7080), timeout=2) as s:
            t = time.perf_counter_ns()
            s.sendall(b"ping")
            assert s.recv(16) == b"ping"
            assert time.perf_counter_ns() - t >= 10 * MS * 0.999
        conn = http.client.HTTPConnection("127.0.201.3", 8080, timeout=2)
        try:
            conn.request("GET", "/")
            first = conn.getresponse()
            assert (first.status, first.read()) == (200, b"ok")
            t = time.perf_counter_ns()
            conn.request("GET", "/")  # same connection: keep-alive
            second = conn.getresponse()
            assert (second.status, second.read()) == (200, b"ok")
            assert time.perf_counter_ns() - t >= 10 * MS * 0.999
        finally:
            conn.close()


@pytest.mark.parametrize("mode, address, queue", [("nfqueue", "127.0.201.4", 2004), ("userspace", "127.0.203.4", 2020)],
                         ids=["nfqueue", "userspace"])
async def test_loss_half_drops_about_half_and_counts_them(mode, address, queue):
    count = 200
    async with Lab([spec(address, 1, loss=0.5)], mode=mode, queue_num=queue, seed=1) as lab:
        assert lab.mode == mode
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect((address, 7007))
        s.settimeout(0.3)
        for i in range(count):
            s.send(b"loss-%04d" % i)
            time.sleep(0.0005)
        seen = set()
        try:
            while len(seen) < count:
                seen.add(s.recv(64))
        except socket.timeout:
            pass
        s.close()
        stats = lab.stats()
    received = len(seen)
    assert 60 <= received <= 140, received  # binomial(200, 0.5): 100 +- 5.6 sigma
    assert stats["dropped_loss"] == count - received  # the lab's own count agrees with the client's
    assert stats["paths"]["r1/direct"]["dropped_loss"] == count - received


async def test_outage_drops_everything_between_start_and_end():
    events = [LabEventSpec("r1", "direct", "outage", 0.4, 0.9)]
    async with Lab([spec("127.0.201.5", 5)], mode="nfqueue", queue_num=2005, events=events) as lab:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.connect(("127.0.201.5", 7007))
        s.settimeout(0.04)
        results: list[tuple[float, bool]] = []
        i = 0
        while lab.elapsed() < 1.3 and i < 500:
            i += 1
            sent_at = lab.elapsed()
            payload = b"outage-%04d" % i
            s.send(payload)
            try:
                while s.recv(64) != payload:
                    pass
                results.append((sent_at, True))
            except socket.timeout:
                results.append((sent_at, False))
            time.sleep(0.005)
        s.close()
        stats = lab.stats()
    inside = [ok for t, ok in results if 0.42 <= t <= 0.88]
    outside = [ok for t, ok in results if t < 0.37 or t > 0.92]
    assert len(inside) >= 5 and not any(inside), results
    assert len(outside) >= 10 and all(outside), results
    assert stats["dropped_outage"] >= len(inside)


async def test_step_adds_its_delay_after_its_time():
    events = [LabEventSpec("r1", "direct", "step", 0.5, delay_s=0.030)]
    async with Lab([spec("127.0.201.6", 10)], mode="nfqueue", queue_num=2006, events=events) as lab:
        before: list[int] = []
        after: list[int] = []
        i = 0
        while lab.elapsed() < 1.2 and i < 200:
            i += 1
            sent_at = lab.elapsed()
            (rtt,) = udp_rtts_ns("127.0.201.6", 7007, 1)
            assert rtt is not None
            if sent_at < 0.45:
                before.append(rtt)
            elif sent_at > 0.55:
                after.append(rtt)
        assert lab.truth("r1", "direct", at=0.2) == pytest.approx(0.010)
        assert lab.truth("r1", "direct", at=0.6) == pytest.approx(0.040)
    assert 10.0 <= statistics.median(before) / MS <= 10.5
    assert 40.0 <= statistics.median(after) / MS <= 40.5


async def test_jitter_spreads_around_the_delay():
    async with Lab([spec("127.0.201.7", 20, jitter_s=0.004)], mode="nfqueue", queue_num=2007, seed=3):
        rtts = [r for r in udp_rtts_ns("127.0.201.7", 7007, 150) if r is not None]
    ms = sorted(r / MS for r in rtts)
    assert ms[0] >= 16.0 * 0.999  # never earlier than delay - jitter
    # uniform in [16, 24] ms: p10 is 16.8, p90 is 23.2 (a late outlier may only push the top up)
    assert ms[len(ms) // 10] < 18.5 and ms[len(ms) * 9 // 10] > 21.5
    assert 18.5 <= statistics.median(ms) <= 21.5


# -- rules: present while running, gone after stop, exceptions and crashes ----------------------------------


async def test_rules_removed_after_stop():
    lab = Lab([spec("127.0.202.1", 1), spec("127.0.202.2", 1, path="accelerator")], mode="nfqueue", queue_num=2008)
    await lab.start()
    try:
        rules = lab_rules()
        assert rules.count(lab.tag) == 4  # per address: TCP on INPUT, the rest on OUTPUT
        assert "--queue-bypass" in rules
        for address in ("127.0.202.1", "127.0.202.2"):
            assert f"-A INPUT -s {address}/32 -p tcp " in rules
            assert f"-A OUTPUT -s {address}/32 ! -p tcp " in rules
    finally:
        await lab.stop()
    assert lab.tag not in lab_rules()
    await lab.stop()  # a second stop is harmless


async def test_rules_removed_after_exception_in_context():
    lab = Lab([spec("127.0.202.3", 1)], mode="nfqueue", queue_num=2009)
    with pytest.raises(RuntimeError, match="boom"):
        async with lab:
            assert lab.tag in lab_rules()
            raise RuntimeError("boom")
    assert lab.tag not in lab_rules()


async def test_killed_delayer_never_blackholes_and_leftovers_are_cleaned():
    lab = Lab([spec("127.0.202.4", 50)], mode="nfqueue", queue_num=2010)
    await lab.start()
    try:
        assert lab.engine_pid is not None
        os.kill(lab.engine_pid, signal.SIGKILL)  # no chance to remove its rules
        deadline = time.monotonic() + 5
        while lab._engine.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert lab.tag in lab_rules()
        # --queue-bypass: with nobody bound to the queue, the SYN-ACK passes undelayed
        t = time.perf_counter_ns()
        with socket.create_connection(("127.0.202.4", 7080), timeout=2):
            assert time.perf_counter_ns() - t < 50 * MS
    finally:
        await lab.stop()
    assert lab.tag not in lab_rules()


async def test_stale_rules_of_a_dead_lab_are_removed_at_start():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale_tag = iptables.tag_for(int(dead.stdout), 2011)
    iptables.add_rules(["127.0.202.5"], 2011, stale_tag)
    try:
        assert stale_tag in lab_rules()
        async with Lab([spec("127.0.202.6", 1)], mode="nfqueue", queue_num=2012):
            assert stale_tag not in lab_rules()
    finally:
        iptables.remove_rules(stale_tag)


async def test_a_port_in_use_fails_start_cleanly():
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.202.7", 7007))
    try:
        lab = Lab([spec("127.0.202.7", 1)], mode="nfqueue", queue_num=2013)
        with pytest.raises(LabError, match="cannot bind udp 127.0.202.7:7007"):
            await lab.start()
        assert lab.tag not in lab_rules()
    finally:
        blocker.close()


OWNER_SCRIPT = """
import asyncio, sys
from latency_router.lab import Lab, LabPathSpec
async def main():
    async with Lab([LabPathSpec("r1", "direct", sys.argv[1], delay_s=0.02)], mode=sys.argv[2], queue_num=int(sys.argv[3])) as lab:
        print(lab.mode, lab.tag, "|", lab.why, flush=True)
        await asyncio.sleep(float(sys.argv[4]))
asyncio.run(main())
"""


async def test_rules_go_when_the_owner_is_killed():
    proc = subprocess.Popen([sys.executable, "-c", OWNER_SCRIPT, "127.0.202.8", "nfqueue", "2018", "30"],
                            stdout=subprocess.PIPE, text=True)
    try:
        mode, tag, *_ = proc.stdout.readline().split()
        assert mode == "nfqueue" and tag in lab_rules()
        proc.kill()  # SIGKILL: no cleanup in the owner; its delayer sees the control socket close
        proc.wait(5)
        deadline = time.monotonic() + 10
        while tag in lab_rules() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert tag not in lab_rules()
    finally:
        proc.kill()
        proc.wait(5)


def test_auto_mode_falls_back_to_userspace_without_net_admin_and_says_why():
    # setpriv (util-linux) drops CAP_NET_ADMIN: root without it can neither bind a queue nor run iptables
    proc = subprocess.run(
        ["setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin",
         sys.executable, "-c", OWNER_SCRIPT, "127.0.205.1", "auto", "2019", "0"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    mode, _tag, _, why = proc.stdout.strip().split(" ", 3)
    assert mode == "userspace"
    assert why == "auto: no CAP_NET_ADMIN"


# -- userspace mode --------------------------------------------------------------------------------


async def test_userspace_mode_gives_the_udp_rtt_and_says_so():
    async with Lab([spec("127.0.203.1", 20)], mode="userspace", queue_num=2014) as lab:
        assert lab.mode == "userspace"
        rtts = udp_rtts_ns("127.0.203.1", 7007, 100)
        stats = lab.stats()
        assert lab.tag not in lab_rules()
        # user space cannot hold a SYN-ACK: the handshake is not delayed, and the stats say so
        t = time.perf_counter_ns()
        with socket.create_connection(("127.0.203.1", 7080), timeout=2):
            assert time.perf_counter_ns() - t < 20 * MS
    assert stats["handshake_delayed"] is False
    assert stats["mode"] == "userspace"
    got = [r for r in rtts if r is not None]
    assert len(got) == 100
    assert 20.0 <= statistics.median(got) / MS <= 20.5


async def test_userspace_http_waits_the_delay():
    async with Lab([spec("127.0.203.2", 20)], mode="userspace", queue_num=2015):
        conn = http.client.HTTPConnection("127.0.203.2", 8080, timeout=2)
        try:
            t = time.perf_counter_ns()
            conn.request("GET", "/")
            resp = conn.getresponse()
            assert (resp.status, resp.read()) == (200, b"ok")
            assert time.perf_counter_ns() - t >= 20 * MS * 0.999
        finally:
            conn.close()


# -- from the config, and the command line ---------------------------------------------------------------

LAB_TOML = """
[lab]
mode = "{mode}"
queue_num = {queue}
tcp_port = 7081
[[lab.events]]
region = "eu"
path = "accelerator"
kind = "step"
start = "1s"
delay = "5ms"
[[regions]]
name = "eu"
lat = 53.35
lon = -6.26
[[regions.paths]]
name = "direct"
probe = "udp://127.0.204.1:17007"
answer = "203.0.113.10"
lab = {{delay = "20ms", jitter = "1ms", loss = 0.01}}
[[regions.paths]]
name = "accelerator"
probe = "http://127.0.204.2:18080/"
answer = "198.51.100.1"
lab = {{delay = "15ms"}}
[[regions.paths]]
name = "real"
probe = "udp://192.0.2.1:7007"
answer = "192.0.2.1"
"""


def test_from_config_takes_lab_paths_ports_and_events():
    from latency_router.config import parse_config

    lab = Lab.from_config(parse_config(LAB_TOML.format(mode="userspace", queue=2016)))
    assert lab.requested_mode == "userspace" and lab.queue_num == 2016
    by_key = {p.key: p for p in lab.paths}
    assert set(by_key) == {"eu/direct", "eu/accelerator"}  # a path without a lab table is not emulated
    direct, acc = by_key["eu/direct"], by_key["eu/accelerator"]
    assert (direct.address, direct.udp_port, direct.tcp_port, direct.http_port) == ("127.0.204.1", 17007, 7081, 8080)
    assert (acc.address, acc.udp_port, acc.tcp_port, acc.http_port) == ("127.0.204.2", 7007, 7081, 18080)
    assert (direct.delay_s, direct.jitter_s, direct.loss) == (0.020, 0.001, 0.01)
    assert lab.truth("eu", "accelerator", at=0.5) == pytest.approx(0.015)
    assert lab.truth("eu", "accelerator", at=1.5) == pytest.approx(0.020)


def test_lab_command_runs_for_its_duration_and_prints_stats(tmp_path):
    import json

    cfg = tmp_path / "lab.toml"
    cfg.write_text(LAB_TOML.format(mode="nfqueue", queue=2017))
    proc = subprocess.run(
        [sys.executable, "-m", "latency_router", "lab", "-c", str(cfg), "--duration", "1s"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines[0].startswith("lab: nfqueue mode")
    assert any("eu/direct  127.0.204.1  udp 17007" in line and "delay 20ms" in line for line in lines)
    stats = json.loads(lines[-1])
    assert stats["mode"] == "nfqueue" and "lateness_us" in stats
    assert "--queue-num 2017 " not in lab_rules()


def test_lab_command_reports_a_bad_config_without_a_traceback(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(LAB_TOML.format(mode="fast", queue=2018))
    proc = subprocess.run([sys.executable, "-m", "latency_router", "lab", "-c", str(cfg)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "lab.mode" in proc.stderr

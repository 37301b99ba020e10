"""The lab's timing process: UDP echo on every path, and in nfqueue mode the delayer holding queued replies.

It runs alone in its own process and thread so that no other Python work (GIL, event loop) makes a release
late. Control is JSON over a SOCK_SEQPACKET socket inherited from the parent (fd in argv[1]); see `lab.py`.

Each hold counts from the earliest kernel time known for its reply (its basis, counted in the stats): the
kernel's queueing stamp (TCP, queued on INPUT), the echo request's receive stamp (our UDP echo), or, for the
rest (ICMP), the moment this process read it less its calibrated wake-up.
"""

from __future__ import annotations

import heapq
import json
import os
import random
import select
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import deque
from typing import Any

from latency_router.lab import iptables
from latency_router.lab.calibrate import BASES
from latency_router.lab.nfqueue import NF_ACCEPT, NF_DROP, NfQueue, queue_counters
from latency_router.lab.spec import Impairment
from latency_router.lab.timing import Lateness, WakeMargin, set_timer_slack_ns

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)
SO_SNDBUFFORCE = 32
SO_RCVBUFFORCE = 33
TERM_GRACE_S = 2.0  # after SIGTERM, how long the parent has to read the stats and stop us in order
STALE_ECHO_NS = 100_000_000  # an echo reply not seen in the queue this long after its request never will be
STAMP_PAST_NS = 5_000_000_000  # a kernel stamp further back than this is not this packet's queueing time
STAMP_FUTURE_NS = 1_000_000  # nor one ahead of our clock by more than the clock pairing's error can explain
KIND_OF_PROTO = {6: "tcp", 17: "udp", 1: "icmp"}
# After a sleep longer than IDLE_NS the CPU's caches have gone cold, and the first release then takes tens of
# microseconds longer in this loop and in the kernel's send path (measured on a 2-core VM: UDP echo error at
# 1 in flight p50 80 us, against 35-45 us warmed). So before such a release the loop wakes WARM_NS earlier than
# its wake margin asks and runs a loopback send each turn while it waits: at most WARM_NS of CPU per idle
# spell, so at most WARM_NS / (IDLE_NS + WARM_NS) of one core (7 %), and about 0.5 % at 50 releases a second.
IDLE_NS = 2_000_000
WARM_NS = 150_000
SLEPT_NS = 20_000  # a select that blocked this long slept: what it returns was read after a wake-up
_TIMESPEC = struct.Struct("=qq")


def _force_buffer(s: socket.socket, forced: int, plain: int, size: int) -> None:
    """Root may exceed the system's buffer maximum; otherwise take what the maximum allows."""
    try:
        s.setsockopt(socket.SOL_SOCKET, forced, size)
    except OSError:
        s.setsockopt(socket.SOL_SOCKET, plain, size)


class Engine:
    """UDP echo plus, in nfqueue mode, the queue reader and the release scheduler, all on one thread."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.requested_mode: str = cfg["mode"]
        self.queue_num: int = cfg["queue_num"]
        self.tag: str = cfg["tag"]
        self.paths: list[dict[str, Any]] = cfg["paths"]
        self.rng = random.Random(cfg.get("seed"))
        self.mode = "userspace"
        self.why = ""
        self.nfq: NfQueue | None = None
        self.rules_installed = False
        self.udp: list[socket.socket] = []
        self.udp_imp: dict[int, tuple[Impairment, bytes, bytes]] = {}  # fileno -> (impairment, address, port)
        # our echo replies waiting to be read from the queue: (src, sport, dst, dport) -> request rx stamps
        self.echo_rx: dict[bytes, deque[int]] = {}
        self.by_src: dict[bytes, Impairment] = {}
        self.per_src: dict[bytes, list[int]] = {}  # seen, delayed, dropped_loss, dropped_outage
        self.t0_ns: int | None = None  # lab start; None while calibrating (every hold is calib_hold_ns)
        self.calib_hold_ns = 0
        self.overhead_ns = dict.fromkeys(BASES, 0)  # per basis: the delayer's calibrated own cost, subtracted
        self.slept = False  # whether the packets being read now waited for this process to wake up
        self.basis_counts: dict[str, dict[str, int]] = {}  # packet kind -> basis -> packets held from it
        self.heap: list[tuple[int, int, int, Any]] = []
        self.seq = 0
        self.margin = WakeMargin()
        self.late = Lateness()
        self.echo_service = Lateness()  # request's kernel receive stamp to our echo send
        self.verdict_cost = Lateness()  # release decision to the end of the verdict system call
        self.read_latency = Lateness()  # kernel queueing stamp to our read, for packets that waited for a wake-up
        self.counts = {"queued": 0, "delayed": 0, "released": 0, "passed": 0, "dropped_loss": 0,
                       "dropped_outage": 0, "udp_echoed": 0, "echo_send_errors": 0, "held_peak": 0}
        self.window_start_ns = time.perf_counter_ns()
        self.window_delayed = 0
        self.stopping = False
        self.term_deadline_ns: int | None = None
        self.wakeup: socket.socket | None = None
        self.warm_tx: socket.socket | None = None  # a loopback UDP pair that _warm() sends through
        self.warm_rx: socket.socket | None = None
        self.warm_sends = 0
        self.priority = "normal"
        self._offset = 0
        self._offset_at = -(1 << 62)

    # -- set-up and tear-down -------------------------------------------------------------------

    def open(self) -> dict[str, Any]:
        """Open the echo sockets and, unless in userspace mode, bind the queue; say which mode runs and why."""
        for p in self.paths:
            imp = Impairment.from_json(p["impairment"])
            self.by_src[socket.inet_aton(p["address"])] = imp
            self.per_src[socket.inet_aton(p["address"])] = [0, 0, 0, 0]
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            # replies held in the queue stay charged to this socket's send buffer: make room for thousands
            _force_buffer(s, SO_SNDBUFFORCE, socket.SO_SNDBUF, 32 << 20)
            _force_buffer(s, SO_RCVBUFFORCE, socket.SO_RCVBUF, 8 << 20)
            s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            try:
                s.bind((p["address"], p["udp_port"]))
            except OSError as exc:
                s.close()
                raise RuntimeError(f"{p['key']}: cannot bind udp {p['address']}:{p['udp_port']}: {exc.strerror}") from None
            s.setblocking(False)
            self.udp.append(s)
            self.udp_imp[s.fileno()] = (imp, socket.inet_aton(p["address"]), p["udp_port"].to_bytes(2, "big"))
        # 127.0.0.1 to itself: no lab rule matches it, so these datagrams are never queued
        self.warm_rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.warm_rx.bind(("127.0.0.1", 0))
        self.warm_rx.setblocking(False)
        self.warm_tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.warm_tx.connect(self.warm_rx.getsockname())
        self.warm_tx.setblocking(False)
        if self.requested_mode == "userspace":
            self.why = "userspace mode requested"
            return self._ready()
        reason = iptables.available()
        if reason is None:
            try:
                self.nfq = NfQueue(self.queue_num)
            except OSError as exc:
                reason = f"cannot bind NFQUEUE {self.queue_num}: {exc.strerror or exc}"
        if reason is not None:
            if self.requested_mode == "nfqueue":
                raise RuntimeError(f"nfqueue mode unavailable: {reason}")
            self.why = f"auto: {reason}"
            return self._ready()
        self.mode = "nfqueue"
        self.why = "root, iptables and nfnetlink_queue present" if self.requested_mode == "auto" else "nfqueue mode requested"
        return self._ready()

    def _ready(self) -> dict[str, Any]:
        return {"ready": True, "mode": self.mode, "why": self.why, "pid": os.getpid()}

    def install_rules(self) -> None:
        iptables.add_rules([p["address"] for p in self.paths], self.queue_num, self.tag)
        self.rules_installed = True

    def close(self) -> None:
        """Remove the rules first (traffic then bypasses the queue), then release what is held and unbind."""
        if self.rules_installed:
            try:
                iptables.remove_rules(self.tag)
            except Exception as exc:  # the parent removes them again by tag; say why here
                print(f"lab engine: removing rules failed: {exc}", file=sys.stderr)
            self.rules_installed = False
        if self.nfq is not None:
            try:
                msgs = b"".join(self.nfq.verdict_bytes(item[2], NF_ACCEPT) for item in self.heap if item[2] >= 0)
                if msgs:
                    self.nfq.send(msgs)
            except OSError:
                pass
            self.heap.clear()
            self.nfq.close()
            self.nfq = None
        for s in self.udp:
            s.close()
        self.udp.clear()
        for s in (self.warm_tx, self.warm_rx):
            if s is not None:
                s.close()
        self.warm_tx = self.warm_rx = None

    def terminate(self, grace_s: float = TERM_GRACE_S) -> None:
        """Leave within grace_s unless the parent stops us first (called from the SIGTERM handler)."""
        if self.term_deadline_ns is None:
            self.term_deadline_ns = time.perf_counter_ns() + int(grace_s * 1e9)

    # -- control ---------------------------------------------------------------------------------

    def command(self, msg: dict[str, Any]) -> dict[str, Any]:
        cmd = msg.get("cmd")
        if cmd == "rules":
            if self.mode == "nfqueue":
                try:
                    self.install_rules()
                except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                    return {"error": f"installing the iptables rules failed: {exc}"}
            return {"ok": True}
        if cmd == "calibrate":
            # every packet from now on is held exactly hold_ns from its basis; answers the previous phase's bases
            out = {"ok": True, "hold_basis": self.basis_counts, "read_latency": self.read_latency.summary(reset=True)}
            self.calib_hold_ns = max(0, int(msg.get("hold_ns", 0)))
            self.basis_counts = {}
            return out
        if cmd == "go":
            given = msg.get("overhead_ns", {})
            self.overhead_ns = {b: max(0, int(given.get(b, 0))) for b in BASES}
            self.t0_ns = int(msg["t0_ns"])
            self.basis_counts = {}
            return {"ok": True}
        if cmd == "stats":
            return self.stats(bool(msg.get("reset")))
        if cmd == "stop":
            self.stopping = True
            return {"ok": True}
        return {"error": f"unknown command {cmd!r}"}

    def stats(self, reset: bool) -> dict[str, Any]:
        now = time.perf_counter_ns()
        window_s = max(1e-9, (now - self.window_start_ns) / 1e9)
        out: dict[str, Any] = {
            "mode": self.mode,
            "why": self.why,
            **self.counts,
            "held_now": len(self.heap),
            "lateness": self.late.summary(reset),
            "echo_service": self.echo_service.summary(reset),
            "verdict_cost": self.verdict_cost.summary(reset),
            "read_latency": self.read_latency.summary(reset),
            "window_s": round(window_s, 3),
            "delayed_per_s": round(self.window_delayed / window_s, 1),
            "wake_margin_us": round(self.margin.margin_ns / 1e3, 1),
            "warm_sends": self.warm_sends,
            "priority": self.priority,
            "overhead_us": {b: round(v / 1e3, 1) for b, v in self.overhead_ns.items()},
            "hold_basis": {kind: dict(v) for kind, v in self.basis_counts.items()},
            "per_address": {socket.inet_ntoa(k): dict(zip(("seen", "delayed", "dropped_loss", "dropped_outage"), v))
                            for k, v in self.per_src.items()},
        }
        if self.mode == "nfqueue":
            out["kernel_queue"] = queue_counters(self.queue_num)
        if reset:
            self.window_start_ns = now
            self.window_delayed = 0
        return out

    # -- the loop ----------------------------------------------------------------------------------

    def run(self, ctrl: socket.socket) -> None:
        """Serve until told to stop or until the parent goes away (its end of the control socket closes)."""
        heap = self.heap
        margin = self.margin
        nfq = self.nfq
        fds: list[Any] = [ctrl, *self.udp] + ([nfq] if nfq is not None else [])
        if self.wakeup is not None:
            fds.append(self.wakeup)
        udp_set = set(self.udp)
        warming = False  # the next release follows an idle spell: spin longer before it, keeping its path warm
        can_warm = self.warm_tx is not None
        while not self.stopping:
            now = time.perf_counter_ns()
            if self.term_deadline_ns is not None and now > self.term_deadline_ns:
                return
            if heap and heap[0][0] <= now:
                self._release(now)
                warming = False
                continue
            wait_ns = heap[0][0] - now if heap else None
            if can_warm and wait_ns is not None and wait_ns > IDLE_NS:
                warming = True
            spin_ns = margin.margin_ns + (WARM_NS if warming else 0)
            if wait_ns is None or wait_ns > spin_ns:
                timeout = None if wait_ns is None else (wait_ns - spin_ns) / 1e9
                if self.term_deadline_ns is not None:
                    timeout = 0.05 if timeout is None else min(timeout, 0.05)
                wake_at = None if wait_ns is None else now + wait_ns - spin_ns
                ready, _, _ = select.select(fds, [], [], timeout)
                woke = time.perf_counter_ns()
                self.slept = woke - now > SLEPT_NS
                if not ready and wake_at is not None:
                    margin.observe(woke - wake_at)
            else:
                # close to the next deadline: poll without sleeping so the release is on time
                ready, _, _ = select.select(fds, [], [], 0)
                self.slept = False
                if warming and not ready:
                    self._warm()
            for r in ready:
                if r is nfq:
                    self._on_queue()
                elif r in udp_set:
                    self._on_udp(r)
                elif r is self.wakeup:
                    try:
                        r.recv(4096)
                    except BlockingIOError:
                        pass
                else:
                    data = ctrl.recv(1 << 20)
                    if not data:
                        return
                    msg = json.loads(data)
                    ctrl.send(json.dumps({**self.command(msg), "id": msg.get("id")}).encode())

    def _warm(self) -> None:
        """One datagram through the kernel's loopback send and receive path, as a release is about to take it."""
        try:
            self.warm_tx.send(b"\0")  # type: ignore[union-attr]
            self.warm_rx.recv(16)  # type: ignore[union-attr]
            self.warm_sends += 1
        except OSError:
            pass

    def _release(self, now: int) -> None:
        heap = self.heap
        verdicts = []
        due = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap))
        t = time.perf_counter_ns()
        nfq = self.nfq
        for _deadline, _seq, pkt_id, extra in due:
            if pkt_id >= 0:
                verdicts.append(extra)  # built when the packet was queued: nothing to compute now
            else:
                self._send(*extra)
        if verdicts:
            nfq.send(b"".join(verdicts))  # type: ignore[union-attr]
            # the verdict call carries the reply through the rest of the kernel path (loopback included)
            self.verdict_cost.add(time.perf_counter_ns() - t)
        for deadline, _seq, _pkt_id, _extra in due:
            self.late.add(t - deadline)
        self.counts["released"] += len(due)

    def _real_minus_mono(self, now: int) -> int:
        """CLOCK_REALTIME minus CLOCK_MONOTONIC, re-read every 50 ms from the tightest of three bracketed reads."""
        if now - self._offset_at > 50_000_000:
            best_gap, best = None, 0
            for _ in range(3):
                a = time.perf_counter_ns()
                r = time.time_ns()
                b = time.perf_counter_ns()
                if best_gap is None or b - a < best_gap:
                    best_gap, best = b - a, r - (a + b) // 2
            self._offset, self._offset_at = best, now
        return self._offset

    def _count_basis(self, proto: int, basis: str) -> None:
        per_kind = self.basis_counts.setdefault(KIND_OF_PROTO.get(proto, "other"), {})
        per_kind[basis] = per_kind.get(basis, 0) + 1

    def _hold_ns(self, imp: Impairment, src: bytes, now: int, overhead_ns: int) -> int | None:
        """How long to hold one reply from its basis (less the basis' overhead), 0 to pass it now, None to drop it."""
        counters = self.per_src[src]
        counters[0] += 1
        if self.t0_ns is None:
            return self.calib_hold_ns
        t_s = (now - self.t0_ns) / 1e9
        if imp.outages and imp.down(t_s):
            counters[3] += 1
            self.counts["dropped_outage"] += 1
            return None
        if imp.loss and self.rng.random() < imp.loss:
            counters[2] += 1
            self.counts["dropped_loss"] += 1
            return None
        delay = imp.delay_at(t_s) if imp.steps else imp.delay_s
        if imp.jitter_s:
            # uniform around the delay: its mean is the delay, and jitter <= delay keeps it >= 0
            delay += self.rng.uniform(-imp.jitter_s, imp.jitter_s)
        counters[1] += 1
        return max(0, int(delay * 1e9) - overhead_ns)

    def _push(self, deadline: int, pkt_id: int, extra: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (deadline, self.seq, pkt_id, extra))
        self.counts["delayed"] += 1
        self.window_delayed += 1
        if len(self.heap) > self.counts["held_peak"]:
            self.counts["held_peak"] = len(self.heap)

    def _on_queue(self) -> None:
        nfq = self.nfq
        packets = nfq.read(128)  # type: ignore[union-attr]
        now = time.perf_counter_ns()
        real_minus_mono = self._real_minus_mono(now)
        now_verdicts = []
        by_src = self.by_src
        echo_rx = self.echo_rx
        overhead = self.overhead_ns
        for pkt_id, head, stamp in packets:
            self.counts["queued"] += 1
            src = head[12:16]
            imp = by_src.get(src)
            proto = head[9] if len(head) > 9 else -1
            anchor, basis = now, "read"
            if echo_rx and proto == 17 and len(head) >= 24:
                key = src + head[20:22] + head[16:20] + head[22:24]
                pending = echo_rx.get(key)
                # a reply the kernel dropped before queueing it leaves its stamp behind: skip stale ones
                while pending and pending[0] < now - STALE_ECHO_NS:
                    pending.popleft()
                if pending:
                    # our own echo reply: hold from the request's arrival, as a reflector with no processing time would
                    anchor, basis = pending.popleft(), "echo"
                if not pending and key in echo_rx:
                    del echo_rx[key]
            if stamp and basis == "read":
                # the kernel's queueing time (CLOCK_REALTIME) on our monotonic clock: the wake-up and read
                # time of this process then no longer count in the hold
                queued_at = stamp - real_minus_mono
                if now - STAMP_PAST_NS <= queued_at <= now + STAMP_FUTURE_NS:
                    anchor, basis = min(queued_at, now), "kernel"
                    if self.slept:
                        # what a packet without a stamp loses before we read it: the read basis' overhead
                        self.read_latency.add(now - anchor)
            # the read basis' overhead is mostly our wake-up: a packet read while we were awake had none
            over = overhead[basis] if basis != "read" or self.slept else 0
            hold = 0 if imp is None else self._hold_ns(imp, src, now, over)
            if imp is not None and hold is not None:
                self._count_basis(proto, basis)
            if hold is None:
                now_verdicts.append(nfq.verdict_bytes(pkt_id, NF_DROP))  # type: ignore[union-attr]
            elif hold == 0 or anchor + hold <= now:
                self.counts["passed"] += 1
                now_verdicts.append(nfq.verdict_bytes(pkt_id, NF_ACCEPT))  # type: ignore[union-attr]
            else:
                self._push(anchor + hold, pkt_id, nfq.verdict_bytes(pkt_id, NF_ACCEPT))  # type: ignore[union-attr]
        if now_verdicts:
            nfq.send(b"".join(now_verdicts))  # type: ignore[union-attr]

    def _on_udp(self, sock: socket.socket) -> None:
        userspace = self.mode == "userspace"
        imp, src, port = self.udp_imp[sock.fileno()]
        for _ in range(64):
            try:
                data, anc, _flags, addr = sock.recvmsg(65535, 64)
            except BlockingIOError:
                return
            except OSError:
                continue
            self.counts["udp_echoed"] += 1
            now = time.perf_counter_ns()
            rx_mono = now
            # kernel rx stamps are wall-clock: map them onto the monotonic clock the deadlines use
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = _TIMESPEC.unpack_from(value)
                    rx_mono = sec * 1_000_000_000 + nsec - self._real_minus_mono(now)
            self.echo_service.add(now - rx_mono)
            if not userspace:
                # nfqueue mode: the kernel path adds the delay to this reply; the delayer finds the
                # request's receive stamp by the reply's addresses and holds from there
                try:
                    key = src + port + socket.inet_aton(addr[0]) + addr[1].to_bytes(2, "big")
                except (OSError, ValueError):
                    continue
                pending = self.echo_rx.get(key)
                if pending is None:
                    pending = self.echo_rx[key] = deque()
                pending.append(rx_mono)
                if not self._send(sock, data, addr):
                    pending.pop()
                    if not pending:
                        del self.echo_rx[key]
                continue
            # user-space holds start at the kernel's receive stamp; nothing of ours needs subtracting
            hold = self._hold_ns(imp, src, rx_mono, 0)
            if hold is None:
                continue
            self._count_basis(17, "echo")
            if hold == 0 or rx_mono + hold <= now:
                self.counts["passed"] += 1
                self._send(sock, data, addr)
                continue
            self._push(rx_mono + hold, -1, (sock, data, addr))

    def _send(self, sock: socket.socket, data: bytes, addr: tuple[str, int]) -> bool:
        try:
            sock.sendto(data, addr)
            return True
        except OSError:
            self.counts["echo_send_errors"] += 1
            return False


def _raise_priority(how: str) -> str:
    """Wake up ahead of ordinary work when allowed: a release that waits for a CPU is a late release."""
    if how == "realtime":
        try:
            # the lowest real-time priority; children (iptables) start as ordinary processes
            os.sched_setscheduler(0, os.SCHED_FIFO | os.SCHED_RESET_ON_FORK, os.sched_param(1))
            return "SCHED_FIFO 1"
        except (OSError, AttributeError):
            how = "nice"
    if how == "nice":
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -10)
            return "nice -10"
        except (OSError, AttributeError):
            pass
    return "normal"


def main(argv: list[str]) -> int:
    """Entry point of the engine process: `python -m latency_router.lab.engine CTRL_FD`."""
    # no PR_SET_PDEATHSIG: it fires when the spawning *thread* ends; the control socket's EOF is the signal
    ctrl = socket.socket(fileno=int(argv[1]))
    # Ctrl-C reaches the whole process group; the parent decides when the lab stops
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(0))  # until the loop runs: exit, cleaning up
    set_timer_slack_ns(1)
    try:
        cfg = json.loads(ctrl.recv(1 << 20))
    except (OSError, ValueError):
        return 2
    engine = Engine(cfg)
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)
    engine.wakeup = wake_r
    engine.priority = _raise_priority(cfg.get("priority", "realtime"))
    try:
        try:
            ready = engine.open()
        except (RuntimeError, OSError) as exc:
            ctrl.send(json.dumps({"ready": False, "error": str(exc)}).encode())
            return 1
        ctrl.send(json.dumps(ready).encode())
        # SIGTERM often reaches the whole group (systemd, timeout): give the parent a grace period to read
        # the stats and stop us in order; the signal only wakes the loop through the wakeup socket
        signal.set_wakeup_fd(wake_w.fileno())
        signal.signal(signal.SIGTERM, lambda signum, frame: engine.terminate())
        engine.run(ctrl)
    finally:
        engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

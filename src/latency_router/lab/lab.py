"""The Lab: starts the timing engine and the listeners, calibrates, and answers what it injects (its ground truth)."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Iterable

from latency_router.lab import calibrate, iptables
from latency_router.lab.calibrate import BASES
from latency_router.lab.spec import MODES, LabEventSpec, LabPathSpec, check_unique, impairments

log = logging.getLogger("latency_router.lab")

START_TIMEOUT_S = 30.0
REQUEST_TIMEOUT_S = 5.0
STOP_TIMEOUT_S = 5.0
PRIORITIES = ("realtime", "nice", "normal")  # the delayer's scheduling: SCHED_FIFO 1, nice -10, unchanged
ON_TIME_P99_US = 500.0  # a window whose release lateness p99 exceeds this is "running late"


class LabError(RuntimeError):
    """The lab could not start (a port in use, nfqueue mode unavailable, a bad path spec, ...)."""


class _Child:
    """One helper process and its control socket (JSON messages over SOCK_SEQPACKET)."""

    def __init__(self, module: str) -> None:
        self.module = module
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock = parent
        self.lock = threading.Lock()
        self.next_id = 0
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, str(child.fileno())], pass_fds=(child.fileno(),), stdin=subprocess.DEVNULL
            )
        except BaseException:
            parent.close()
            raise
        finally:
            child.close()

    def send(self, msg: dict[str, Any]) -> None:
        try:
            self.sock.sendall(json.dumps(msg).encode())
        except OSError as exc:
            raise LabError(f"{self.module}: {exc.strerror or exc} (exit code {self.proc.poll()})") from None

    def recv(self, timeout_s: float) -> dict[str, Any]:
        self.sock.settimeout(timeout_s)
        try:
            data = self.sock.recv(1 << 22)
        except socket.timeout:
            raise LabError(f"{self.module}: no answer within {timeout_s:g}s") from None
        except OSError as exc:
            raise LabError(f"{self.module}: {exc.strerror or exc} (exit code {self.proc.poll()})") from None
        if not data:
            raise LabError(f"{self.module}: exited (code {self.proc.poll()})")
        return json.loads(data)

    def request(self, msg: dict[str, Any], timeout_s: float = REQUEST_TIMEOUT_S) -> dict[str, Any]:
        """Send one command and return its answer (an answer to an earlier, timed-out command is skipped)."""
        with self.lock:
            self.next_id += 1
            self.send({**msg, "id": self.next_id})
            deadline = time.monotonic() + timeout_s
            while True:
                reply = self.recv(max(0.001, deadline - time.monotonic()))
                if reply.pop("id", None) == self.next_id:
                    if "error" in reply:
                        raise LabError(f"{self.module}: {reply['error']}")
                    return reply

    def stop(self) -> None:
        """Ask it to stop, then make sure it is gone."""
        if self.proc.poll() is None:
            try:
                self.request({"cmd": "stop"}, timeout_s=STOP_TIMEOUT_S)
            except (OSError, LabError, ValueError):
                pass
            try:
                self.proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self.sock.close()


class Lab:
    """Emulated regions: every path on its own 127.x.y.z address with UDP echo, TCP and HTTP, and injected impairments."""

    def __init__(
        self,
        paths: Iterable[LabPathSpec],
        *,
        mode: str = "auto",
        queue_num: int = 7,
        events: Iterable[LabEventSpec] = (),
        seed: int | None = None,
        calibration_probes: int = 200,
        priority: str = "realtime",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"lab mode must be one of {', '.join(MODES)}, not {mode!r}")
        self.paths = list(paths)
        if not self.paths:
            raise ValueError("the lab needs at least one path")
        check_unique(self.paths)
        self.events = list(events)
        self._imp = impairments(self.paths, self.events)
        self._by_key = {p.key: p for p in self.paths}
        self.requested_mode = mode
        self.queue_num = queue_num
        self.seed = seed
        self.calibration_probes = calibration_probes
        if priority not in PRIORITIES:
            raise ValueError(f"lab priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")
        self.priority = priority
        self.mode: str | None = None
        self.why = ""
        self.calibration: dict[str, Any] = {}
        self.t0_ns: int | None = None
        self.started_wall: float | None = None
        self.tag = iptables.tag_for(os.getpid(), queue_num)
        self._engine: _Child | None = None
        self._servers: _Child | None = None

    @classmethod
    def from_config(cls, cfg: Any, **kw: Any) -> "Lab":
        """Build the lab of a loaded Config: every path with a `lab` table, the [lab] ports, mode and events."""
        from latency_router.lab.config import lab_arguments

        args = lab_arguments(cfg)
        args.update(kw)
        return cls(**args)

    # -- life cycle ---------------------------------------------------------------------------------

    async def __aenter__(self) -> "Lab":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the processes, install the rules (nfqueue mode), calibrate, then start the event clock."""
        if self._engine is not None:
            raise LabError("lab already started")
        try:
            await asyncio.to_thread(self._start_blocking)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(self._stop_blocking))
            raise
        log.info("lab: %s mode (%s); %d paths; %s", self.mode, self.why, len(self.paths), self.note())

    def _start_blocking(self) -> None:
        if self.requested_mode != "userspace" and iptables.available() is None:
            try:
                iptables.remove_stale()
            except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
                log.warning("lab: could not look for rules left by a crashed lab: %s", exc)
        self._engine = _Child("latency_router.lab.engine")
        self._servers = _Child("latency_router.lab.servers")
        paths = [
            {"key": p.key, "address": p.address, "udp_port": p.udp_port, "tcp_port": p.tcp_port,
             "http_port": p.http_port, "impairment": self._imp[p.address].to_json()}
            for p in self.paths
        ]
        self._engine.send({"mode": self.requested_mode, "queue_num": self.queue_num, "tag": self.tag,
                           "paths": paths, "seed": self.seed, "priority": self.priority})
        ready = self._engine.recv(START_TIMEOUT_S)
        if not ready.get("ready"):
            raise LabError(ready.get("error", "engine failed to start"))
        self.mode, self.why = ready["mode"], ready["why"]
        self._servers.send({"mode": self.mode, "paths": paths, "seed": None if self.seed is None else self.seed + 1})
        ready = self._servers.recv(START_TIMEOUT_S)
        if not ready.get("ready"):
            raise LabError(ready.get("error", "listeners failed to start"))
        self._calibrate()
        self.t0_ns = time.perf_counter_ns()
        self.started_wall = time.time()
        go = {"cmd": "go", "t0_ns": self.t0_ns,
              "overhead_ns": {b: int(us * 1e3) for b, us in self.calibration["overhead_us"].items()}}
        self._engine.request(go)
        self._servers.request(go)

    def _calibrate(self) -> None:
        """Measure the delayer's own cost per hold basis; only the read basis' (its wake-up) is subtracted.

        Holds counted from a kernel stamp (TCP) or the echo request's receive stamp (UDP) start when the reply
        left its server: what is left beyond the hold is the loopback path's own cost, which a real path has
        too. Subtracting even its low quantile made replies early when the delayer was busy (the path is then
        hotter than in any calibration), so those bases are measured and reported, not subtracted. The read
        basis loses the delayer's wake-up, which the kernel stamps of held handshakes measure directly.
        """
        assert self._engine is not None
        first = self.paths[0]
        n = self.calibration_probes
        held_n = max(20, n // 4)
        nfqueue = self.mode == "nfqueue"
        calibrate.udp_rtts_ns(first.address, first.udp_port, 20)  # warm caches and the echo path
        bare_udp = calibrate.udp_rtts_ns(first.address, first.udp_port, n)
        bare_tcp = calibrate.tcp_rtts_ns(first.address, first.tcp_port, held_n) if nfqueue else []
        self._engine.request({"cmd": "rules"})
        self.calibration = {"probes": n, "statistic": f"p{int(calibrate.QUANTILE * 100)}",
                            "bare_us": {"udp": calibrate.summary_us(bare_udp)},
                            "overhead_us": dict.fromkeys(BASES, 0.0)}
        if not nfqueue:
            # user-space holds start at the kernel's receive stamp, so nothing of ours needs subtracting
            return
        hold_ns = calibrate.HOLD_NS
        self._engine.request({"cmd": "calibrate", "hold_ns": hold_ns})
        echo_udp = calibrate.udp_rtts_ns(first.address, first.udp_port, held_n)
        held_tcp = calibrate.tcp_rtts_ns(first.address, first.tcp_port, held_n)
        phase = self._engine.request({"cmd": "calibrate", "hold_ns": 0})
        wake = phase["read_latency"]
        read_udp: list[int] = []
        if wake["count"] >= held_n // 2:
            read_us = min(calibrate.MAX_OVERHEAD_US, wake["p10_us"])
        else:
            # no kernel stamps here: time the wake-up as the extra round trip of replies passed when read
            read_udp = calibrate.udp_rtts_ns(first.address, first.udp_port, n)
            read_us = calibrate.overhead_us(read_udp, bare_udp, 0)
        for got, want, what in ((bare_udp, n, "bare udp"), (bare_tcp, held_n, "bare tcp"), (echo_udp, held_n, "held udp"),
                                (held_tcp, held_n, "held tcp")) + (((read_udp, n, "queued udp"),) if read_udp else ()):
            if len(got) < want // 2:
                raise LabError(f"calibration lost too many probes ({len(got)} of {want} {what})")
        self.calibration.update({
            "held_probes": held_n,
            "hold_us": hold_ns / 1e3,
            "bare_us": {"udp": calibrate.summary_us(bare_udp), "tcp": calibrate.summary_us(bare_tcp)},
            # each round trip through the queue less its hold: UDP echoes counted from the request's receive
            # stamp, handshakes from the kernel's queueing stamp
            "held_minus_hold_us": {"udp_echo": calibrate.summary_us([v - hold_ns for v in echo_udp]),
                                   "tcp": calibrate.summary_us([v - hold_ns for v in held_tcp])},
            "tcp_basis": phase["hold_basis"].get("tcp", {}),
            # the delayer's wake-up: from a held handshake's kernel stamp to its read, or (no stamps) timed by echoes
            "wake_us": {k: wake[k] for k in ("count", "p10_us", "p50_us", "p99_us")} if not read_udp
            else {"queued_udp": calibrate.summary_us(read_udp)},
            "overhead_us": {"kernel": 0.0, "echo": 0.0, "read": read_us},
        })

    async def stop(self) -> None:
        """Stop everything and remove the rules; safe to call twice and after a failed start."""
        await asyncio.shield(asyncio.to_thread(self._stop_blocking))

    def _stop_blocking(self) -> None:
        errors = []
        for child in (self._engine, self._servers):
            if child is not None:
                try:
                    child.stop()
                except Exception as exc:  # keep stopping the rest; report at the end
                    errors.append(exc)
        self._engine = self._servers = None
        # the engine removes its rules on exit; this catches an engine that died first
        if iptables.available() is None:
            try:
                iptables.remove_rules(self.tag)
            except Exception as exc:
                errors.append(exc)
        if errors:
            log.warning("lab: stopping: %s", "; ".join(str(e) for e in errors))

    @property
    def engine_pid(self) -> int | None:
        """The delayer process's pid while running (benchmarks read its CPU time)."""
        return self._engine.proc.pid if self._engine is not None else None

    @property
    def servers_pid(self) -> int | None:
        """The TCP and HTTP listeners' process id while running (tests stop it to fill its accept queues)."""
        return self._servers.proc.pid if self._servers is not None else None

    def note(self) -> str:
        """One line on what the running mode delays."""
        if self.mode == "nfqueue":
            read_us = self.calibration.get("overhead_us", {}).get("read", 0.0)
            return ("every reply from a lab address is held in the kernel path (TCP handshakes and ICMP too), "
                    "counted from the kernel's queueing stamp (TCP) or the echo request's receive stamp (UDP echo); "
                    f"the rest (ICMP) from when the delayer read it, less its calibrated wake-up ({read_us} us)")
        return ("user-space holds: UDP echo, TCP echo data and HTTP replies are delayed; "
                "TCP handshakes and ICMP are not")

    # -- ground truth -------------------------------------------------------------------------------

    def path(self, region: str, path: str) -> LabPathSpec:
        """The spec of one lab path (KeyError naming it when absent)."""
        try:
            return self._by_key[f"{region}/{path}"]
        except KeyError:
            raise KeyError(f"no lab path {region}/{path}") from None

    def elapsed(self) -> float:
        """Seconds since the lab started its event clock (0 before start)."""
        return 0.0 if self.t0_ns is None else (time.perf_counter_ns() - self.t0_ns) / 1e9

    def truth(self, region: str, path: str, at: float | None = None) -> float:
        """The RTT the lab adds on this path at `at` seconds after start (default now), in seconds; inf during an outage."""
        imp = self._imp[self.path(region, path).address]
        t = self.elapsed() if at is None else at
        if imp.down(t):
            return math.inf
        return imp.delay_at(t)

    def loss(self, region: str, path: str, at: float | None = None) -> float:
        """The share of replies the lab drops on this path at `at` (1.0 during an outage)."""
        imp = self._imp[self.path(region, path).address]
        t = self.elapsed() if at is None else at
        return 1.0 if imp.down(t) else imp.loss

    # -- reporting -----------------------------------------------------------------------------------

    def stats(self, reset: bool = False) -> dict[str, Any]:
        """Mode, packets delayed and dropped, release lateness (us) since the last reset, calibration, per path."""
        if self._engine is None or self._servers is None:
            raise LabError("lab not running")
        eng = self._engine.request({"cmd": "stats", "reset": reset})
        srv = self._servers.request({"cmd": "stats"})
        lat = eng["lateness"]
        per_address = eng.get("per_address", {})
        kernel = eng.get("kernel_queue", {})
        return {
            "mode": self.mode,
            "why": self.why,
            "queue_num": self.queue_num if self.mode == "nfqueue" else None,
            "handshake_delayed": self.mode == "nfqueue",
            "note": self.note(),
            "elapsed_s": round(self.elapsed(), 3),
            "packets_delayed": eng["delayed"],
            "packets_dropped": eng["dropped_loss"] + eng["dropped_outage"],
            "dropped_loss": eng["dropped_loss"],
            "dropped_outage": eng["dropped_outage"],
            "passed_undelayed": eng["passed"],
            "held_now": eng["held_now"],
            "held_peak": eng["held_peak"],
            "delayed_per_s": eng["delayed_per_s"],
            "window_s": eng["window_s"],
            "lateness_us": {k: lat[k] for k in ("p50_us", "p99_us", "max_us", "count")},
            "lateness_max_since_start_us": lat["max_since_start_us"],
            "on_time": lat["p99_us"] <= ON_TIME_P99_US and not kernel.get("queue_dropped") and not kernel.get("user_dropped"),
            "echo_service_us": {k: eng["echo_service"][k] for k in ("p50_us", "p99_us", "max_us", "count")},
            # the release's own cost: the verdict system call, which carries the reply through the loopback path
            "verdict_cost_us": {k: eng["verdict_cost"][k] for k in ("p50_us", "p99_us", "max_us", "count")},
            # the delayer's wake-up: a stamped packet's kernel queueing time to its read, when it found us asleep
            "read_latency_us": {k: eng["read_latency"][k] for k in ("p10_us", "p50_us", "p99_us", "count")},
            # what each kind of packet's hold was counted from (kernel stamp, echo request stamp, read time)
            "hold_basis": eng["hold_basis"],
            "wake_margin_us": eng["wake_margin_us"],
            # loopback datagrams sent to keep the release path warm before releases that follow an idle spell
            "warm_sends": eng["warm_sends"],
            "priority": eng["priority"],
            "overhead_us": eng["overhead_us"],
            "calibration": dict(self.calibration),
            "kernel_queue": kernel,
            "udp_echoed": eng["udp_echoed"],
            "echo_send_errors": eng["echo_send_errors"],
            "listeners": srv,
            "paths": {p.key: {"address": p.address, "delay_ms": self._delay_ms_now(p), **per_address.get(p.address, {})}
                      for p in self.paths},
        }

    def _delay_ms_now(self, p: LabPathSpec) -> float | None:
        """The injected delay now in milliseconds, None during an outage (JSON has no infinity)."""
        truth = self.truth(p.region, p.path)
        return round(truth * 1e3, 3) if math.isfinite(truth) else None

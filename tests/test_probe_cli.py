"""`latency-router probe`: statistics, text and JSON output, usage errors, and real runs against a UDP echo on 127.0.0.1."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import math
import re
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from latency_router.probes import make_prober
from latency_router.probes.base import LossReason, Sample
from latency_router.probes.cli import INTERRUPTED, TextReport, probe_main, run_probes, summary_lines
from latency_router.probes.stats import Spread, percentile, rfc3550_jitter, summarize

CLI = Path(sys.executable).with_name("latency-router")
JSON_KEYS = {"target", "sent", "received", "loss", "rtt_ms", "jitter_ms", "samples_ms", "loss_reasons"}


def ok(rtt_ms: float, seq: int = 0, kind: str = "udp", **kw) -> Sample:
    return Sample("udp://127.0.0.1:7007", kind, 1.0e9 + seq, rtt_ms=rtt_ms, seq=seq, **kw)


def lost(seq: int = 0, reason: LossReason = LossReason.TIMEOUT, detail: str = "", kind: str = "udp") -> Sample:
    return Sample.lost("udp://127.0.0.1:7007", kind, 1.0e9 + seq, reason, detail, seq=seq)


def render(samples: list[Sample], target: str, timeout_s: float, as_json: bool, kind: str = "",
           payload: int | None = None) -> str:
    """What probe_main prints for already-taken samples, put together from the same pieces it uses."""
    summary = summarize(samples, target, kind)
    if as_json:
        return json.dumps(summary.as_json())
    report = TextReport(target, timeout_s, io.StringIO(), payload)
    lines = [report.probe_line(s.seq if s.seq is not None else i, s) for i, s in enumerate(samples)]
    return "\n".join([*lines, *([""] if lines else []), *summary_lines(summary)])


# --- statistics --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "values, q, expected",
    [
        ([5.0], 50, 5.0),
        ([1.0, 2.0], 50, 1.5),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 50, 3.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 95, 4.8),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 0, 1.0),
        ([1.0, 2.0, 3.0, 4.0, 5.0], 100, 5.0),
    ],
    ids=["one", "two-mid", "odd-median", "p95-interpolated", "p0-is-min", "p100-is-max"],
)
def test_percentile(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


@pytest.mark.parametrize(
    "rtts, expected",
    [
        ([], None),
        ([10.0], None),
        ([10.0, 12.0], 2.0 / 16),
        ([10.0, 12.0, 11.0], 2.0 / 16 + (1.0 - 2.0 / 16) / 16),
        ([7.0, 7.0, 7.0, 7.0], 0.0),
    ],
    ids=["none", "one-reply", "one-step", "two-steps", "constant"],
)
def test_rfc3550_jitter(rtts, expected):
    got = rfc3550_jitter(rtts)
    assert got == (None if expected is None else pytest.approx(expected))


def test_summarize_counts_lost_probes_as_sent_never_as_rtt():
    samples = [ok(1.0, 0), lost(1), ok(3.0, 2), lost(2, LossReason.REFUSED, "Connection refused")]
    s = summarize(samples, "udp://127.0.0.1:7007")
    assert (s.sent, s.received, s.loss) == (4, 2, 0.5)
    assert s.rtt == Spread(min=1.0, avg=2.0, p50=2.0, p95=pytest.approx(2.9), max=3.0)
    assert s.samples_ms == (1.0, None, 3.0, None)
    assert s.loss_reasons == {"refused": 1, "timeout": 1}


def test_json_object_has_the_contract_fields_and_null_for_lost_probes():
    out = json.loads(render([ok(0.25, 0), lost(1), ok(0.35, 2)], "udp://127.0.0.1:7007", 1.0, as_json=True))
    assert set(out) == JSON_KEYS
    assert out["target"] == "udp://127.0.0.1:7007"
    assert (out["sent"], out["received"]) == (3, 2)
    assert out["loss"] == pytest.approx(1 / 3, abs=1e-6)
    assert out["rtt_ms"] == {"min": 0.25, "p50": 0.3, "avg": 0.3, "p95": 0.345, "max": 0.35}
    assert out["samples_ms"] == [0.25, None, 0.35]
    assert out["jitter_ms"] == pytest.approx(0.1 / 16, abs=1e-3)
    assert out["loss_reasons"] == {"timeout": 1}


def test_json_with_no_reply_keeps_its_shape():
    out = json.loads(render([lost(0), lost(1)], "udp://127.0.0.1:7007", 1.0, as_json=True))
    assert out["rtt_ms"] == {"min": None, "p50": None, "avg": None, "p95": None, "max": None}
    assert out["jitter_ms"] is None and out["samples_ms"] == [None, None] and out["loss"] == 1.0


def test_json_phases_for_tcp_and_http_summarize_each_phase_over_replies():
    samples = [
        ok(2.0, 0, kind="http", phases_ms={"connect": 0.5, "ttfb": 2.0}),
        ok(4.0, 1, kind="http", phases_ms={"connect": 1.5, "ttfb": 4.0}),
        lost(2, LossReason.BAD_STATUS, "503", kind="http"),
    ]
    out = json.loads(render(samples, "http://127.0.0.1:8080/", 1.0, as_json=True, kind="http"))
    assert set(out) == JSON_KEYS | {"phases_ms"}
    assert list(out["phases_ms"]) == ["connect", "ttfb"]
    assert out["phases_ms"]["connect"] == {"min": 0.5, "p50": 1.0, "avg": 1.0, "p95": 1.45, "max": 1.5}
    # A tcp run where everything was lost still has the key, empty.
    out = json.loads(render([lost(0, kind="tcp")], "tcp://127.0.0.1:1", 1.0, as_json=True, kind="tcp"))
    assert out["phases_ms"] == {}


def test_text_is_fping_like():
    samples = [ok(0.123, 0), lost(1), ok(0.2, 2), lost(3, LossReason.REFUSED, "Connection refused")]
    lines = render(samples, "udp://127.0.0.1:7007", 1.0, as_json=False, payload=64).splitlines()
    assert lines[0] == "udp://127.0.0.1:7007 : [0], 64 bytes, 0.123 ms (0.123 avg, 0% loss)"
    assert lines[1] == "udp://127.0.0.1:7007 : [1], timeout (1000 ms) (0.123 avg, 50% loss)"
    assert lines[2] == "udp://127.0.0.1:7007 : [2], 64 bytes, 0.200 ms (0.162 avg, 33% loss)"
    assert lines[3] == "udp://127.0.0.1:7007 : [3], refused (Connection refused) (0.162 avg, 50% loss)"
    assert lines[4] == ""
    assert lines[5] == (
        "udp://127.0.0.1:7007 : xmt/rcv/%loss = 4/2/50%, min/avg/p50/p95/max = "
        "0.123/0.162/0.162/0.196/0.200 ms, jitter 0.005 ms, lost: refused 1, timeout 1"
    )


def test_text_summary_without_replies_has_only_counts():
    lines = render([lost(0)], "udp://127.0.0.1:7007", 0.5, as_json=False).splitlines()
    assert lines[-1] == "udp://127.0.0.1:7007 : xmt/rcv/%loss = 1/0/100%, lost: timeout 1"
    assert lines[0] == "udp://127.0.0.1:7007 : [0], timeout (500 ms) (NaN avg, 100% loss)"


rtt_or_lost = st.one_of(st.none(), st.floats(min_value=0.001, max_value=60_000, allow_nan=False))


@given(st.lists(rtt_or_lost, min_size=1, max_size=60))
def test_summary_properties(values):
    samples = [ok(v, i) if v is not None else lost(i) for i, v in enumerate(values)]
    s = summarize(samples, "udp://127.0.0.1:7007")
    replies = [v for v in values if v is not None]
    assert s.sent == len(values) and s.received == len(replies)
    assert s.loss_reasons.get("timeout", 0) == len(values) - len(replies)
    assert list(s.samples_ms) == values
    if not replies:
        assert s.rtt is None and s.jitter_ms is None
        return
    r = s.rtt
    assert r.min <= r.p50 <= r.p95 <= r.max
    assert r.min <= r.avg <= r.max
    assert r.min == min(replies) and r.max == max(replies)  # a lost probe never shows up as an RTT
    if len(replies) >= 2:
        assert s.jitter_ms >= 0
        assert s.jitter_ms <= max(replies) - min(replies) + 1e-9
    else:
        assert s.jitter_ms is None
    out = json.loads(json.dumps(s.as_json()))
    assert [v is None for v in out["samples_ms"]] == [v is None for v in values]


@given(st.lists(st.floats(min_value=0, max_value=1e6, allow_nan=False), min_size=1, max_size=50),
       st.floats(min_value=0, max_value=100))
def test_percentile_stays_within_the_values_and_grows_with_q(values, q):
    ordered = sorted(values)
    p = percentile(ordered, q)
    assert ordered[0] <= p <= ordered[-1]
    assert percentile(ordered, min(100.0, q + 5)) >= p
    assert not math.isnan(p)


# --- usage errors (in process) -----------------------------------------------------------------------------


def args(url="udp://127.0.0.1:7007", count=1, interval="1s", timeout="1s", as_json=False) -> argparse.Namespace:
    return argparse.Namespace(url=url, count=count, interval=interval, timeout=timeout, json=as_json)


@pytest.mark.parametrize(
    "kw, named",
    [
        ({"interval": "fast"}, "--interval"),
        ({"timeout": "10 parsecs"}, "--timeout"),
        ({"timeout": "0s"}, "--timeout"),
        ({"count": 0}, "--count"),
        ({"count": 1_000_001}, "--count"),
        ({"timeout": "9" * 400 + "s"}, "--timeout"),
        ({"interval": "9" * 400 + "s"}, "--interval"),
        ({"timeout": "25h"}, "--timeout"),
        ({"url": "udpp://127.0.0.1:7007"}, "URL"),
        ({"url": "no-scheme-at-all"}, "URL"),
        ({"url": "tcp://a..b:80"}, "URL"),
        ({"url": "icmp://1.2.3.4:"}, "URL"),
    ],
    ids=["bad-interval", "bad-timeout", "zero-timeout", "zero-count", "huge-count", "infinite-timeout",
         "infinite-interval", "day-long-timeout", "unknown-scheme", "no-scheme", "empty-label", "empty-port"],
)
def test_usage_errors_exit_2_with_one_line_naming_the_argument(kw, named):
    out, err = io.StringIO(), io.StringIO()
    assert probe_main(args(**kw), out=out, err=err) == 2
    lines = err.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"latency-router probe: {named}")
    assert out.getvalue() == ""


# --- real runs against 127.0.0.1 ---------------------------------------------------------------------------


class Echo:
    """A UDP echo on 127.0.0.1 in a thread, answering each datagram as received after `delay_s`."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.arrivals: list[float] = []  # time.monotonic() of each datagram
        self.replies: list[float] = []  # time.monotonic() of each reply sent
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        pending: list[tuple[float, bytes, tuple]] = []
        deadline = time.monotonic() + 60  # bounded even if a test forgets to stop it
        while not self._stop.is_set() and time.monotonic() < deadline:
            wait = min([0.05] + [max(0.0, due - time.monotonic()) for due, _, _ in pending])
            readable, _, _ = select.select([self.sock], [], [], wait)
            if readable:
                data, peer = self.sock.recvfrom(65535)
                now = time.monotonic()
                self.arrivals.append(now)
                pending.append((now + self.delay_s, data, peer))
            now = time.monotonic()
            for item in [p for p in pending if p[0] <= now]:
                pending.remove(item)
                self.replies.append(time.monotonic())
                self.sock.sendto(item[1], item[2])

    def __enter__(self) -> "Echo":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


def run_cli(*argv: str, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run([str(CLI), "probe", *argv], capture_output=True, text=True, timeout=timeout)


def closed_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_json_against_an_echo():
    with Echo() as echo:
        proc = run_cli(f"udp://127.0.0.1:{echo.port}", "--count", "3", "--interval", "50ms", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert set(out) == JSON_KEYS
    assert (out["target"], out["sent"], out["received"], out["loss"]) == (f"udp://127.0.0.1:{echo.port}", 3, 3, 0.0)
    assert len(out["samples_ms"]) == 3 and all(0 < v < 1000 for v in out["samples_ms"])
    r = out["rtt_ms"]
    assert 0 < r["min"] <= r["p50"] <= r["p95"] <= r["max"]
    assert out["jitter_ms"] >= 0 and out["loss_reasons"] == {}
    assert len(echo.arrivals) == 3


def test_cli_text_against_an_echo():
    with Echo() as echo:
        proc = run_cli(f"udp://127.0.0.1:{echo.port}", "--count", "2", "--interval", "20ms")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    target = f"udp://127.0.0.1:{echo.port}"
    probe_line = re.compile(rf"^{re.escape(target)} : \[[01]\], 64 bytes, \d+\.\d+ ms \(\d+\.\d+ avg, 0% loss\)$")
    assert all(probe_line.match(line) for line in lines[:2]), lines
    assert lines[2] == ""
    assert re.match(rf"^{re.escape(target)} : xmt/rcv/%loss = 2/2/0%, min/avg/p50/p95/max = [\d./]+ ms, jitter [\d.]+ ms$",
                    lines[3]), lines[3]


def test_cli_sends_at_the_interval_without_waiting_for_slow_replies():
    # The echo holds each reply 1 s; probes go out 50 ms apart. Sending without waiting means every probe
    # reached the echo before it answered the first one (an ordering, not an elapsed-time bound).
    with Echo(delay_s=1.0) as echo:
        proc = run_cli(f"udp://127.0.0.1:{echo.port}", "--count", "3", "--interval", "50ms", "--timeout", "5s", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["received"] == 3
    assert len(echo.arrivals) == 3 and echo.replies
    assert echo.arrivals[-1] < echo.replies[0], (echo.arrivals, echo.replies)
    assert all(v >= 990 for v in out["samples_ms"])


def test_cli_closed_port_is_loss_and_exit_1():
    target = f"udp://127.0.0.1:{closed_udp_port()}"
    proc = run_cli(target, "--count", "2", "--interval", "20ms", "--timeout", "200ms", "--json")
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert (out["sent"], out["received"], out["loss"]) == (2, 0, 1.0)
    assert out["samples_ms"] == [None, None]
    assert sum(out["loss_reasons"].values()) == 2


@pytest.mark.parametrize(
    "argv, named",
    [
        (["udpp://127.0.0.1:7"], "URL"),
        (["udp://127.0.0.1:7", "--interval", "soon"], "--interval"),
    ],
    ids=["bad-url", "bad-interval"],
)
def test_cli_usage_error_exit_2(argv, named):
    proc = run_cli(*argv)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"latency-router probe: {named}") and "Traceback" not in proc.stderr


def test_cli_ctrl_c_prints_the_summary_of_what_came_back():
    with Echo() as echo:
        proc = subprocess.Popen([str(CLI), "probe", f"udp://127.0.0.1:{echo.port}", "--count", "1000", "--interval", "20ms"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            first = proc.stdout.readline()  # returns once the first probe is back (or at EOF, should the CLI die)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    assert first.startswith(f"udp://127.0.0.1:{echo.port} : [0], 64 bytes, ")
    summary = out.splitlines()[-1]
    sent = int(re.search(r"xmt/rcv/%loss = (\d+)/", summary).group(1))
    assert 1 <= sent < 1000 and "Traceback" not in err


def test_cli_ctrl_c_counts_probes_in_flight_as_sent_and_lost():
    """Ctrl-C while probes wait on a silent server: each one that went out is sent and lost, none is forgotten."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        target = f"udp://127.0.0.1:{silent.getsockname()[1]}"
        proc = subprocess.Popen([str(CLI), "probe", target, "--count", "100", "--interval", "20ms", "--timeout", "30s",
                                 "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            silent.settimeout(20)
            for _ in range(3):  # three probes are out (and none can come back): interrupt
                silent.recv(65535)
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=20)
        finally:
            proc.kill()
        silent.setblocking(False)
        arrived = 3
        while True:
            try:
                silent.recv(65535)
            except BlockingIOError:
                break
            arrived += 1
    assert proc.returncode == 1, err
    summary = json.loads(out)
    assert summary["received"] == 0 and summary["loss"] == 1.0
    assert summary["sent"] >= arrived >= 3, (summary["sent"], arrived)  # everything the server saw was counted
    assert summary["sent"] < 100 and summary["samples_ms"] == [None] * summary["sent"]
    assert summary["loss_reasons"] == {"timeout": summary["sent"]}


async def test_run_probes_cancelled_fills_the_started_probes_as_interrupted():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        prober = make_prober(f"udp://127.0.0.1:{silent.getsockname()[1]}")
        results: list[Sample | None] = [None] * 50
        seen: list[int] = []
        work = asyncio.create_task(run_probes(prober, 50, 0.01, 30.0, results, lambda seq, s: seen.append(seq)))
        loop = asyncio.get_running_loop()
        silent.setblocking(False)
        async with asyncio.timeout(20):
            for _ in range(3):
                await loop.sock_recv(silent, 65535)
        work.cancel()
        with pytest.raises(asyncio.CancelledError):
            await work
        await prober.aclose()
    started = [s for s in results if s is not None]
    assert len(started) >= 3 and seen == []
    assert [s.seq for s in started] == list(range(len(started)))  # the first N, in order, no gaps
    assert all(s.loss is LossReason.TIMEOUT and s.detail == INTERRUPTED for s in started)
    assert all(s is None for s in results[len(started):])  # never started: never sent

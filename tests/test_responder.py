"""The region-side echo responder: RFC 862 (every datagram back as received), in-process and as `latency-router responder`."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest
import uvloop

from latency_router.probes import make_prober
from latency_router.probes.responder import MODES, EchoResponder, format_address, serve_echo

CLI = Path(sys.executable).with_name("latency-router")
LOOPS: dict[str, Callable[[], asyncio.AbstractEventLoop]] = {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
BANNER = re.compile(r"^latency-router responder: listening on (udp://\S+) \(RFC 862 echo, (\w+) mode\)$")

PAYLOADS = {
    "empty": b"",
    "text": b"hello, echo\n",
    "binary": bytes(range(256)) * 4,
    "zeros": bytes(100),
    "random": os.urandom(1500),
    "largest-ipv4": os.urandom(65507),
}


def run_on(loop_name: str, coro: Coroutine[Any, Any, Any]) -> Any:
    with asyncio.Runner(loop_factory=LOOPS[loop_name]) as r:
        return r.run(asyncio.wait_for(coro, 30))


def exchange(address: tuple, payloads: list[bytes], timeout_s: float = 5.0) -> list[tuple[bytes, tuple]]:
    """A plain blocking client, independent of the code under test: send each payload, read its echo."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout_s)
        s.bind((address[0], 0))
        out = []
        for data in payloads:
            s.sendto(data, address[:2])
            out.append(s.recvfrom(70000))
        return out


@pytest.mark.parametrize("loop_name", sorted(LOOPS))
@pytest.mark.parametrize("mode", MODES)
def test_returns_every_datagram_unchanged(mode: str, loop_name: str) -> None:
    """RFC 862: whatever arrives goes back byte for byte, latency-router's probes or anything else."""

    async def scenario() -> tuple[tuple, list[tuple[bytes, tuple]], int]:
        async with EchoResponder("127.0.0.1", 0, mode=mode) as responder:
            replies = await asyncio.to_thread(exchange, responder.address, list(PAYLOADS.values()))
            return responder.address, replies, responder.echoed

    address, replies, echoed = run_on(loop_name, scenario())
    assert [data for data, _ in replies] == list(PAYLOADS.values())
    assert all(peer[:2] == address[:2] for _, peer in replies)  # from the address we sent to
    assert echoed == len(PAYLOADS)


@pytest.mark.parametrize("mode", MODES)
def test_ipv6_loopback(mode: str) -> None:
    async def scenario() -> tuple[str, list[tuple[bytes, tuple]]]:
        async with EchoResponder("::1", 0, mode=mode) as responder:
            return responder.url, await asyncio.to_thread(exchange, responder.address, [b"six", os.urandom(900)])

    url, replies = run_on("uvloop", scenario())
    assert url.startswith("udp://[::1]:")
    assert [len(d) for d, _ in replies] == [3, 900] and replies[0][0] == b"six"


@pytest.mark.parametrize("mode", MODES)
def test_each_client_gets_its_own_replies(mode: str) -> None:
    async def scenario() -> list[list[tuple[bytes, tuple]]]:
        async with EchoResponder("127.0.0.1", 0, mode=mode) as responder:
            jobs = [asyncio.to_thread(exchange, responder.address, [f"{c}:{i}".encode() for i in range(50)]) for c in range(4)]
            return await asyncio.gather(*jobs)

    for client, replies in enumerate(run_on("uvloop", scenario())):
        assert [d for d, _ in replies] == [f"{client}:{i}".encode() for i in range(50)]


@pytest.mark.parametrize("mode", MODES)
def test_udp_probes_against_the_responder(mode: str) -> None:
    async def scenario() -> list:
        async with EchoResponder("127.0.0.1", 0, mode=mode) as responder:
            prober = make_prober(responder.url + "?size=256")
            try:
                return await asyncio.gather(*(prober.probe(5.0) for _ in range(500)))
            finally:
                await prober.aclose()

    samples = run_on("uvloop", scenario())
    assert all(s.ok and 0 < s.rtt_ms < 5000 for s in samples), [s for s in samples if not s.ok][:3]


def test_serve_echo_runs_until_cancelled() -> None:
    async def scenario() -> tuple[list[tuple[bytes, tuple]], bool]:
        ready = asyncio.Event()
        bound: list[tuple] = []
        task = asyncio.create_task(serve_echo("127.0.0.1", 0, ready=ready, on_listening=bound.append))
        await asyncio.wait_for(ready.wait(), 5)
        replies = await asyncio.to_thread(exchange, bound[0], [b"ping"])
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Closed: the port answers no more (ICMP port unreachable shows as a refused read).
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(bound[0])
            s.settimeout(2)
            s.send(b"anyone?")
            try:
                s.recv(100)
                closed = False
            except ConnectionRefusedError:
                closed = True
        return replies, closed

    replies, closed = run_on("asyncio", scenario())
    assert replies[0][0] == b"ping" and closed


def test_unknown_mode_is_refused() -> None:
    with pytest.raises(ValueError, match="unknown responder mode 'turbo'"):
        EchoResponder("127.0.0.1", 0, mode="turbo")


def test_format_address() -> None:
    assert format_address(("127.0.0.1", 7007)) == "udp://127.0.0.1:7007"
    assert format_address(("::1", 7007, 0, 0)) == "udp://[::1]:7007"


# ----- the command


def start_cli(listen: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen([str(CLI), "responder", "--listen", listen], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().rstrip("\n")
    return proc, line


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_cli_prints_where_it_listens_echoes_and_stops_on_a_signal(signum: int) -> None:
    proc, line = start_cli("udp://127.0.0.1:0")
    try:
        match = BANNER.match(line)
        assert match, line
        url, mode = match.groups()
        assert mode == "fast"
        port = int(url.rsplit(":", 1)[1])
        assert port > 0
        replies = exchange(("127.0.0.1", port), [b"region-side", os.urandom(2000)])
        assert replies[0][0] == b"region-side" and len(replies[1][0]) == 2000
    finally:
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
    assert out == ""  # the banner was the one line on stdout
    assert "stopped after echoing 2 datagrams" in err


def test_cli_ipv6() -> None:
    proc, line = start_cli("udp://[::1]:0")
    try:
        match = BANNER.match(line)
        assert match and match.group(1).startswith("udp://[::1]:"), line
        port = int(match.group(1).rsplit(":", 1)[1])
        assert exchange(("::1", port), [b"v6"])[0][0] == b"v6"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0


@pytest.mark.parametrize(
    ("listen", "message"),
    [
        ("udp://127.0.0.1", "udp://HOST:PORT needs a port"),
        ("tcp://127.0.0.1:7007", "expected a udp:// URL"),
        ("udp://127.0.0.1:7007?size=64", "takes no options"),
    ],
)
def test_cli_bad_listen_url_exits_2(listen: str, message: str) -> None:
    proc = subprocess.run([str(CLI), "responder", "--listen", listen], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stdout == "" and message in proc.stderr


def test_cli_port_in_use_exits_1() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        proc = subprocess.run([str(CLI), "responder", "--listen", f"udp://127.0.0.1:{port}"],
                              capture_output=True, text=True, timeout=30)
    assert proc.returncode == 1
    assert f"cannot listen on udp://127.0.0.1:{port}" in proc.stderr and "in use" in proc.stderr


def test_module_entry_selects_the_mode() -> None:
    cmd = [sys.executable, "-m", "latency_router.probes.responder", "--listen", "udp://127.0.0.1:0", "--mode", "dgram"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        match = BANNER.match(proc.stdout.readline().rstrip("\n"))
        assert match and match.group(2) == "dgram"
        port = int(match.group(1).rsplit(":", 1)[1])
        assert exchange(("127.0.0.1", port), [b"x" * 300])[0][0] == b"x" * 300
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0

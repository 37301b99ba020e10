"""tcp:// probes: URL parsing, tcpi_rtt beside the wall-clock connect, each loss against real sockets on 127.0.0.1."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
import uvloop

from latency_router.probes.base import LossReason
from latency_router.probes.tcp import TcpProber, TcpSpec, read_tcp_info


def prober(url: str) -> TcpProber:
    return TcpProber(TcpProber.parse_url(url))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on 127.0.0.1 port 0; the kernel completes handshakes without accept() (backlog 128 holds them)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    yield sock
    sock.close()


@pytest.fixture
def full_listener() -> Iterator[socket.socket]:
    """A listener whose accept queue is full: the kernel drops further SYNs, so a connect never completes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(0)  # Linux queues backlog + 1 = one connection
    filler = socket.create_connection(sock.getsockname(), timeout=2)
    yield sock
    filler.close()
    sock.close()


@pytest.mark.parametrize(
    "url, spec",
    [
        ("tcp://127.0.0.1:80", TcpSpec("tcp://127.0.0.1:80", "127.0.0.1", 80)),
        ("tcp://[::1]:443", TcpSpec("tcp://[::1]:443", "::1", 443)),
        ("tcp://example.net:22/", TcpSpec("tcp://example.net:22/", "example.net", 22)),
    ],
    ids=["ipv4", "ipv6", "name"],
)
def test_parse_url_accepts(url: str, spec: TcpSpec) -> None:
    assert TcpProber.parse_url(url) == spec


@pytest.mark.parametrize(
    "url, message",
    [
        ("tcp://127.0.0.1", "tcp://HOST:PORT needs a port"),
        ("tcp://:80", "missing HOST"),
        ("tcp://127.0.0.1:99999", "the port must be a number within 1..65535"),
        ("tcp://127.0.0.1:0", "the port must be a number within 1..65535"),
        ("tcp://127.0.0.1:http", "the port must be a number within 1..65535"),
        ("tcp://127.0.0.1:80/path", "takes no path or query"),
        ("tcp://127.0.0.1:80?x", "takes no path or query"),
        ("tcp://a..b:80", "is neither an IP address nor a host name"),
        ("tcp://a\0b:80", "is neither an IP address nor a host name"),
        ("udp://127.0.0.1:80", "expected a tcp:// URL"),
    ],
    ids=["no-port", "no-host", "port-range", "port-zero", "port-name", "path", "query", "empty-label", "nul", "scheme"],
)
def test_parse_url_rejects(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TcpProber.parse_url(url)


async def test_success_reports_tcpi_rtt_and_connect(listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    p = prober(f"tcp://127.0.0.1:{port}")
    sample = await p.probe(2.0)
    await p.aclose()
    assert sample.ok, sample
    assert sample.kind == "tcp" and sample.target == f"tcp://127.0.0.1:{port}"
    assert sample.phases_ms is not None and set(sample.phases_ms) == {"connect", "tcpi_rtt"}
    assert sample.rtt_ms == sample.phases_ms["tcpi_rtt"]
    assert 0 < sample.rtt_ms < 2000 and 0 < sample.phases_ms["connect"] < 2000
    # The kernel's SYN -> SYN-ACK time lies inside our connect call (whole microseconds), which a misread field
    # of struct tcp_info (pmtu, ssthresh, ...) would not.
    assert sample.rtt_ms <= sample.phases_ms["connect"] + 0.001
    assert "tcpi_rtt" in sample.detail


def test_success_under_uvloop(listener: socket.socket) -> None:
    """The daemon runs uvloop: the add_writer-driven connect must work there too."""
    p = prober(f"tcp://127.0.0.1:{listener.getsockname()[1]}")
    sample = uvloop.run(p.probe(2.0))
    assert sample.ok and sample.phases_ms and sample.phases_ms["tcpi_rtt"] > 0, sample


async def test_success_ipv6() -> None:
    with socket.socket(socket.AF_INET6) as server:
        server.bind(("::1", 0))
        server.listen(4)
        sample = await prober(f"tcp://[::1]:{server.getsockname()[1]}").probe(2.0)
    assert sample.ok and sample.rtt_ms is not None and sample.rtt_ms > 0, sample


async def test_name_is_resolved_at_probe_time() -> None:
    # Listen where the name's first address is (127.0.0.1 or ::1, as this host orders them): the probe goes there.
    family, _, _, _, sockaddr = socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)[0]
    with socket.socket(family) as server:
        server.bind(sockaddr)
        server.listen(4)
        p = prober(f"tcp://localhost:{server.getsockname()[1]}")
        samples = [await p.probe(2.0) for _ in range(2)]
    assert all(s.ok and s.phases_ms and s.phases_ms["tcpi_rtt"] > 0 for s in samples), samples
    assert p._address.lookups == 1  # looked up once, then cached


def test_read_tcp_info_unpacks_the_handshake_rtt(listener: socket.socket) -> None:
    """An independent check of the struct layout: state ESTABLISHED (1) and a plausible tcpi_rtt in microseconds."""
    with socket.create_connection(listener.getsockname(), timeout=2) as client:
        info = read_tcp_info(client)
    assert info is not None
    state, rtt_us, retrans = info
    assert state == 1
    assert 0 < rtt_us < 2_000_000
    assert retrans == 0


async def test_refused() -> None:
    with socket.socket() as placeholder:  # a port that was free a moment ago and has no listener
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    sample = await prober(f"tcp://127.0.0.1:{port}").probe(2.0)
    assert sample.loss is LossReason.REFUSED, sample
    assert sample.rtt_ms is None and "ConnectionRefusedError" in sample.detail


async def test_timeout_when_syns_are_dropped(full_listener: socket.socket) -> None:
    sample = await prober(f"tcp://127.0.0.1:{full_listener.getsockname()[1]}").probe(0.3)
    assert sample.loss is LossReason.TIMEOUT, sample
    assert "300 ms" in sample.detail


@pytest.mark.root
@pytest.mark.parametrize("url", ["tcp://192.0.2.1:80", "tcp://[2001:db8::1]:80"], ids=["ipv4", "ipv6"])
def test_unreachable_when_there_is_no_route(netns, url: str) -> None:
    """In a fresh network namespace only the loopback has a route: no packet can leave for a documentation address."""
    netns.sh("ip link set lo up")
    sample = netns.run(lambda: prober(url).probe(1.0))
    assert sample.loss is LossReason.UNREACHABLE, sample
    assert "unreachable" in sample.detail.lower()


async def test_unresolvable_name_is_a_lost_sample_not_an_exception() -> None:
    sample = await prober("tcp://no-such-host.invalid:80").probe(2.0)
    assert not sample.ok and sample.loss in (LossReason.ERROR, LossReason.UNREACHABLE, LossReason.TIMEOUT), sample
    assert sample.detail


async def test_repeated_probes_leave_no_socket_behind(listener: socket.socket) -> None:
    before = len(os.listdir("/proc/self/fd"))
    p = prober(f"tcp://127.0.0.1:{listener.getsockname()[1]}")
    samples = [await p.probe(2.0) for _ in range(20)]
    assert all(s.ok for s in samples)
    assert len(os.listdir("/proc/self/fd")) <= before

"""http:// and https:// probes against aiohttp servers on 127.0.0.1 port 0: phases, warm TTFB, TLS split, losses."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import struct
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import uvloop
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from latency_router.probes.base import LossReason
from latency_router.probes.http import TIMING_NOTE, USER_AGENT, HttpProber
from test_probe_common import FakeResolver, fake_resolver

COLD_PHASES = {"dns", "connect", "ttfb", "transfer", "total"}


@pytest.fixture
def resolver(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeResolver]:
    """Names under .slow.test and .fast.test, answered by the test (see test_probe_common)."""
    yield from fake_resolver(monkeypatch)


class Server:
    """An aiohttp app on 127.0.0.1 port 0 that records the client ports it saw (one per TCP connection)."""

    def __init__(self) -> None:
        self.peers: set[int] = set()
        self.user_agents: set[str] = set()
        self.queries: list[str] = []
        app = web.Application()
        app.router.add_get("/", self.hello)
        app.router.add_get("/status/{code}", self.status)
        app.router.add_get("/slow", self.slow)
        app.router.add_get("/close", self.close)
        app.router.add_get("/slowish", self.slowish)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)  # do not wait out /slow at teardown
        self.port = 0

    async def start(self, ssl_context: ssl.SSLContext | None = None, host: str = "127.0.0.1") -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, host, 0, ssl_context=ssl_context)
        await site.start()
        self.port = self.runner.addresses[0][1]

    def _seen(self, request: web.Request) -> None:
        self.peers.add(request.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        self.user_agents.add(request.headers.get("User-Agent", ""))
        self.queries.append(request.query_string)

    async def hello(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.Response(text="hello, prober\n" * 100)

    async def status(self, request: web.Request) -> web.Response:
        self._seen(request)
        return web.Response(status=int(request.match_info["code"]), text="status")

    async def slow(self, request: web.Request) -> web.Response:
        self._seen(request)
        await asyncio.sleep(5)
        return web.Response(text="late")

    async def slowish(self, request: web.Request) -> web.Response:
        self._seen(request)
        await asyncio.sleep(0.4)
        return web.Response(text="a while")

    async def close(self, request: web.Request) -> web.Response:
        self._seen(request)
        response = web.Response(text="no keep-alive")
        response.force_close()
        return response


@pytest.fixture
async def server() -> AsyncIterator[Server]:
    srv = Server()
    await srv.start()
    yield srv
    await srv.runner.cleanup()


async def probe_n(url: str, n: int = 1, timeout_s: float = 2.0) -> list:
    p = HttpProber(HttpProber.parse_url(url))
    try:
        return [await p.probe(timeout_s) for _ in range(n)]
    finally:
        await p.aclose()


# --- parsing ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, request_url, status, body, insecure",
    [
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080/", None, None, False),
        ("https://example.net/health?status=200,204", "https://example.net/health", {200, 204}, None, False),
        ("http://[::1]:81/x?a=1&body=ok%20now&b=%2F", "http://[::1]:81/x?a=1&b=%2F", None, "ok now", False),
        ("https://10.0.0.1/?insecure=1&body=v[0-9]+", "https://10.0.0.1/", None, "v[0-9]+", True),
    ],
    ids=["bare", "status-list", "ipv6-body-kept-query", "insecure-regex-plus"],
)
def test_parse_url_accepts(url: str, request_url: str, status, body, insecure: bool) -> None:
    spec = HttpProber.parse_url(url)
    assert spec.request_url == request_url
    assert spec.status == (frozenset(status) if status else None)
    assert (spec.body.pattern if spec.body else None) == body
    assert spec.insecure is insecure and spec.https is url.startswith("https")


@pytest.mark.parametrize(
    "url, message",
    [
        ("http://", "missing HOST"),
        ("http://127.0.0.1:0/", "the port must be a number"),
        ("http://127.0.0.1/?status=ok", "status='ok' must be HTTP status codes"),
        ("http://127.0.0.1/?status=700", "status='700' must be HTTP status codes"),
        ("http://127.0.0.1/?body=(", "body='\\(' is not a valid regular expression"),
        ("http://127.0.0.1/?insecure=1", "insecure=1 applies to https:// only"),
        ("https://127.0.0.1/?insecure=perhaps", "insecure='perhaps' must be 1 or 0"),
        ("http://user:secret@127.0.0.1/", "credentials in a probe URL are not supported"),
        ("ftp://127.0.0.1/", "expected an http:// or https:// URL"),
        ("http://127.0.0.1/?phases=-1", "phases='-1' must be a whole number"),
        ("http://127.0.0.1/?phases=two", "phases='two' must be a whole number"),
        ("http://127.0.0.1/?phases=2&phases=3", "'phases' given twice"),
        ("http://a..b/", "is neither an IP address nor a host name"),
    ],
    ids=[
        "no-host", "port", "status-word", "status-range", "regex", "insecure-http", "insecure-flag", "creds", "scheme",
        "phases-negative", "phases-word", "phases-twice", "empty-label",
    ],
)
def test_parse_url_rejects(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HttpProber.parse_url(url)


# --- plain http ---------------------------------------------------------------------------------------------


async def test_success_has_every_phase_and_warm_ttfb(server: Server) -> None:
    samples = await probe_n(f"http://127.0.0.1:{server.port}/?probe=1&body=hello,%20prober", n=3)
    for sample in samples:
        assert sample.ok, sample
        assert sample.kind == "http"
        assert set(sample.phases_ms) == COLD_PHASES | {"ttfb_warm"}
        assert sample.rtt_ms == sample.phases_ms["ttfb_warm"] > 0
        assert all(v >= 0 for v in sample.phases_ms.values())
        assert sample.phases_ms["dns"] == 0.0  # an IP literal needs no lookup
        assert sample.phases_ms["connect"] > 0 and sample.phases_ms["ttfb"] > 0
        parts = sample.phases_ms["connect"] + sample.phases_ms["ttfb"] + sample.phases_ms["transfer"]
        assert parts <= sample.phases_ms["total"]
        assert sample.detail.startswith("ttfb on a warm keep-alive connection")
        assert TIMING_NOTE in sample.detail and "include event-loop delay" in sample.detail
    # One kept-alive connection for the RTT, plus a fresh one per probe for the phases (the first probe's
    # fresh connection is the one that stays warm): 3 probes -> 3 connections, 6 requests.
    assert len(server.peers) == 3 and len(server.queries) == 6
    assert set(server.queries) == {"probe=1"}  # the probe's own options never reach the server
    assert server.user_agents == {USER_AGENT}


async def test_name_is_resolved_and_timed() -> None:
    # Listen where the name's first address is (127.0.0.1 or ::1, as this host orders them).
    srv = Server()
    await srv.start(host=socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM)[0][4][0])
    try:
        samples = await probe_n(f"http://localhost:{srv.port}/", n=2)
    finally:
        await srv.runner.cleanup()
    assert all(s.ok and s.phases_ms["dns"] > 0 for s in samples), samples  # the fresh connection's own lookup


async def test_an_rtt_above_half_the_timeout_is_kept(server: Server) -> None:
    """The server takes 400 ms, the timeout is 700 ms: the warm request fits, a fresh one after it does not."""
    samples = await probe_n(f"http://127.0.0.1:{server.port}/slowish", n=3, timeout_s=0.7)
    assert all(s.ok and s.rtt_ms >= 390 for s in samples), samples
    first, *rest = samples
    assert first.detail.startswith("ttfb on the connection this probe opened (no time left")
    assert set(first.phases_ms) == COLD_PHASES | {"ttfb_warm"}  # that connection was a fresh one
    for sample in rest:
        assert sample.detail.startswith("ttfb on a warm keep-alive connection; no fresh-connection phases: ")
        assert sample.phases_ms == {"ttfb_warm": sample.rtt_ms}
    assert len(server.peers) == 1  # one connection, kept alive throughout


@pytest.mark.parametrize(
    "every, requests, connections, with_phases",
    [(1, 8, 4, [True] * 4), (2, 6, 2, [True, False, True, False]), (0, 5, 1, [False] * 4)],
    ids=["every-probe", "every-2nd", "never"],
)
async def test_phases_every_nth_probe(server: Server, every: int, requests: int, connections: int,
                                      with_phases: list[bool]) -> None:
    samples = await probe_n(f"http://127.0.0.1:{server.port}/?phases={every}", n=4)
    assert all(s.ok for s in samples), samples
    assert [set(s.phases_ms) == COLD_PHASES | {"ttfb_warm"} for s in samples] == with_phases
    for sample, measured in zip(samples, with_phases):
        if not measured:
            assert sample.phases_ms == {"ttfb_warm": sample.rtt_ms}
            words = "fresh-connection phases off (phases=0)" if every == 0 else f"phases every {every} probes, not on"
            assert words in sample.detail
    assert (len(server.queries), len(server.peers)) == (requests, connections)
    assert set(server.queries) == {""}  # phases= is the probe's option, never sent


async def test_fresh_dns_phase_is_one_lookup_at_a_time(server: Server, resolver: FakeResolver) -> None:
    """A name whose lookups hang from the second on: the warm RTT goes on from the cache, the fresh request waits
    for its lookup until its share of the timeout runs out, and while that lookup hangs no second one starts."""
    resolver.release.set()
    p = HttpProber(HttpProber.parse_url(f"http://web.slow.test:{server.port}/"))
    try:
        first = await p.probe(2.0)
        resolver.release.clear()
        cut_short = await p.probe(0.5)
        skipped = await p.probe(2.0)
    finally:
        resolver.release.set()
        await p.aclose()
    assert first.ok and first.phases_ms["dns"] > 0, first
    assert cut_short.ok and cut_short.phases_ms == {"ttfb_warm": cut_short.rtt_ms}, cut_short
    assert "no fresh-connection phases: the fresh request did not finish" in cut_short.detail
    assert skipped.ok and set(skipped.phases_ms) == (COLD_PHASES - {"dns"}) | {"ttfb_warm"}, skipped
    assert "no dns phase: a lookup for this target was still in flight" in skipped.detail
    assert resolver.peak["web.slow.test"] == 1 and resolver.calls["web.slow.test"] == 2


class _KeepAliveHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def threaded_server() -> Iterator[int]:
    """A keep-alive HTTP server in a thread of its own, so that it outlives the event loops of one test."""
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _KeepAliveHandler)
    srv.daemon_threads = True
    thread = threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield srv.server_address[1]
    srv.shutdown()
    srv.server_close()


def test_sessions_of_a_finished_loop_are_closed_on_the_next(threaded_server: int) -> None:
    p = HttpProber(HttpProber.parse_url(f"http://127.0.0.1:{threaded_server}/"))
    with asyncio.Runner() as runner:
        first = runner.run(p.probe(2.0))
    old = (p._warm, p._cold)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        second = runner.run(p.probe(2.0))
        assert all(session is not None and session.closed for session in old)
        runner.run(p.aclose())
    assert first.ok and second.ok, (first, second)


@pytest.mark.parametrize(
    "path, query, detail",
    [
        ("/status/500", "", "status 500, expected 2xx or 3xx"),
        ("/status/404", "", "status 404, expected 2xx or 3xx"),
        ("/", "?status=204", "status 200, expected 204"),
    ],
    ids=["500", "404", "expected-204"],
)
async def test_bad_status(server: Server, path: str, query: str, detail: str) -> None:
    (sample,) = await probe_n(f"http://127.0.0.1:{server.port}{path}{query}")
    assert sample.loss is LossReason.BAD_STATUS and sample.detail == detail, sample


async def test_expected_status_and_redirects_are_not_followed(server: Server) -> None:
    url = f"http://127.0.0.1:{server.port}/status/302?status=302"
    (sample,) = await probe_n(url)
    assert sample.ok, sample
    (sample,) = await probe_n(f"http://127.0.0.1:{server.port}/status/301")  # 3xx is good by default
    assert sample.ok, sample


async def test_body_mismatch(server: Server) -> None:
    (sample,) = await probe_n(f"http://127.0.0.1:{server.port}/?body=^goodbye")
    assert sample.loss is LossReason.BODY_MISMATCH and sample.detail == "body does not match '^goodbye'", sample


async def test_slow_server_times_out(server: Server) -> None:
    (sample,) = await probe_n(f"http://127.0.0.1:{server.port}/slow", timeout_s=0.3)
    assert sample.loss is LossReason.TIMEOUT and "300 ms" in sample.detail, sample


async def test_refused() -> None:
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]
    (sample,) = await probe_n(f"http://127.0.0.1:{port}/")
    assert sample.loss is LossReason.REFUSED, sample


Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _raw_server(handler: Handler) -> asyncio.Server:
    return await asyncio.start_server(handler, "127.0.0.1", 0)


async def test_reset_when_the_server_aborts() -> None:
    async def abort(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close with an RST
        writer.transport.abort()

    srv = await _raw_server(abort)
    try:
        (sample,) = await probe_n(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/")
    finally:
        srv.close()
    assert sample.loss is LossReason.RESET, sample


async def test_garbage_response_is_a_lost_sample_not_an_exception() -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
        await writer.drain()
        writer.close()

    srv = await _raw_server(garbage)
    try:
        (sample,) = await probe_n(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}/")
    finally:
        srv.close()
    assert sample.loss is LossReason.ERROR and sample.detail, sample


async def test_server_without_keep_alive(server: Server) -> None:
    samples = await probe_n(f"http://127.0.0.1:{server.port}/close", n=2)
    assert all(s.ok for s in samples), samples
    assert all("the server keeps no connection alive" in s.detail for s in samples)
    assert len(server.peers) == 4  # every request needed its own connection


async def test_concurrent_probes_share_the_prober(server: Server) -> None:
    p = HttpProber(HttpProber.parse_url(f"http://127.0.0.1:{server.port}/"))
    try:
        samples = await asyncio.gather(*(p.probe(5.0) for _ in range(20)))
    finally:
        await p.aclose()
    assert all(s.ok for s in samples), [s for s in samples if not s.ok][:3]


# --- https --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lab_cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, made for this test run."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "latency-router test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    directory = tmp_path_factory.mktemp("tls")
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


def _server_tls(lab_cert: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*lab_cert)
    return context


async def _https_scenario(lab_cert: tuple[Path, Path], query: str, n: int = 2) -> tuple[list, Server]:
    srv = Server()
    await srv.start(_server_tls(lab_cert))
    try:
        return await probe_n(f"https://127.0.0.1:{srv.port}/{query}", n=n), srv
    finally:
        await srv.runner.cleanup()


def _assert_tls_split(samples: list, server: Server) -> None:
    for sample in samples:
        assert sample.ok, sample
        assert set(sample.phases_ms) == COLD_PHASES | {"tls", "ttfb_warm"}
        phases = sample.phases_ms
        # Both measured, and separately: a connect that swallowed the handshake would leave tls at 0.
        assert phases["tls"] > 0 and phases["connect"] > 0
        assert phases["connect"] + phases["tls"] + phases["ttfb"] + phases["transfer"] <= phases["total"]
    assert len(server.peers) == len(samples)  # the first fresh connection stays on as the warm one


async def test_https_measures_tls_apart_from_connect(lab_cert: tuple[Path, Path]) -> None:
    samples, srv = await _https_scenario(lab_cert, "?insecure=1")
    _assert_tls_split(samples, srv)


def test_https_tls_split_under_uvloop(lab_cert: tuple[Path, Path]) -> None:
    """uvloop has its own TLS transport: the handshake stamp must come from it too."""
    samples, srv = uvloop.run(_https_scenario(lab_cert, "?insecure=1"))
    _assert_tls_split(samples, srv)


async def test_https_self_signed_fails_verification_without_insecure(lab_cert: tuple[Path, Path]) -> None:
    (sample,), _ = await _https_scenario(lab_cert, "", n=1)
    assert sample.loss is LossReason.ERROR, sample
    assert sample.detail.startswith("tls: ") and "certificate" in sample.detail.lower()

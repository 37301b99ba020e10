"""http:// and https:// probes against aiohttp servers on 127.0.0.1 port 0: phases, warm TTFB, TLS split, losses."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import socket
import ssl
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
import uvloop
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from latency_router.probes.base import LossReason
from latency_router.probes.http import USER_AGENT, HttpProber

COLD_PHASES = {"dns", "connect", "ttfb", "transfer", "total"}


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
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)  # do not wait out /slow at teardown
        self.port = 0

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_context)
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
    ],
    ids=[
        "no-host", "port", "status-word", "status-range", "regex", "insecure-http", "insecure-flag", "creds", "scheme",
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
    # One kept-alive connection for the RTT, plus a fresh one per probe for the phases (the first probe's
    # fresh connection is the one that stays warm): 3 probes -> 3 connections, 6 requests.
    assert len(server.peers) == 3 and len(server.queries) == 6
    assert set(server.queries) == {"probe=1"}  # the probe's own options never reach the server
    assert server.user_agents == {USER_AGENT}


async def test_name_is_resolved_and_timed(server: Server) -> None:
    (sample,) = await probe_n(f"http://localhost:{server.port}/")
    if sample.ok:
        assert sample.phases_ms["dns"] > 0, sample
    else:  # localhost may resolve to ::1 first, where this server does not listen
        assert sample.loss is LossReason.REFUSED, sample


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

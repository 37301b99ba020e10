"""http:// and https://: the RTT is TTFB on a warm keep-alive connection; a fresh connection's phases beside it."""

from __future__ import annotations

import asyncio
import contextvars
import re
import ssl
import time
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote, urlunsplit

import aiohttp

from latency_router import __version__
from latency_router.probes.base import EngineCounters, LossReason, Sample, wall_now
from latency_router.probes.common import describe, loss_of_oserror, parse_flag, split_target

USER_AGENT = f"latency-router/{__version__} (probe)"
_OPTIONS = ("status", "body", "insecure")
_KEEPALIVE_S = 75.0  # how long the warm connection may idle between probes (nginx's default keep-alive)


@dataclass(frozen=True, slots=True)
class HttpSpec:
    """A parsed http(s):// target: what to request and what counts as a good answer."""

    url: str
    request_url: str  # the URL as requested: the probe's own options taken out of the query
    https: bool
    status: frozenset[int] | None  # None: any 2xx or 3xx
    body: re.Pattern[str] | None
    insecure: bool


def _parse_status(url: str, value: str) -> frozenset[int]:
    try:
        codes = frozenset(int(part) for part in value.split(","))
    except ValueError:
        codes = frozenset()
    if not codes or any(not 100 <= code <= 599 for code in codes):
        raise ValueError(f"{url!r}: status={value!r} must be HTTP status codes such as 200 or 200,204")
    return codes


class _Timeline:
    """perf_counter_ns stamps of one request, filled by the trace callbacks and the TLS hook."""

    __slots__ = (
        "start", "dns_start", "dns_end", "conn_start", "tls_start", "conn_end", "headers_sent", "headers_at",
        "done", "created", "reused", "status", "text",
    )

    def __init__(self) -> None:
        self.start = self.headers_sent = self.headers_at = self.done = 0
        self.dns_start = self.dns_end = self.conn_start = self.tls_start = self.conn_end = 0
        self.created = self.reused = 0
        self.status = 0
        self.text: str | None = None

    @property
    def warm(self) -> bool:
        """Whether the request went over a connection that was already open, and only over that one."""
        return self.reused == 1 and self.created == 0

    @property
    def ttfb_ns(self) -> int:
        return self.headers_at - (self.headers_sent or self.conn_end or self.start)

    def phases_ms(self, https: bool) -> dict[str, float]:
        """dns, connect, tls, ttfb, transfer and total of a request that opened its connection."""
        connected = self.tls_start or self.conn_end
        phases = {
            "dns": (self.dns_end - self.dns_start) / 1e6 if self.dns_end else 0.0,
            "connect": (connected - (self.dns_end or self.conn_start)) / 1e6,
        }
        if https:
            phases["tls"] = (self.conn_end - self.tls_start) / 1e6 if self.tls_start else 0.0
        phases["ttfb"] = self.ttfb_ns / 1e6
        phases["transfer"] = (self.done - self.headers_at) / 1e6
        phases["total"] = (self.done - self.start) / 1e6
        return phases


_TIMELINE: contextvars.ContextVar[_Timeline | None] = contextvars.ContextVar("http_timeline", default=None)


class _TimedSSLContext(ssl.SSLContext):
    """An SSLContext that stamps when a TLS handshake begins, which splits the TCP connect from TLS."""

    def wrap_bio(self, *args: Any, **kwargs: Any) -> ssl.SSLObject:
        # asyncio and uvloop call wrap_bio once the TCP connection is up, just before the ClientHello goes out.
        timeline = _TIMELINE.get()
        if timeline is not None:
            timeline.tls_start = time.perf_counter_ns()
        return super().wrap_bio(*args, **kwargs)


def _ssl_context(insecure: bool) -> _TimedSSLContext:
    context = _TimedSSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    else:
        context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    return context


def _trace_config() -> aiohttp.TraceConfig:
    """Trace callbacks that stamp each step into the request's _Timeline (its trace_request_ctx)."""
    config = aiohttp.TraceConfig()

    def stamp(field: str):
        async def callback(_session, ctx, _params) -> None:
            timeline = ctx.trace_request_ctx
            if isinstance(timeline, _Timeline):
                setattr(timeline, field, time.perf_counter_ns())

        return callback

    def count(field: str):
        async def callback(_session, ctx, _params) -> None:
            timeline = ctx.trace_request_ctx
            if isinstance(timeline, _Timeline):
                setattr(timeline, field, getattr(timeline, field) + 1)

        return callback

    config.on_request_start.append(stamp("start"))
    config.on_dns_resolvehost_start.append(stamp("dns_start"))
    config.on_dns_resolvehost_end.append(stamp("dns_end"))
    config.on_connection_create_start.append(stamp("conn_start"))
    config.on_connection_create_end.append(stamp("conn_end"))
    config.on_connection_create_end.append(count("created"))
    config.on_connection_reuseconn.append(count("reused"))
    config.on_request_headers_sent.append(stamp("headers_sent"))
    config.on_request_end.append(stamp("headers_at"))
    return config


class _BadAnswer(Exception):
    """A response that arrived but does not count: wrong status or a body that does not match."""

    def __init__(self, reason: LossReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class HttpProber:
    """GETs the URL on a warm keep-alive connection (the RTT) and on a fresh one (the phases), once per probe."""

    kind: ClassVar[str] = "http"

    def __init__(self, spec: HttpSpec, counters: EngineCounters | None = None) -> None:
        self.spec = spec
        self.url = spec.url
        self.counters = counters
        self._warm: aiohttp.ClientSession | None = None
        self._cold: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @classmethod
    def parse_url(cls, url: str) -> HttpSpec:
        """Validate http(s)://HOST[:PORT]/PATH[?status=200&body=REGEX&insecure=1] without opening anything."""
        scheme = url.split("://", 1)[0].lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"expected an http:// or https:// URL, got {url!r}")
        parts = split_target(url, scheme)
        if parts.username is not None or parts.password is not None:
            raise ValueError(f"{url!r}: credentials in a probe URL are not supported")
        options: dict[str, str] = {}
        kept: list[str] = []
        for field in parts.query.split("&") if parts.query else []:
            key, _, value = field.partition("=")
            if unquote(key) in _OPTIONS:
                # unquote, not unquote_plus: a '+' in body=REGEX is the regex's, a space is written %20.
                options[unquote(key)] = unquote(value)
            else:
                kept.append(field)  # verbatim: the server gets its own query exactly as written
        status = _parse_status(url, options["status"]) if "status" in options else None
        body = None
        if "body" in options:
            try:
                body = re.compile(options["body"])
            except re.error as exc:
                problem = f"body={options['body']!r} is not a valid regular expression: {exc}"
                raise ValueError(f"{url!r}: {problem}") from None
        insecure = parse_flag(url, "insecure", options["insecure"]) if "insecure" in options else False
        if insecure and scheme != "https":
            raise ValueError(f"{url!r}: insecure=1 applies to https:// only")
        request_url = urlunsplit((scheme, parts.netloc, parts.path or "/", "&".join(kept), ""))
        https = scheme == "https"
        return HttpSpec(url=url, request_url=request_url, https=https, status=status, body=body, insecure=insecure)

    def _sessions(self) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
        loop = asyncio.get_running_loop()
        if self._warm is None or self._cold is None or self._loop is not loop:
            ssl_context = _ssl_context(self.spec.insecure) if self.spec.https else False
            common: dict[str, Any] = {
                "trace_configs": [_trace_config()],
                "timeout": aiohttp.ClientTimeout(total=None),  # the probe's own deadline governs
                "headers": {"User-Agent": USER_AGENT},
                "cookie_jar": aiohttp.DummyCookieJar(),
            }
            # limit=0: concurrent probes never queue for a connection, which would add to the measurement.
            warm = aiohttp.TCPConnector(limit=0, ssl=ssl_context, keepalive_timeout=_KEEPALIVE_S)
            cold = aiohttp.TCPConnector(limit=0, ssl=ssl_context, force_close=True, use_dns_cache=False)
            self._warm = aiohttp.ClientSession(connector=warm, **common)
            self._cold = aiohttp.ClientSession(connector=cold, **common)
            self._loop = loop
        return self._warm, self._cold

    async def probe(self, timeout_s: float) -> Sample:
        """One warm request and one fresh-connection request; any failure of either is a lost Sample."""
        sent_at = wall_now()
        try:
            async with asyncio.timeout(timeout_s):
                warm_session, cold_session = self._sessions()
                # Phases come from a fresh connection on every probe (a second session that never keeps
                # connections): each sample then carries its own phases, as a new client would see them, and the
                # warm request goes first so that the fresh connection's setup and teardown never precede it.
                warm = await self._request(warm_session)
                if warm.warm:
                    cold = await self._request(cold_session)
                else:  # no open connection to reuse: that request was the cold one; now measure warm
                    cold, warm = warm, await self._request(warm_session)
        except _BadAnswer as exc:
            return self._lost(sent_at, exc.reason, str(exc))
        except TimeoutError:
            return self._lost(sent_at, LossReason.TIMEOUT, f"no complete response within {timeout_s * 1e3:g} ms")
        except Exception as exc:  # noqa: BLE001 - one bad target is a lost sample, never an exception
            reason, detail = self._classify(exc)
            return self._lost(sent_at, reason, detail)
        phases = cold.phases_ms(self.spec.https)
        phases["ttfb_warm"] = warm.ttfb_ns / 1e6
        if warm.warm:
            detail = "ttfb on a warm keep-alive connection; phases from a fresh connection"
        else:
            detail = "ttfb on a fresh connection: the server keeps no connection alive; phases from a fresh connection"
        return Sample(self.url, self.kind, sent_at, rtt_ms=phases["ttfb_warm"], detail=detail, phases_ms=phases)

    async def _request(self, session: aiohttp.ClientSession) -> _Timeline:
        timeline = _Timeline()
        token = _TIMELINE.set(timeline)  # seen by _TimedSSLContext.wrap_bio, which runs in this task's context
        try:
            async with session.get(self.spec.request_url, allow_redirects=False, trace_request_ctx=timeline) as resp:
                body = await resp.read()
                timeline.done = time.perf_counter_ns()
                timeline.status = resp.status
                if self.spec.body is not None:
                    timeline.text = body.decode(resp.charset or "utf-8", errors="replace")
        finally:
            _TIMELINE.reset(token)
        self._check(timeline)
        return timeline

    def _check(self, timeline: _Timeline) -> None:
        status, expected = timeline.status, self.spec.status
        if expected is None and not 200 <= status < 400:
            raise _BadAnswer(LossReason.BAD_STATUS, f"status {status}, expected 2xx or 3xx")
        if expected is not None and status not in expected:
            wanted = ",".join(str(code) for code in sorted(expected))
            raise _BadAnswer(LossReason.BAD_STATUS, f"status {status}, expected {wanted}")
        if self.spec.body is not None and not self.spec.body.search(timeline.text or ""):
            raise _BadAnswer(LossReason.BODY_MISMATCH, f"body does not match {self.spec.body.pattern!r}")

    @staticmethod
    def _classify(exc: Exception) -> tuple[LossReason, str]:
        """A failed request's loss reason and words, from aiohttp's exception or the OS error beneath it."""
        if isinstance(exc, aiohttp.ClientSSLError):
            return LossReason.ERROR, f"tls: {describe(exc)}"
        if isinstance(exc, aiohttp.ClientConnectorDNSError):
            return LossReason.ERROR, f"dns: {describe(exc)}"
        if isinstance(exc, aiohttp.ServerDisconnectedError):
            return LossReason.RESET, f"server closed the connection without a response ({describe(exc)})"
        if isinstance(exc, aiohttp.ClientPayloadError):
            return LossReason.RESET, f"response body cut short ({describe(exc)})"
        if isinstance(exc, OSError):  # aiohttp's connector and OS errors carry the errno
            return loss_of_oserror(exc), describe(exc)
        return LossReason.ERROR, describe(exc)

    def _lost(self, sent_at: float, reason: LossReason, detail: str) -> Sample:
        return Sample.lost(self.url, self.kind, sent_at, reason, detail)

    async def aclose(self) -> None:
        """Close both sessions and their connections."""
        sessions, self._warm, self._cold = (self._warm, self._cold), None, None
        for session in sessions:
            if session is not None and not session.closed:
                await session.close()


__all__ = ["HttpProber", "HttpSpec", "USER_AGENT"]

"""http:// and https://: the RTT is TTFB on a warm keep-alive connection; a fresh connection's phases beside it.

The probe's own query options are taken out of the URL before it is requested (the rest reaches the server
verbatim): `status=200[,204]` the good statuses (default: any 2xx or 3xx); `body=REGEX` the body must match;
`insecure=1` (https) skips certificate checks; `phases=N` measures the fresh-connection phases (dns, connect, tls,
ttfb, transfer, total) on every Nth probe of this prober: 1, the default, is every probe, 0 is never. Each
measurement costs the target a new connection: a user probing many targets at high rates halves that load
with `phases=2`.

The timeout applies to the warm request, whose TTFB is the RTT. The fresh request gets what is left of the
timeout; should that run out, the sample keeps its RTT and goes without phases (its detail says so). A fresh
request that fails otherwise (refused, a bad certificate) loses the sample: it is what a new client would meet.

A host name is looked up once per target and refreshed in the background (common.AddressCache). The fresh
connection's `dns` phase is a real lookup, at most one in flight per target: while one is, that probe's dns
phase is skipped and its detail says so.

TTFB and the phases are stamped with perf_counter_ns in aiohttp's trace callbacks, which run when the client
task gets its turn: each includes the event loop's delay in waking that task, and the detail says so.
"""

from __future__ import annotations

import asyncio
import contextvars
import re
import socket
import ssl
import time
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import unquote, urlunsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from latency_router import __version__
from latency_router.probes.base import EngineCounters, LossReason, Sample, wall_now
from latency_router.probes.common import AddressCache, describe, loss_of_oserror, parse_flag, split_target

USER_AGENT = f"latency-router/{__version__} (probe)"
_OPTIONS = ("status", "body", "insecure", "phases")
_MAX_PHASES_EVERY = 1_000_000
TIMING_NOTE = "times from aiohttp trace callbacks (include event-loop delay)"
_KEEPALIVE_S = 75.0  # how long the warm connection may idle between probes (nginx's default keep-alive)


@dataclass(frozen=True, slots=True)
class HttpSpec:
    """A parsed http(s):// target: what to request and what counts as a good answer."""

    url: str
    request_url: str  # the URL as requested: the probe's own options taken out of the query
    host: str
    port: int
    https: bool
    status: frozenset[int] | None  # None: any 2xx or 3xx
    body: re.Pattern[str] | None
    insecure: bool
    phases_every: int = 1  # fresh-connection phases on every Nth probe; 0: never


def _parse_phases(url: str, value: str) -> int:
    if not (value.isascii() and value.isdigit()) or int(value) > _MAX_PHASES_EVERY:
        raise ValueError(f"{url!r}: phases={value!r} must be a whole number N within 0..{_MAX_PHASES_EVERY} "
                         "(phases on every Nth probe; 0: never)")
    return int(value)


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
        "done", "created", "reused", "status", "text", "dns_note",
    )

    def __init__(self) -> None:
        self.start = self.headers_sent = self.headers_at = self.done = 0
        self.dns_start = self.dns_end = self.conn_start = self.tls_start = self.conn_end = 0
        self.created = self.reused = 0
        self.status = 0
        self.text: str | None = None
        self.dns_note: str | None = None  # why this request's dns phase is not a lookup of its own

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
        phases: dict[str, float] = {}
        if self.dns_note is None:
            phases["dns"] = (self.dns_end - self.dns_start) / 1e6 if self.dns_end else 0.0  # 0: an IP literal
        phases["connect"] = (connected - (self.dns_end or self.conn_start)) / 1e6
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


class _CachedResolver(AbstractResolver):
    """aiohttp's resolver for one target: its AddressCache; a real lookup only where `fresh` and none is in flight."""

    def __init__(self, cache: AddressCache, *, fresh: bool) -> None:
        self.cache, self.fresh = cache, fresh

    async def resolve(self, host: str, port: int = 0,
                      family: socket.AddressFamily = socket.AF_INET) -> list[ResolveResult]:
        cache, note = self.cache, None
        busy = cache.in_flight
        if self.fresh and not busy:
            addresses = await cache.lookup()  # timed as the dns phase by the trace callbacks around this call
        else:
            addresses = cache.cached()
            if addresses is None:
                addresses = await cache.lookup()
                if busy:
                    note = "it waited for the lookup already in flight for this target"
            elif self.fresh:
                note = "a lookup for this target was still in flight, the address came from its cache"
            else:
                note = "the address came from this target's cache"
        timeline = _TIMELINE.get()
        if note is not None and timeline is not None:
            timeline.dns_note = note
        flags = socket.AI_NUMERICHOST | socket.AI_NUMERICSERV
        return [
            {"hostname": host, "host": sockaddr[0], "port": port, "family": fam, "proto": 0, "flags": flags}
            for fam, sockaddr in addresses
            if not family or fam == family
        ]

    async def close(self) -> None:
        """Nothing to release: the cache belongs to the prober."""


class _BadAnswer(Exception):
    """A response that arrived but does not count: wrong status or a body that does not match."""

    def __init__(self, reason: LossReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


class HttpProber:
    """GETs the URL on a warm keep-alive connection (the RTT) and, every `phases`th probe, on a fresh one."""

    kind: ClassVar[str] = "http"
    phased: ClassVar[bool] = True  # its samples carry phases (ttfb_warm, and dns, connect, tls, ... when measured)

    def __init__(self, spec: HttpSpec, counters: EngineCounters | None = None) -> None:
        self.spec = spec
        self.url = spec.url
        self.counters = counters
        self._warm: aiohttp.ClientSession | None = None
        self._cold: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._probes = 0
        self._address = AddressCache(spec.host, spec.port, socket.SOCK_STREAM)

    @classmethod
    def parse_url(cls, url: str) -> HttpSpec:
        """Validate http(s)://HOST[:PORT]/PATH[?status=200&body=REGEX&insecure=1&phases=N] without opening anything."""
        scheme = url.split("://", 1)[0].lower() if isinstance(url, str) else ""
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
                if unquote(key) in options:
                    raise ValueError(f"{url!r}: {unquote(key)!r} given twice")
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
        every = _parse_phases(url, options["phases"]) if "phases" in options else 1
        request_url = urlunsplit((scheme, parts.netloc, parts.path or "/", "&".join(kept), ""))
        https = scheme == "https"
        port = parts.port or (443 if https else 80)
        return HttpSpec(url=url, request_url=request_url, host=parts.hostname, port=port,  # type: ignore[arg-type]
                        https=https, status=status, body=body, insecure=insecure, phases_every=every)

    async def _sessions(self) -> tuple[aiohttp.ClientSession, aiohttp.ClientSession]:
        loop = asyncio.get_running_loop()
        if self._warm is None or self._cold is None or self._loop is not loop:
            old, old_loop = (self._warm, self._cold), self._loop
            ssl_context = _ssl_context(self.spec.insecure) if self.spec.https else False
            common: dict[str, Any] = {
                "trace_configs": [_trace_config()],
                "timeout": aiohttp.ClientTimeout(total=None),  # the probe's own deadlines govern
                "headers": {"User-Agent": USER_AGENT},
                "cookie_jar": aiohttp.DummyCookieJar(),
            }
            # limit=0: concurrent probes never queue for a connection, which would add to the measurement.
            # use_dns_cache=False: the target's AddressCache is the cache, and it decides when a lookup is real.
            warm = aiohttp.TCPConnector(limit=0, ssl=ssl_context, keepalive_timeout=_KEEPALIVE_S, use_dns_cache=False,
                                        resolver=_CachedResolver(self._address, fresh=False))
            cold = aiohttp.TCPConnector(limit=0, ssl=ssl_context, force_close=True, use_dns_cache=False,
                                        resolver=_CachedResolver(self._address, fresh=True))
            self._warm = aiohttp.ClientSession(connector=warm, **common)
            self._cold = aiohttp.ClientSession(connector=cold, **common)
            self._loop = loop
            if old_loop is not None:
                await _retire(old, old_loop)  # after the swap: a concurrent probe already sees the new sessions
        return self._warm, self._cold

    def _phases_due(self) -> bool:
        every, index = self.spec.phases_every, self._probes
        self._probes += 1
        return every > 0 and index % every == 0

    async def probe(self, timeout_s: float) -> Sample:
        """A warm request (the RTT) under the timeout, then a fresh one (the phases) under what is left of it."""
        sent_at = wall_now()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s  # loop.time() only bounds waits here; it never times a measurement
        due = self._phases_due()
        try:
            warm_session, cold_session = await self._sessions()
            async with asyncio.timeout_at(deadline):
                first = await self._request(warm_session)
            if first.warm:
                warm, how = first, "ttfb on a warm keep-alive connection"
                cold, phases_note = await self._fresh(cold_session, deadline, warm) if due else (None, None)
            else:
                # No kept-alive connection to reuse: this request opened one. Its phases are the fresh ones; the RTT
                # comes from a second request on it, when that fits in what is left of the timeout.
                cold, phases_note = (first, None) if due else (None, None)
                warm, how = await self._second(warm_session, deadline, first)
        except _BadAnswer as exc:
            return Sample.lost(self.url, self.kind, sent_at, exc.reason, str(exc))
        except TimeoutError:
            detail = f"no complete response within {timeout_s * 1e3:g} ms"
            return Sample.lost(self.url, self.kind, sent_at, LossReason.TIMEOUT, detail)
        except Exception as exc:  # noqa: BLE001 - one bad target is a lost sample, never an exception
            reason, detail = self._classify(exc)
            return Sample.lost(self.url, self.kind, sent_at, reason, detail)
        phases = cold.phases_ms(self.spec.https) if cold is not None else {}
        phases["ttfb_warm"] = warm.ttfb_ns / 1e6
        if cold is not None:
            words = [how, "phases from a fresh connection"]
            if cold.dns_note is not None:
                words.append(f"no dns phase: {cold.dns_note}")
        elif phases_note is not None:
            words = [how, f"no fresh-connection phases: {phases_note}"]
        elif self.spec.phases_every == 0:
            words = [how, "fresh-connection phases off (phases=0)"]
        else:
            words = [how, f"fresh-connection phases every {self.spec.phases_every} probes, not on this one"]
        words.append(TIMING_NOTE)
        return Sample(self.url, self.kind, sent_at, rtt_ms=phases["ttfb_warm"], detail="; ".join(words),
                      phases_ms=phases)

    async def _fresh(self, session: aiohttp.ClientSession, deadline: float,
                     warm: _Timeline) -> tuple[_Timeline | None, str | None]:
        """The fresh request under what is left of the probe's timeout: (its timeline, or why there is none)."""
        left_s = deadline - asyncio.get_running_loop().time()
        if left_s <= warm.ttfb_ns / 1e9:
            return None, f"{max(left_s, 0) * 1e3:.0f} ms of the timeout left, less than one ttfb"
        try:
            async with asyncio.timeout_at(deadline):
                return await self._request(session), None
        except TimeoutError:
            return None, "the fresh request did not finish within what was left of the timeout"

    async def _second(self, session: aiohttp.ClientSession, deadline: float, first: _Timeline) -> tuple[_Timeline, str]:
        """After a request that had to open its connection: the warm request on it, or (out of time) that first one."""
        fallback = "ttfb on the connection this probe opened (no time left in the timeout for a warm request)"
        left_s = deadline - asyncio.get_running_loop().time()
        if left_s <= (first.done - (first.headers_sent or first.conn_end or first.start)) / 1e9:
            return first, fallback  # it would not fit: keep the connection open for the next probe instead
        try:
            async with asyncio.timeout_at(deadline):
                second = await self._request(session)
        except TimeoutError:
            return first, fallback
        if second.warm:
            return second, "ttfb on a warm keep-alive connection"
        return second, "ttfb on a fresh connection: the server keeps no connection alive"

    async def _request(self, session: aiohttp.ClientSession) -> _Timeline:
        timeline = _Timeline()
        token = _TIMELINE.set(timeline)  # seen by _TimedSSLContext.wrap_bio and the resolver, in this task's context
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

    async def aclose(self) -> None:
        """Close both sessions and their connections."""
        sessions, loop = (self._warm, self._cold), self._loop
        self._warm = self._cold = self._loop = None
        if loop is not None:
            await _retire(sessions, loop)


async def _retire(sessions: tuple[aiohttp.ClientSession | None, ...], loop: asyncio.AbstractEventLoop) -> None:
    """Close sessions made on `loop`: there when it runs in another thread, else here (a closed loop took its
    sockets' transports with it; closing the session then only marks it so)."""
    for session in sessions:
        if session is None or session.closed:
            continue
        if loop.is_running() and loop is not asyncio.get_running_loop():
            asyncio.run_coroutine_threadsafe(session.close(), loop)
            continue
        try:
            await session.close()
        except RuntimeError:  # a task of a loop that is neither this one nor running: it is marked closed all the same
            pass


__all__ = ["HttpProber", "HttpSpec", "TIMING_NOTE", "USER_AGENT"]

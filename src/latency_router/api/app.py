"""The HTTP API: an aiohttp application over the Backend protocol, JSON everywhere, every error naming its parameter.

Handlers stay cheap because GET /v1/decision is the hot path (benchmarked against a hello-world aiohttp handler):
no validation library per request, json from the standard library, and a decision's body serialised once and
reused for as long as the backend hands out the same (immutable) Decision object.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, NamedTuple

from aiohttp import hdrs, web

from latency_router.api.backend import AdminError, Backend
from latency_router.api.openapi import ADMIN_OFF, openapi_document
from latency_router.decider.engine import config_groups

if TYPE_CHECKING:
    from latency_router.config.models import Config
    from latency_router.decider.decision import Decision
    from latency_router.secrets import Secret

log = logging.getLogger("latency_router.api")

JSON_TYPE = "application/json"
_SHOWN_CHARS = 100  # an error quotes at most this much of what the client sent
_MAX_CACHED_BODIES = 4096  # encoded decisions kept; names and clients come and go, so the cache starts over when full
_BATCH_YIELD_EVERY = 500  # a large batch lets other requests in this often
_CHALLENGE = {hdrs.WWW_AUTHENTICATE: 'Bearer realm="latency-router admin"'}
_CHALLENGE_INVALID = {hdrs.WWW_AUTHENTICATE: 'Bearer realm="latency-router admin", error="invalid_token"'}
_DECISION_PARAMS = ("service", "client", "group")
_TABLE_PARAMS = ("group", "region", "path")
_BATCH_ITEM_FIELDS = ("service", "client", "group")

_encode = json.JSONEncoder(separators=(",", ":")).encode
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An answer other than success: the HTTP status and the message, which names the bad parameter or field."""

    def __init__(self, status: int, message: str, headers: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def dumps(value: Any) -> bytes:
    """Compact JSON, as every endpoint writes it."""
    return _encode(value).encode()


def json_body(body: bytes, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    """A response with an already encoded JSON body."""
    return web.Response(body=body, status=status, content_type=JSON_TYPE, headers=headers)


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> web.Response:
    """The one error shape: {"error": message}."""
    return json_body(dumps({"error": message}), status, headers)


def show(text: str) -> str:
    """A client's text quoted for an error message, cut short when long."""
    return repr(text[:_SHOWN_CHARS]) + ("..." if len(text) > _SHOWN_CHARS else "")


_OK_BODY = dumps({"status": "ok"})


class _Names(NamedTuple):
    """The service and group names of one config, to explain a missing decision."""

    config: Any
    services: frozenset[str]
    groups: frozenset[str]


class _Api:
    """The handlers and the little they cache between requests; one per application."""

    def __init__(self, backend: Backend, token: Secret | None, max_body_bytes: int, max_batch: int) -> None:
        self.backend = backend
        self.token = token
        self.max_body_bytes = max_body_bytes
        self.max_batch = max_batch
        # (service, group[, client]) -> the decision handed out and its encoded body; reused while it is the same object
        self._bodies: dict[tuple[str, ...], tuple[Decision, bytes]] = {}
        self._names: _Names | None = None
        self._openapi: tuple[Any, bytes] | None = None
        self._table: tuple[Mapping[Any, Any], bytes] | None = None

    # --- decisions ---------------------------------------------------------------------------------------

    async def get_decision(self, request: web.Request) -> web.Response:
        """GET /v1/decision?service=S&client=IP (or &group=G)."""
        query = request.query
        service = query.get("service")
        client = query.get("client")
        group = query.get("group")
        if len(query) != (service is not None) + (client is not None) + (group is not None):
            _check_query(query, _DECISION_PARAMS)
        if not service:
            raise ApiError(400, "service: required (?service=NAME)")
        base, client = self._lookup(service, client, group, request)
        # a sticky pool answers per client: its bodies are cached per client, every other decision's per group
        if client is not None and base.sticky_pool:
            key: tuple[str, ...] = (service, base.group, client)
        else:
            key = (service, base.group)
        hit = self._bodies.get(key)
        if hit is not None and hit[0] is base:
            return json_body(hit[1])
        body = dumps(_for_client(base, client).to_json())
        if len(self._bodies) >= _MAX_CACHED_BODIES:
            self._bodies.clear()
        self._bodies[key] = (base, body)
        return json_body(body)

    def _decide(self, service: str, client: str | None, group: str | None, request: web.Request) -> Decision:
        """The decision for one lookup (client, group or the remote address); ApiError naming what is wrong."""
        return _for_client(*self._lookup(service, client, group, request))

    def _lookup(
        self, service: str, client: str | None, group: str | None, request: web.Request
    ) -> tuple[Decision, str | None]:
        """The group's decision and the client it is for (None when a group was asked for); ApiError naming what is wrong."""
        backend = self.backend
        if group is None:
            if client is None:
                client = _remote_address(request)
            try:
                group = backend.group_of(client)
            except ValueError:
                raise ApiError(400, f"client: {show(client)} is not an IP address") from None
        elif client is not None:
            raise ApiError(400, "client, group: give one of them, not both")
        decision = backend.decision(service, group)
        if decision is None:
            raise self._no_decision(service, group)
        return decision, client

    def _no_decision(self, service: str, group: str) -> ApiError:
        """Why there is no decision: an unknown service, an unknown group, or none made yet."""
        config = self.backend.config
        names = self._names
        if names is None or names.config is not config:
            names = self._names = _Names(
                config,
                frozenset(s.name for s in config.services),
                frozenset(g.name for g in config_groups(config)),
            )
        if service not in names.services:
            return ApiError(404, f"service: unknown service {show(service)}")
        if not group:
            return ApiError(400, "group: must not be empty")
        if group not in names.groups:
            return ApiError(404, f"group: unknown group {show(group)}")
        return ApiError(503, "no decision yet")

    async def post_decisions(self, request: web.Request) -> web.Response:
        """POST /v1/decisions: {"requests": [{service, client | group}, ...]} -> {"decisions": [...]} in order."""
        items = _batch_items(await self._read_json(request), self.max_batch)
        out: list[dict[str, Any]] = []
        for i, (service, client, group) in enumerate(items, 1):
            try:
                out.append(self._decide(service, client, group, request).to_json())
            except ApiError as exc:
                out.append({"error": exc.message})
            if i % _BATCH_YIELD_EVERY == 0:
                await asyncio.sleep(0)
        return json_body(dumps({"decisions": out}))

    # --- the table, regions, health, metrics, this document ------------------------------------------------

    async def get_table(self, request: web.Request) -> web.Response:
        """GET /v1/table[?group=&region=&path=]."""
        query = request.query
        snapshot = self.backend.table()
        if not query:
            # keyed on the rows mapping: the table hands out the same one while no row changed
            cached = self._table
            if cached is not None and cached[0] is snapshot.rows:
                return json_body(cached[1])
            body = dumps(snapshot.to_json())
            self._table = (snapshot.rows, body)
            return json_body(body)
        _check_query(query, _TABLE_PARAMS)
        want = [(i, query[name]) for i, name in enumerate(_TABLE_PARAMS) if name in query]
        for i, value in want:
            if not value:
                raise ApiError(400, f"{_TABLE_PARAMS[i]}: must not be empty")
        rows = [r.to_json() for k, r in sorted(snapshot.rows.items()) if all(k[i] == v for i, v in want)]
        return json_body(dumps({"rows": rows}))

    async def get_regions(self, request: web.Request) -> web.Response:
        """GET /v1/regions."""
        return json_body(dumps({"regions": self.backend.regions()}))

    async def get_exporters(self, request: web.Request) -> web.Response:
        """GET /v1/exporters: each DNS exporter's state (never a secret: names, counts and messages only)."""
        return json_body(dumps({"exporters": self.backend.exporters()}))

    async def get_healthz(self, request: web.Request) -> web.Response:
        """GET /healthz: 200 while the daemon's loops run, 503 with the reason otherwise."""
        return _status(self.backend.liveness())

    async def get_readyz(self, request: web.Request) -> web.Response:
        """GET /readyz: 200 once ready, 503 with the reason before."""
        return _status(self.backend.readiness())

    async def get_metrics(self, request: web.Request) -> web.Response:
        """GET /metrics: the backend's Prometheus exposition as it is."""
        body, content_type = self.backend.metrics()
        return web.Response(body=body, headers={hdrs.CONTENT_TYPE: content_type})

    async def get_openapi(self, request: web.Request) -> web.Response:
        """GET /openapi.json, with the current config's names as examples."""
        config = self.backend.config
        cached = self._openapi
        if cached is None or cached[0] is not config:
            document = openapi_document(config, max_batch=self.max_batch, max_body_bytes=self.max_body_bytes)
            cached = self._openapi = (config, dumps(document))
        return json_body(cached[1])

    # --- admin ---------------------------------------------------------------------------------------------

    def _authorize(self, request: web.Request) -> None:
        """404 when admin is off, 401 unless the request carries the right bearer token."""
        token = self.token
        if token is None:
            raise ApiError(404, ADMIN_OFF)
        header = request.headers.get(hdrs.AUTHORIZATION)
        if header is None:
            raise ApiError(401, "authorization: required (Authorization: Bearer TOKEN)", _CHALLENGE)
        scheme, _, given = header.strip().partition(" ")
        given = given.strip()
        if scheme.lower() != "bearer" or not given:
            raise ApiError(401, "authorization: expected 'Bearer TOKEN'", _CHALLENGE)
        # compare bytes: compare_digest refuses non-ASCII str, and a header may carry anything
        if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), token.reveal().encode("utf-8")):
            raise ApiError(401, "authorization: wrong token", _CHALLENGE_INVALID)

    async def _admin_body(self, request: web.Request, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
        self._authorize(request)
        return _fields(await self._read_json(request), required, optional)

    async def post_drain(self, request: web.Request) -> web.Response:
        """POST /v1/admin/drain {"region": R}."""
        body = await self._admin_body(request, ("region",))
        return self._admin_call(self.backend.drain, body["region"])

    async def post_undrain(self, request: web.Request) -> web.Response:
        """POST /v1/admin/undrain {"region": R}."""
        body = await self._admin_body(request, ("region",))
        return self._admin_call(self.backend.undrain, body["region"])

    async def post_pin(self, request: web.Request) -> web.Response:
        """POST /v1/admin/pin {"service", "group", "region", "path"?}."""
        body = await self._admin_body(request, ("service", "group", "region"), ("path",))
        region, path = body["region"], body.get("path")
        if path is not None:
            _check_path(self.backend.config, region, path)
        return self._admin_call(self.backend.pin, body["service"], body["group"], region, path)

    async def post_unpin(self, request: web.Request) -> web.Response:
        """POST /v1/admin/unpin {"service", "group"}."""
        body = await self._admin_body(request, ("service", "group"))
        return self._admin_call(self.backend.unpin, body["service"], body["group"])

    async def get_admin_state(self, request: web.Request) -> web.Response:
        """GET /v1/admin/state."""
        self._authorize(request)
        return json_body(dumps(self.backend.admin_state()))

    def _admin_call(self, action: Callable[..., None], *args: Any) -> web.Response:
        try:
            action(*args)
        except AdminError as exc:
            raise ApiError(404, str(exc)) from None
        log.info("admin: %s %s", action.__name__, " ".join(map(str, args)))  # the operator's audit trail
        return json_body(dumps(self.backend.admin_state()))

    # --- bodies --------------------------------------------------------------------------------------------

    async def _read_json(self, request: web.Request) -> Any:
        """The request's JSON body: 415 for another media type, 413 when too large, 400 when not JSON."""
        if hdrs.CONTENT_TYPE in request.headers:
            media = request.content_type
            if media != JSON_TYPE and not (media.startswith("application/") and media.endswith("+json")):
                raise ApiError(415, f"body: send Content-Type: {JSON_TYPE} (got {show(media)})")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise ApiError(413, f"body: larger than the limit of {self.max_body_bytes} bytes") from None
        try:
            return json.loads(raw)
        except (ValueError, RecursionError) as exc:
            raise ApiError(400, f"body: not valid JSON ({str(exc)[:_SHOWN_CHARS]})") from None


def _for_client(decision: Decision, client: str | None) -> Decision:
    """The decision for this client (a sticky pool picks by its prefix); the group's own when client is None."""
    if client is None:
        return decision
    try:
        return decision.for_client(client)
    except ValueError:
        raise ApiError(400, f"client: {show(client)} is not an IP address") from None


def _status(state: tuple[bool, str]) -> web.Response:
    ok, why = state
    return json_body(_OK_BODY) if ok else error_response(503, why)


def _remote_address(request: web.Request) -> str:
    remote = request.remote
    if not remote:
        raise ApiError(400, "client: required: the remote address is unknown (give client or group)")
    return remote.partition("%")[0]  # a link-local peer's zone names our interface, not the client


def _check_query(query: Mapping[str, str], allowed: tuple[str, ...]) -> None:
    """400 for a parameter this endpoint does not take, or one given twice."""
    seen: set[str] = set()
    for name, _ in query.items():  # noqa: PERF102 - items, not keys: keys() lists a repeated name once
        if name not in allowed:
            raise ApiError(400, f"{show(name)}: unknown parameter (expected: {', '.join(allowed)})")
        if name in seen:
            raise ApiError(400, f"{name}: give it once")
        seen.add(name)


def _unknown_fields(where: str, body: dict[str, Any], allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    unknown = [k for k in body if k not in allowed]
    if unknown:
        names = ", ".join(show(k) for k in unknown)
        plural = "s" if len(unknown) > 1 else ""
        raise ApiError(400, f"{where}: unknown field{plural} {names} (expected: {', '.join(allowed)})")


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ApiError(400, f"{where}: must be a non-empty string")
    return value


def _fields(body: Any, required: tuple[str, ...], optional: tuple[str, ...]) -> dict[str, Any]:
    """An admin body checked: an object with the required string fields, optional ones null or strings, nothing else."""
    if not isinstance(body, dict):
        raise ApiError(400, f"body: expected a JSON object with {', '.join(required + optional)}")
    _unknown_fields("body", body, required + optional)
    for name in required:
        if name not in body:
            raise ApiError(400, f"{name}: required")
        _string(name, body[name])
    for name in optional:
        if body.get(name) is not None:
            _string(name, body[name])
    return body


def _batch_items(body: Any, max_batch: int) -> list[tuple[str, str | None, str | None]]:
    """A batch body checked for its shape: (service, client, group) per request; meaning is checked per item later."""
    if not isinstance(body, dict):
        raise ApiError(400, 'body: expected a JSON object {"requests": [...]}')
    _unknown_fields("body", body, ("requests",))
    requests = body.get("requests")
    if "requests" not in body:
        raise ApiError(400, "requests: required")
    if not isinstance(requests, list):
        raise ApiError(400, "requests: expected an array")
    if len(requests) > max_batch:
        raise ApiError(400, f"requests: at most {max_batch} per batch, got {len(requests)}")
    items: list[tuple[str, str | None, str | None]] = []
    for i, item in enumerate(requests):
        where = f"requests[{i}]"
        if not isinstance(item, dict):
            raise ApiError(400, f"{where}: expected an object with service and client or group")
        _unknown_fields(where, item, _BATCH_ITEM_FIELDS)
        if "service" not in item:
            raise ApiError(400, f"{where}.service: required")
        service = _string(f"{where}.service", item["service"])
        client = item.get("client")
        group = item.get("group")
        if "client" in item:
            _string(f"{where}.client", client)
        if "group" in item:
            _string(f"{where}.group", group)
        items.append((service, client, group))
    return items


def _check_path(config: Config, region: str, path: str) -> None:
    """400 when a known region has no such path (an unknown region is the backend's to name)."""
    try:
        paths = [p.name for p in config.region(region).paths]
    except KeyError:
        return
    if path not in paths:
        raise ApiError(400, f"path: region {show(region)} has no path {show(path)} (it has: {', '.join(paths)})")


@web.middleware
async def _errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as JSON: ApiError as it says, aiohttp's own (404, 405, 413, ...) reworded, anything else a logged 500."""
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _http_error(request, exc)
    except Exception:
        log.exception("unexpected error answering %s %s", request.method, request.path)
        return error_response(500, "internal error (logged by the daemon)")


def _http_error(request: web.Request, exc: web.HTTPException) -> web.Response:
    headers = {}
    if exc.status == 404:
        message = f"no such endpoint: {show(request.path)}"
    elif exc.status == 405:
        allowed = sorted(getattr(exc, "allowed_methods", ()))
        message = f"method {request.method} is not allowed for {show(request.path)} (allowed: {', '.join(allowed)})"
        headers[hdrs.ALLOW] = exc.headers.get(hdrs.ALLOW, ",".join(allowed))
    elif exc.status == 413:
        message = f"body: larger than the limit of {request.app[_API].max_body_bytes} bytes"
    else:
        message = exc.reason.lower()
    return error_response(exc.status, message, headers)


_API = web.AppKey("latency_router_api", _Api)


def make_app(backend: Backend, *, token: Secret | None, max_body_bytes: int, max_batch: int) -> web.Application:
    """The API application over `backend`; with token None the admin endpoints answer 404."""
    if max_body_bytes < 1 or max_batch < 1:
        raise ValueError("max_body_bytes and max_batch must be at least 1")
    api = _Api(backend, token, max_body_bytes, max_batch)
    app = web.Application(client_max_size=max_body_bytes, middlewares=[_errors])
    app[_API] = api
    app.router.add_get("/v1/decision", api.get_decision)
    app.router.add_post("/v1/decisions", api.post_decisions)
    app.router.add_get("/v1/table", api.get_table)
    app.router.add_get("/v1/regions", api.get_regions)
    app.router.add_get("/v1/exporters", api.get_exporters)
    app.router.add_get("/healthz", api.get_healthz)
    app.router.add_get("/readyz", api.get_readyz)
    app.router.add_get("/metrics", api.get_metrics)
    app.router.add_get("/openapi.json", api.get_openapi)
    app.router.add_post("/v1/admin/drain", api.post_drain)
    app.router.add_post("/v1/admin/undrain", api.post_undrain)
    app.router.add_post("/v1/admin/pin", api.post_pin)
    app.router.add_post("/v1/admin/unpin", api.post_unpin)
    app.router.add_get("/v1/admin/state", api.get_admin_state)
    return app


async def start_api(
    app: web.Application, host: str, port: int, *, access_log: bool = False, shutdown_timeout_s: float = 5.0
) -> web.AppRunner:
    """Listen on host:port (IPv6 hosts with or without brackets; port 0 picks one, see bound_address); stop with stop_api."""
    runner = web.AppRunner(
        app,
        access_log=logging.getLogger("aiohttp.access") if access_log else None,
        shutdown_timeout=shutdown_timeout_s,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, host.strip("[]"), port, reuse_address=True)
        await site.start()
    except BaseException:
        await runner.cleanup()
        raise
    return runner


def bound_address(runner: web.AppRunner) -> tuple[str, int]:
    """The (host, port) the API listens on: the first socket's."""
    host, port = runner.addresses[0][:2]
    return host, port


async def stop_api(runner: web.AppRunner) -> None:
    """Stop listening, let requests in flight finish (within the shutdown timeout), and release the application."""
    await runner.cleanup()

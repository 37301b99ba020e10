"""The HTTP API over a real table and Decider (tests/api_support.py), through real sockets on 127.0.0.1."""

from __future__ import annotations

import contextlib
import json
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from api_support import AGENT, AP, EU, MEASURED, US, LabBackend, fed_backend
from latency_router.api import bound_address, make_app, openapi_document, start_api, stop_api
from latency_router.api.openapi import ADMIN_OFF
from latency_router.secrets import Secret

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_BODY = 4096
MAX_BATCH = 5


@contextlib.asynccontextmanager
async def serve(
    backend: LabBackend | None = None, *, token: str | None = TOKEN, max_body: int = MAX_BODY, max_batch: int = MAX_BATCH
) -> AsyncIterator[tuple[TestClient, LabBackend]]:
    """A test client of the API app over `backend` (a fed LabBackend by default), served on 127.0.0.1."""
    backend = backend if backend is not None else fed_backend()
    secret = None if token is None else Secret(token, "env:TEST_TOKEN")
    app = make_app(backend, token=secret, max_body_bytes=max_body, max_batch=max_batch)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield client, backend


async def get_json(client: TestClient, path: str, status: int = 200, **kw: Any) -> Any:
    async with client.get(path, **kw) as resp:
        assert resp.content_type == "application/json", await resp.text()
        body = await resp.json()
        assert resp.status == status, body
        return body


async def post_json(client: TestClient, path: str, payload: Any, status: int = 200, **kw: Any) -> Any:
    async with client.post(path, json=payload, **kw) as resp:
        assert resp.content_type == "application/json", await resp.text()
        body = await resp.json()
        assert resp.status == status, body
        return body


def expected(backend: LabBackend, service: str, group: str, client: str | None = None) -> dict[str, Any]:
    """What the API must answer: the backend's decision (for the client, when there is one) as JSON."""
    decision = backend.decision(service, group)
    assert decision is not None
    if client is not None:
        decision = decision.for_client(client)
    return json.loads(json.dumps(decision.to_json()))


# --- GET /v1/decision ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("group", ["eu", "us", "apac", "default"])
async def test_decision_by_group_is_the_backends_decision(group):
    async with serve() as (client, backend):
        body = await get_json(client, f"/v1/decision?service=api&group={group}")
    assert body == expected(backend, "api", group)
    assert body["answer"] == body["answers"][0]
    assert body["candidates"] and {"region", "path", "answer", "rtt_ms", "health", "weight"} <= set(body["candidates"][0])


@pytest.mark.parametrize(
    ("client_ip", "group"),
    [
        pytest.param("192.0.2.5", "eu", id="ipv4-eu"),
        pytest.param("192.0.2.200", "us", id="ipv4-us"),
        pytest.param("2001:db8:1::5", "us", id="ipv6-us"),
        pytest.param("2001:db8:2:ffff::1", "apac", id="ipv6-apac"),
        pytest.param("::ffff:192.0.2.5", "eu", id="v4-mapped-is-its-ipv4"),
        pytest.param("198.51.100.7", "default", id="no-match-default"),
        pytest.param("2001:db8:99::1", "default", id="ipv6-no-match-default"),
    ],
)
async def test_decision_for_a_client_is_its_groups_decision(client_ip, group):
    async with serve() as (client, backend):
        by_client = await get_json(client, "/v1/decision", params={"service": "api", "client": client_ip})
        by_group = await get_json(client, "/v1/decision", params={"service": "api", "group": group})
    assert by_client["group"] == group
    assert by_client == by_group == expected(backend, "api", group)


async def test_sticky_decision_is_made_for_the_client():
    clients = [f"198.51.{i}.7" for i in range(12)]  # twelve /24s of the default group
    async with serve() as (client, backend):
        # twice over: the second round is answered from the API's cache of encoded bodies
        got = [await get_json(client, "/v1/decision", params={"service": "spread", "client": ip}) for ip in clients * 2]
    assert got == [expected(backend, "spread", "default", ip) for ip in clients * 2]
    base = expected(backend, "spread", "default")
    # the sticky pool spreads clients: some of them are not where the group's own decision points
    assert any(g["region"] != base["region"] for g in got)
    assert len({g["region"] for g in got}) > 1


async def test_no_client_and_no_group_uses_the_remote_address():
    async with serve() as (client, backend):
        body = await get_json(client, "/v1/decision?service=spread")
    assert body["group"] == "default"
    assert body == expected(backend, "spread", "default", "127.0.0.1")


@pytest.mark.parametrize(
    ("query", "status", "message"),
    [
        pytest.param("", 400, "service: required", id="no-service"),
        pytest.param("service=&group=eu", 400, "service: required", id="empty-service"),
        pytest.param("service=nope&group=eu", 404, "service: unknown service 'nope'", id="unknown-service"),
        pytest.param("service=api&group=mars", 404, "group: unknown group 'mars'", id="unknown-group"),
        pytest.param("service=api&group=", 400, "group: must not be empty", id="empty-group"),
        pytest.param("service=api&client=1.2.3", 400, "client: '1.2.3' is not an IP address", id="bad-ip"),
        pytest.param("service=api&client=", 400, "client: '' is not an IP address", id="empty-client"),
        pytest.param("service=api&client=fe80::1%25eth0", 400, "client: 'fe80::1%eth0' is not an IP address", id="zone-id"),
        pytest.param("service=api&client=192.0.2.1&group=eu", 400, "client, group: give one of them, not both", id="both"),
        pytest.param("service=api&grop=eu", 400, "'grop': unknown parameter", id="unknown-parameter"),
        pytest.param("service=api&service=x&group=eu", 400, "service: give it once", id="repeated"),
    ],
)
async def test_decision_errors_name_the_parameter(query, status, message):
    async with serve() as (client, _):
        body = await get_json(client, f"/v1/decision?{query}", status=status)
    assert set(body) == {"error"}
    assert body["error"].startswith(message)


async def test_a_known_pair_without_a_decision_yet_is_503():
    async with serve(LabBackend()) as (client, _):  # nothing evaluated yet
        body = await get_json(client, "/v1/decision?service=api&group=eu", status=503)
        unknown = await get_json(client, "/v1/decision?service=nope&group=eu", status=404)
    assert body == {"error": "no decision yet"}
    assert "nope" in unknown["error"]


async def test_a_new_decision_is_served_not_the_cached_body():
    async with serve() as (client, backend):
        first = await get_json(client, "/v1/decision?service=api&group=us")
        again = await get_json(client, "/v1/decision?service=api&group=us")
        dark = {**MEASURED, "us": {**MEASURED["us"], (US, "direct"): None, (US, "accelerator"): None}}
        backend.feed(dark, rounds=4)  # us-east-1 goes down for group us
        moved = await get_json(client, "/v1/decision?service=api&group=us")
    assert first == again and first["region"] == US
    assert moved["region"] != US
    assert moved == expected(backend, "api", "us")


# --- POST /v1/decisions --------------------------------------------------------------------------------------


async def test_batch_answers_each_request_in_order():
    requests = [
        {"service": "api", "group": "us"},
        {"service": "api", "client": "2001:db8:2::9"},
        {"service": "nope", "group": "eu"},
        {"service": "api", "client": "not-an-ip"},
        {"service": "api", "client": "192.0.2.1", "group": "eu"},
        # no more than MAX_BATCH
    ]
    async with serve() as (client, backend):
        body = await post_json(client, "/v1/decisions", {"requests": requests})
    got = body["decisions"]
    assert len(got) == len(requests)
    assert got[0] == expected(backend, "api", "us")
    assert got[1] == expected(backend, "api", "apac", "2001:db8:2::9")
    assert got[2] == {"error": "service: unknown service 'nope'"}
    assert got[3] == {"error": "client: 'not-an-ip' is not an IP address"}
    assert got[4] == {"error": "client, group: give one of them, not both"}


async def test_batch_item_without_client_or_group_uses_the_remote_address():
    async with serve() as (client, backend):
        body = await post_json(client, "/v1/decisions", {"requests": [{"service": "spread"}]})
    assert body["decisions"] == [expected(backend, "spread", "default", "127.0.0.1")]


@pytest.mark.parametrize(("count", "status"), [(0, 200), (MAX_BATCH, 200), (MAX_BATCH + 1, 400)])
async def test_batch_size_limit(count, status):
    async with serve() as (client, _):
        body = await post_json(client, "/v1/decisions", {"requests": [{"service": "api", "group": "eu"}] * count}, status=status)
    if status == 200:
        assert len(body["decisions"]) == count
    else:
        assert body == {"error": f"requests: at most {MAX_BATCH} per batch, got {MAX_BATCH + 1}"}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param([], 'body: expected a JSON object {"requests": [...]}', id="array"),
        pytest.param({}, "requests: required", id="no-requests"),
        pytest.param({"requests": {}}, "requests: expected an array", id="requests-object"),
        pytest.param({"requests": [], "extra": 1}, "body: unknown field 'extra'", id="unknown-top-field"),
        pytest.param({"requests": ["api"]}, "requests[0]: expected an object", id="item-not-object"),
        pytest.param({"requests": [{"group": "eu"}]}, "requests[0].service: required", id="no-service"),
        pytest.param({"requests": [{"service": 7}]}, "requests[0].service: must be a non-empty string", id="service-number"),
        pytest.param({"requests": [{"service": "api", "client": None}]}, "requests[0].client: must be a non-empty string", id="client-null"),
        pytest.param({"requests": [{"service": "api", "group": ""}]}, "requests[0].group: must be a non-empty string", id="group-empty"),
        pytest.param(
            {"requests": [{"service": "api"}, {"service": "api", "cleint": "1.2.3.4"}]},
            "requests[1]: unknown field 'cleint'",
            id="item-unknown-field",
        ),
    ],
)
async def test_batch_malformed_body_is_400_naming_the_field(payload, message):
    async with serve() as (client, _):
        body = await post_json(client, "/v1/decisions", payload, status=400)
    assert body["error"].startswith(message)


@pytest.mark.parametrize(
    ("data", "content_type", "status", "message"),
    [
        pytest.param(b"{not json", "application/json", 400, "body: not valid JSON", id="not-json"),
        pytest.param(b"", "application/json", 400, "body: not valid JSON", id="empty"),
        pytest.param(b"\xff\xfe", "application/json", 400, "body: not valid JSON", id="not-utf8"),
        pytest.param(b"[" * 100_000, "application/json", 413, f"body: larger than the limit of {MAX_BODY} bytes", id="deep-and-big"),
        pytest.param(b'{"requests": []}', "text/plain", 415, "body: send Content-Type: application/json", id="text-plain"),
        pytest.param(b'{"requests": []}', "application/vnd.lr+json", 200, None, id="plus-json"),
        pytest.param(b'{"requests": []}', None, 200, None, id="no-content-type"),
    ],
)
async def test_batch_body_encoding(data, content_type, status, message):
    headers = {} if content_type is None else {"Content-Type": content_type}
    # skip_auto_headers: without it aiohttp adds application/octet-stream to a bytes body
    post = {"data": data, "headers": headers, "skip_auto_headers": ["Content-Type"]}
    async with serve() as (client, _), client.post("/v1/decisions", **post) as resp:
        assert resp.status == status, await resp.text()
        assert resp.content_type == "application/json"
        body = await resp.json()
    if message is None:
        assert body == {"decisions": []}
    else:
        assert body["error"].startswith(message)


async def test_deeply_nested_json_within_the_size_limit_is_400():
    async with serve(max_body=1 << 20) as (client, _):
        body = await post_json(client, "/v1/decisions", None, status=400, data=b"[" * 200_000,
                               headers={"Content-Type": "application/json"})
    assert body["error"].startswith("body: not valid JSON")


@pytest.mark.parametrize("path", ["/v1/decisions", "/v1/admin/drain"])
async def test_oversized_body_is_413_json(path):
    payload = {"requests": [{"service": "api", "group": "eu"}] * 400}  # about 13 kB, over MAX_BODY
    assert len(json.dumps(payload)) > MAX_BODY
    async with serve() as (client, _):
        body = await post_json(client, path, payload, status=413, headers=AUTH)
    assert body == {"error": f"body: larger than the limit of {MAX_BODY} bytes"}


# --- the table, regions, health, metrics ---------------------------------------------------------------------


async def test_table_is_the_snapshot():
    async with serve() as (client, backend):
        body = await get_json(client, "/v1/table")
        again = await get_json(client, "/v1/table")
        assert body == json.loads(json.dumps(backend.snapshot.to_json())) == again
        backend.feed(rounds=1)
        fresh = await get_json(client, "/v1/table")
    assert len(body["rows"]) == 18  # 3 table groups x 3 regions x 2 paths
    assert fresh == json.loads(json.dumps(backend.snapshot.to_json()))
    assert [r["samples"] for r in fresh["rows"]] == [r["samples"] + 1 for r in body["rows"]]


def test_make_app_refuses_limits_below_one():
    with pytest.raises(ValueError, match="max_body_bytes and max_batch"):
        make_app(fed_backend(), token=None, max_body_bytes=0, max_batch=10)


@pytest.mark.parametrize(
    "query",
    [
        pytest.param({"group": "eu"}, id="group"),
        pytest.param({"region": AP}, id="region"),
        pytest.param({"path": "accelerator"}, id="path"),
        pytest.param({"group": AGENT, "region": EU, "path": "direct"}, id="all-three"),
        pytest.param({"group": "mars"}, id="matches-nothing"),
    ],
)
async def test_table_filters(query):
    async with serve() as (client, backend):
        body = await get_json(client, "/v1/table", params=query)
    want = [r for r in json.loads(json.dumps(backend.snapshot.to_json()))["rows"] if all(r[k] == v for k, v in query.items())]
    assert body == {"rows": want}
    if query != {"group": "mars"}:
        assert want


async def test_table_refuses_an_unknown_filter():
    async with serve() as (client, _):
        body = await get_json(client, "/v1/table?colour=red", status=400)
    assert body["error"].startswith("'colour': unknown parameter (expected: group, region, path)")


async def test_regions():
    async with serve() as (client, backend):
        body = await get_json(client, "/v1/regions")
    assert body == {"regions": backend.regions()}
    assert [r["name"] for r in body["regions"]] == [EU, US, AP]


@pytest.mark.parametrize("path, attribute", [("/healthz", "alive"), ("/readyz", "ready")])
async def test_health_endpoints(path, attribute):
    async with serve() as (client, backend):
        assert await get_json(client, path) == {"status": "ok"}
        setattr(backend, attribute, (False, "the probe loop stopped 12 s ago"))
        assert await get_json(client, path, status=503) == {"error": "the probe loop stopped 12 s ago"}


async def test_metrics_are_the_backends():
    async with serve() as (client, backend), client.get("/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
        content_type = resp.headers["Content-Type"]
    body, expected_type = backend.metrics()
    assert text == body.decode()
    assert content_type == expected_type
    assert "latency_router_decisions 8.0" in text


async def test_openapi_document_lists_every_route_of_the_app():
    async with serve() as (client, backend):
        doc = await get_json(client, "/openapi.json")
        routes = {
            (route.method.lower(), route.resource.canonical)
            for route in client.app.router.routes()
            if route.method != "HEAD" and route.resource is not None
        }
    assert doc["openapi"] == "3.1.0"
    documented = {(method, path) for path, item in doc["paths"].items() for method in item}
    assert documented == routes
    assert {"Decision", "Candidate", "Row", "Region", "Error"} <= set(doc["components"]["schemas"])
    # the config's names are the examples
    params = {p["name"]: p for p in doc["paths"]["/v1/decision"]["get"]["parameters"]}
    assert params["service"]["schema"]["examples"] == ["api"]
    assert doc == json.loads(json.dumps(openapi_document(backend.config, max_batch=MAX_BATCH, max_body_bytes=MAX_BODY)))


# --- admin ---------------------------------------------------------------------------------------------------

ADMIN_CALLS = [
    pytest.param("post", "/v1/admin/drain", {"region": EU}, id="drain"),
    pytest.param("post", "/v1/admin/undrain", {"region": EU}, id="undrain"),
    pytest.param("post", "/v1/admin/pin", {"service": "api", "group": "eu", "region": US}, id="pin"),
    pytest.param("post", "/v1/admin/unpin", {"service": "api", "group": "eu"}, id="unpin"),
    pytest.param("get", "/v1/admin/state", None, id="state"),
]


async def admin_call(client: TestClient, method: str, path: str, payload: Any, headers: dict[str, str]) -> aiohttp.ClientResponse:
    kw: dict[str, Any] = {"headers": headers}
    if payload is not None:
        kw["json"] = payload
    resp = await client.request(method.upper(), path, **kw)
    await resp.read()
    return resp


@pytest.mark.parametrize(("method", "path", "payload"), ADMIN_CALLS)
async def test_admin_is_off_without_a_token(method, path, payload):
    async with serve(token=None) as (client, backend):
        resp = await admin_call(client, method, path, payload, AUTH)
        assert resp.status == 404
        assert await resp.json() == {"error": ADMIN_OFF}
    assert backend.admin_state() == {"drained": [], "pins": []}


@pytest.mark.parametrize(
    ("headers", "challenge"),
    [
        pytest.param({}, 'Bearer realm="latency-router admin"', id="missing"),
        pytest.param({"Authorization": "Bearer wrong"}, 'Bearer realm="latency-router admin", error="invalid_token"', id="wrong"),
        pytest.param({"Authorization": f"Bearer {TOKEN}x"}, 'Bearer realm="latency-router admin", error="invalid_token"', id="longer"),
        pytest.param({"Authorization": f"Basic {TOKEN}"}, 'Bearer realm="latency-router admin"', id="basic-scheme"),
        pytest.param({"Authorization": "Bearer"}, 'Bearer realm="latency-router admin"', id="no-token"),
        pytest.param({"Authorization": "Bearer sécret"}, 'Bearer realm="latency-router admin", error="invalid_token"', id="non-ascii"),
    ],
)
@pytest.mark.parametrize(("method", "path", "payload"), ADMIN_CALLS)
async def test_admin_needs_the_right_token(method, path, payload, headers, challenge):
    async with serve() as (client, backend):
        resp = await admin_call(client, method, path, payload, headers)
        assert resp.status == 401
        assert resp.headers["WWW-Authenticate"] == challenge
        assert (await resp.json())["error"].startswith("authorization: ")
        ok = await admin_call(client, method, path, payload, {"Authorization": f"bearer  {TOKEN} "})
        assert ok.status == 200, await ok.text()
        assert await ok.json() == backend.admin_state()


async def test_drain_and_undrain_move_decisions():
    async with serve() as (client, backend):
        before = await get_json(client, "/v1/decision?service=api&group=eu")
        state = await post_json(client, "/v1/admin/drain", {"region": EU}, headers=AUTH)
        drained = await get_json(client, "/v1/decision?service=api&group=eu")
        regions = await get_json(client, "/v1/regions")
        assert await get_json(client, "/v1/admin/state", headers=AUTH) == state
        back = await post_json(client, "/v1/admin/undrain", {"region": EU}, headers=AUTH)
        backend.feed(rounds=12)  # hysteresis: the way back takes 3 evaluations and the 10 s dwell
        after = await get_json(client, "/v1/decision?service=api&group=eu")
    assert before["region"] == EU
    assert state == {"drained": [EU], "pins": []}
    assert drained["region"] == US
    assert [c["excluded"] for c in drained["candidates"] if c["region"] == EU] == ["drained"]
    assert [r["drained"] for r in regions["regions"]] == [True, False, False]
    assert back == {"drained": [], "pins": []}
    assert after["region"] == EU and after["answer"] == before["answer"]


async def test_pin_and_unpin():
    async with serve() as (client, _):
        state = await post_json(client, "/v1/admin/pin", {"service": "api", "group": "eu", "region": AP}, headers=AUTH)
        pinned = await get_json(client, "/v1/decision?service=api&client=192.0.2.9")
        await post_json(client, "/v1/admin/pin", {"service": "api", "group": "eu", "region": AP, "path": "accelerator"}, headers=AUTH)
        accel = await get_json(client, "/v1/decision?service=api&group=eu")
        back = await post_json(client, "/v1/admin/unpin", {"service": "api", "group": "eu"}, headers=AUTH)
        live = await get_json(client, "/v1/decision?service=api&group=eu")
    assert state == {"drained": [], "pins": [{"service": "api", "group": "eu", "region": AP, "path": "direct"}]}
    assert (pinned["region"], pinned["path"], pinned["basis"]) == (AP, "direct", "pinned")
    assert pinned["answers"] == ["2001:db8:30::1"]
    assert (accel["region"], accel["path"]) == (AP, "accelerator")
    assert back == {"drained": [], "pins": []}
    assert live["region"] == EU and live["basis"] == "measured"


@pytest.mark.parametrize(
    ("path", "payload", "status", "message"),
    [
        pytest.param("/v1/admin/drain", {"region": "mars-1"}, 404, "region: unknown region 'mars-1'", id="drain-unknown-region"),
        pytest.param("/v1/admin/undrain", {"region": "mars-1"}, 404, "region: unknown region 'mars-1'", id="undrain-unknown"),
        pytest.param("/v1/admin/drain", {}, 400, "region: required", id="drain-no-region"),
        pytest.param("/v1/admin/drain", {"region": 3}, 400, "region: must be a non-empty string", id="drain-region-number"),
        pytest.param("/v1/admin/drain", {"region": EU, "force": True}, 400, "body: unknown field 'force'", id="drain-unknown-field"),
        pytest.param("/v1/admin/drain", {"regoin": EU, "now": 1}, 400, "body: unknown fields 'regoin', 'now'", id="two-unknown"),
        pytest.param("/v1/admin/drain", [EU], 400, "body: expected a JSON object", id="drain-array"),
        pytest.param("/v1/admin/pin", {"service": "nope", "group": "eu", "region": EU}, 404, "service: unknown service 'nope'", id="pin-service"),
        pytest.param("/v1/admin/pin", {"service": "api", "group": "mars", "region": EU}, 404, "group: unknown group 'mars'", id="pin-group"),
        pytest.param("/v1/admin/pin", {"service": "api", "group": "eu", "region": "x"}, 404, "region: unknown region 'x'", id="pin-region"),
        pytest.param(
            "/v1/admin/pin", {"service": "api", "group": "eu", "region": EU, "path": "warp"}, 400,
            "path: region 'eu-west-1' has no path 'warp' (it has: direct, accelerator)", id="pin-bad-path",
        ),
        pytest.param("/v1/admin/pin", {"service": "api", "group": "eu", "region": EU, "path": ""}, 400, "path: must be", id="pin-empty-path"),
        pytest.param("/v1/admin/pin", {"service": "api", "region": EU}, 400, "group: required", id="pin-no-group"),
        pytest.param("/v1/admin/unpin", {"service": "api", "group": "mars"}, 404, "group: unknown group 'mars'", id="unpin-unknown"),
        pytest.param("/v1/admin/unpin", {"service": "api", "group": "eu", "region": EU}, 400, "body: unknown field 'region'", id="unpin-extra"),
    ],
)
async def test_admin_errors_name_the_field(path, payload, status, message):
    async with serve() as (client, backend):
        body = await post_json(client, path, payload, status=status, headers=AUTH)
    assert body["error"].startswith(message), body
    assert backend.admin_state() == {"drained": [], "pins": []}


# --- routing, failures, listening ----------------------------------------------------------------------------


async def test_unknown_route_and_wrong_method_are_json():
    async with serve() as (client, _):
        missing = await get_json(client, "/v2/decision", status=404)
        async with client.delete("/v1/decision") as resp:
            assert resp.status == 405
            assert "GET" in resp.headers["Allow"]
            wrong = await resp.json()
        async with client.get("/v1/admin/drain", headers=AUTH) as resp:
            assert resp.status == 405
            assert resp.headers["Allow"] == "POST"
    assert missing == {"error": "no such endpoint: '/v2/decision'"}
    assert wrong["error"].startswith("method DELETE is not allowed for '/v1/decision'")


@pytest.mark.parametrize(
    ("failing", "path"),
    [("regions", "/v1/regions"), ("decision", "/v1/decision?service=api&group=eu"), ("table", "/v1/table"), ("metrics", "/metrics")],
)
async def test_a_handler_exception_is_500_json_and_the_api_keeps_serving(failing, path, caplog):
    async with serve() as (client, backend):
        backend.fail.add(failing)
        with caplog.at_level(logging.ERROR, logger="latency_router.api"):
            body = await get_json(client, path, status=500)
        backend.fail.clear()
        async with client.get(path) as resp:
            assert resp.status == 200
    assert body == {"error": "internal error (logged by the daemon)"}
    assert any(f"injected failure in {failing}" in r.getMessage() + str(r.exc_info) for r in caplog.records)


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.parametrize(
    ("host", "group"),
    [
        pytest.param("127.0.0.1", "default", id="ipv4"),
        pytest.param(
            "[::1]", "default", id="ipv6", marks=pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
        ),
    ],
)
async def test_start_api_listens_and_stops(host, group):
    backend = fed_backend()
    app = make_app(backend, token=None, max_body_bytes=MAX_BODY, max_batch=MAX_BATCH)
    runner = await start_api(app, host, 0)
    try:
        bound_host, port = bound_address(runner)
        assert port > 0
        url_host = f"[{bound_host}]" if ":" in bound_host else bound_host
        url = f"http://{url_host}:{port}/v1/decision?service=spread"
        async with aiohttp.ClientSession() as session, session.get(url) as resp:
            assert resp.status == 200
            body = await resp.json()
    finally:
        await stop_api(runner)
    assert body == expected(backend, "spread", group, bound_host)
    with pytest.raises(OSError):  # nothing listens any more
        socket.create_connection((bound_host, port), timeout=1).close()


async def test_exporters_lists_each_dns_exporters_state():
    async with serve() as (client, backend):
        body = await get_json(client, "/v1/exporters")
    assert body == {"exporters": backend.exporters()}
    assert [e["provider"] for e in body["exporters"]] == ["pdns"] and body["exporters"][0]["writes_total"] == 3

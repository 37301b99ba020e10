"""The OpenAPI 3.1 document of the HTTP API: every endpoint, parameter, body and response, errors included.

It is what the handlers in `app.py` really return (tests/test_api_schema.py runs schemathesis against it), so a change
to a handler's answer is a change here. Response schemas are closed (`additionalProperties: false`): a field that
appears in an answer without being described here fails the schema test.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from latency_router import __version__

if TYPE_CHECKING:
    from latency_router.config.models import Config

JSON = "application/json"
HEALTH_STATES = ["up", "down", "unknown", "stale"]
ADMIN_OFF = "admin endpoints are off: no [api] token configured"

_NUMBER_OR_NULL: dict[str, Any] = {"type": ["number", "null"]}
_STRING_OR_NULL: dict[str, Any] = {"type": ["string", "null"]}
_NAME: dict[str, Any] = {"type": "string", "minLength": 1}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _closed(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    """An object schema that allows only the listed properties; every one required unless `required` says otherwise."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": False,
        **extra,
    }


def _schemas(max_batch: int) -> dict[str, Any]:
    candidate = _closed(
        {
            "region": {"type": "string"},
            "path": {"type": "string"},
            "answer": {"type": "string", "description": "the address or host name this candidate hands out"},
            "rtt_ms": {**_NUMBER_OR_NULL, "description": "the service's metric of this row (EWMA by default), null when unmeasured"},
            "health": {"enum": [*HEALTH_STATES, "none"], "description": "the row's health; none when the table has no row"},
            "healthy": {"type": "boolean", "description": "what the policies take the row for"},
            "weight": {"type": "integer", "minimum": 0, "maximum": 255, "description": "share of the group's answers, 0-255"},
            "path_margin_ms": {**_NUMBER_OR_NULL, "description": "how much this path beats the region's best other path"},
            "excluded": {**_STRING_OR_NULL, "description": "why a filter dropped it (unhealthy, fenced, drained, ...), null when ranked"},
        },
        description="One region as a decision saw it, over the path chosen for it.",
    )
    decision = _closed(
        {
            "service": {"type": "string"},
            "group": {"type": "string"},
            "policy": {"type": "string", "description": "the named policy, or 'chain'"},
            "region": {**_STRING_OR_NULL, "description": "null when there is no answer"},
            "path": _STRING_OR_NULL,
            "answer": {**_STRING_OR_NULL, "description": "the first of answers"},
            "answers": {"type": "array", "items": {"type": "string"}},
            "rtt_ms": _NUMBER_OR_NULL,
            "ttl": {"type": "integer", "minimum": 0, "description": "seconds"},
            "basis": {"type": "string", "description": "measured, unknown, provisional, pinned, static or none"},
            "reason": {"type": "string", "description": "the decision explained in words"},
            "fallback": {**_STRING_OR_NULL, "description": "the all-down behaviour that fired, or null"},
            "path_margin_ms": _NUMBER_OR_NULL,
            "candidates": {"type": "array", "items": _ref("Candidate"), "description": "ranked, then the excluded ones"},
            "evaluated_at": {"type": "number", "description": "when the decision was last evaluated (daemon clock, seconds)"},
            "changed_at": {"type": "number", "description": "when its region, path or answers last changed"},
        },
        description="For one (service, group): where clients go, over which path, why, and what else was considered.",
    )
    row = _closed(
        {
            "group": {"type": "string", "description": "a client group, or the vantage that measures groups without rows of their own"},
            "region": {"type": "string"},
            "path": {"type": "string"},
            "ewma_ms": _NUMBER_OR_NULL,
            "p50_ms": _NUMBER_OR_NULL,
            "p95_ms": _NUMBER_OR_NULL,
            "p99_ms": _NUMBER_OR_NULL,
            "min_ms": _NUMBER_OR_NULL,
            "jitter_ms": {**_NUMBER_OR_NULL, "description": "RFC 3550 interarrival jitter"},
            "loss": {"type": ["number", "null"], "minimum": 0, "maximum": 1, "description": "lost / sent over the window"},
            "samples": {"type": "integer", "minimum": 0},
            "healthy": {"type": "boolean"},
            "health": {"enum": HEALTH_STATES},
            "basis": {"type": "string", "description": "measured or predicted"},
            "updated_at": _NUMBER_OR_NULL,
        },
        description="The table's statistics for one (group, region, path).",
    )
    region_path = _closed(
        {
            "name": {"type": "string"},
            "answer": {"type": "string"},
            "probe": {"type": "string", "description": "the probe URL"},
            "health": {"enum": [*HEALTH_STATES, "none"], "description": "the local vantage's row; none without a row"},
        }
    )
    region = _closed(
        {
            "name": {"type": "string"},
            "lat": {"type": "number", "minimum": -90, "maximum": 90},
            "lon": {"type": "number", "minimum": -180, "maximum": 180},
            "drained": {"type": "boolean", "description": "taken out of every decision by an operator"},
            "paths": {"type": "array", "items": _ref("RegionPath")},
        },
        description="A region, its location and its paths.",
    )
    batch_item = _closed(
        {
            "service": _NAME,
            "client": {**_NAME, "description": "a client IPv4 or IPv6 address"},
            "group": {**_NAME, "description": "a group name, instead of client"},
        },
        required=["service"],
        description="One lookup; without client or group the request's remote address is the client.",
    )
    pin = _closed({"service": {"type": "string"}, "group": {"type": "string"}, "region": {"type": "string"}, "path": _STRING_OR_NULL})
    return {
        "Error": _closed({"error": {"type": "string", "description": "what is wrong, naming the parameter or field"}}),
        "Status": _closed({"status": {"const": "ok"}}),
        "Candidate": candidate,
        "Decision": decision,
        "Row": row,
        "Table": _closed({"rows": {"type": "array", "items": _ref("Row")}}),
        "RegionPath": region_path,
        "Region": region,
        "Regions": _closed({"regions": {"type": "array", "items": _ref("Region")}}),
        "Exporter": _closed(
            {
                "provider": {"type": "string"},
                "state": {"enum": ["ok", "pending", "retrying", "failed", "refused"]},
                "last_success_at": _NUMBER_OR_NULL,
                "last_error": {"type": ["string", "null"]},
                "last_error_at": _NUMBER_OR_NULL,
                "consecutive_failures": {"type": "integer", "minimum": 0},
                "writes_total": {"type": "integer", "minimum": 0},
                "failures_total": {"type": "integer", "minimum": 0},
                "last_plan": {"type": ["object", "null"], "additionalProperties": {"type": "integer"}},
                "refused": {"type": "array", "items": {"type": "string"}},
                "record_sets": {"type": "integer", "minimum": 0},
            },
            description="A DNS exporter's state; it never holds a secret.",
        ),
        "Exporters": _closed({"exporters": {"type": "array", "items": _ref("Exporter")}}),
        "DecisionRequest": batch_item,
        "DecisionBatchRequest": _closed(
            {"requests": {"type": "array", "items": _ref("DecisionRequest"), "maxItems": max_batch}}
        ),
        "DecisionBatch": _closed(
            {
                "decisions": {
                    "type": "array",
                    "items": {"oneOf": [_ref("Decision"), _ref("Error")]},
                    "description": "one per request, in order: the decision, or an error naming what was wrong",
                }
            }
        ),
        "DrainRequest": _closed({"region": _NAME}),
        "PinRequest": _closed(
            {
                "service": _NAME,
                "group": _NAME,
                "region": _NAME,
                "path": {"type": ["string", "null"], "minLength": 1, "description": "null or absent: the region's primary path"},
            },
            required=["service", "group", "region"],
        ),
        "UnpinRequest": _closed({"service": _NAME, "group": _NAME}),
        "Pin": pin,
        "AdminState": _closed(
            {
                "drained": {"type": "array", "items": {"type": "string"}},
                "pins": {"type": "array", "items": _ref("Pin")},
            }
        ),
    }


def _json(schema: str, description: str, headers: dict[str, Any] | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {"description": description, "content": {JSON: {"schema": _ref(schema)}}}
    if headers:
        response["headers"] = headers
    return response


def _error(description: str) -> dict[str, Any]:
    return _json("Error", description)


_UNAUTHORIZED = _json(
    "Error",
    "missing or wrong bearer token",
    headers={"WWW-Authenticate": {"description": "Bearer challenge (RFC 6750)", "schema": {"type": "string"}}},
)
_SERVER_ERROR = _error("an unexpected error (logged); the daemon keeps serving")


def _query(name: str, description: str, *, required: bool = False, example: str | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = dict(_NAME)
    if example is not None:
        schema["examples"] = [example]
    return {"name": name, "in": "query", "required": required, "description": description, "schema": schema}


def _body(schema: str, description: str, example: dict[str, Any] | None = None) -> dict[str, Any]:
    media: dict[str, Any] = {"schema": _ref(schema)}
    if example is not None:
        media["example"] = example
    return {"required": True, "description": description, "content": {JSON: media}}


def _body_errors(max_body_bytes: int) -> dict[str, Any]:
    return {
        "400": _error("the body is not JSON or does not match its schema; the error names the field"),
        "413": _error(f"the body is larger than {max_body_bytes} bytes"),
        "415": _error("the body is not application/json"),
    }


def openapi_document(config: Config | None, *, max_batch: int, max_body_bytes: int) -> dict[str, Any]:
    """The OpenAPI 3.1 document; names from `config` (when given) appear as examples."""
    service = group = region = client = None
    if config is not None:
        service = config.services[0].name if config.services else None
        group = config.groups[0].name if config.groups else config.default_group
        region = config.regions[0].name
        client = next((str(n.network_address) for g in config.groups for n in g.cidrs), None)
    admin_common = {
        "401": _UNAUTHORIZED,
        "404": _error(f"a name is unknown, or the admin endpoints are off ('{ADMIN_OFF}')"),
        "500": _SERVER_ERROR,
    }
    admin_post = {"200": _json("AdminState", "the admin state after the change"), **_body_errors(max_body_bytes), **admin_common}
    security = [{"bearer": []}]

    def admin(summary: str, schema: str, example: dict[str, Any]) -> dict[str, Any]:
        return {
            "post": {
                "summary": summary,
                "tags": ["admin"],
                "security": security,
                "requestBody": _body(schema, "unknown fields are refused", example),
                "responses": admin_post,
            }
        }

    decision_example = {"service": service, "group": group} if service and group else None
    paths: dict[str, Any] = {
        "/v1/decision": {
            "get": {
                "summary": "The decision for one client (or group) and service",
                "tags": ["decisions"],
                "parameters": [
                    _query("service", "the service", required=True, example=service),
                    _query("client", "the client's IPv4 or IPv6 address (default: the request's remote address)", example=client),
                    _query("group", "a group, instead of client", example=group),
                ],
                "responses": {
                    "200": _json("Decision", "the decision, for this client when a client address was given"),
                    "400": _error("a missing or bad parameter, client and group together, or an unknown parameter"),
                    "404": _error("an unknown service or group"),
                    "500": _SERVER_ERROR,
                    "503": _error("no decision yet for a known (service, group)"),
                },
            }
        },
        "/v1/decisions": {
            "post": {
                "summary": f"Many decisions at once (at most {max_batch})",
                "tags": ["decisions"],
                "requestBody": _body(
                    "DecisionBatchRequest",
                    "the lookups; an item's unknown name or bad address is answered by an error in its place",
                    {"requests": [decision_example]} if decision_example else None,
                ),
                "responses": {
                    "200": _json("DecisionBatch", "one decision or error per request, in order"),
                    **_body_errors(max_body_bytes),
                    "500": _SERVER_ERROR,
                },
            }
        },
        "/v1/table": {
            "get": {
                "summary": "The latency table, optionally filtered",
                "tags": ["table"],
                "parameters": [
                    _query("group", "only rows of this group (or vantage)", example=group),
                    _query("region", "only rows of this region", example=region),
                    _query("path", "only rows of this path", example="direct"),
                ],
                "responses": {
                    "200": _json("Table", "the rows in (group, region, path) order"),
                    "400": _error("an unknown parameter"),
                    "500": _SERVER_ERROR,
                },
            }
        },
        "/v1/regions": {
            "get": {
                "summary": "Every region, its paths, their health and whether it is drained",
                "tags": ["table"],
                "responses": {"200": _json("Regions", "the regions in config order"), "500": _SERVER_ERROR},
            }
        },
        "/v1/exporters": {
            "get": {
                "summary": "Every DNS exporter: its provider, state, last success and error, writes and failures",
                "tags": ["exporters"],
                "responses": {"200": _json("Exporters", "one entry per [[dns.providers]] table"), "500": _SERVER_ERROR},
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness: the daemon's loops are running",
                "tags": ["health"],
                "responses": {
                    "200": _json("Status", "alive"),
                    "500": _SERVER_ERROR,
                    "503": _error("not alive, and why"),
                },
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: every target has finished a round, or the start-up grace has passed",
                "tags": ["health"],
                "responses": {
                    "200": _json("Status", "ready"),
                    "500": _SERVER_ERROR,
                    "503": _error("not ready yet, and why"),
                },
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics",
                "tags": ["health"],
                "responses": {
                    "200": {
                        "description": "the Prometheus text exposition (or OpenMetrics)",
                        "content": {
                            "text/plain": {"schema": {"type": "string"}},
                            "application/openmetrics-text": {"schema": {"type": "string"}},
                        },
                    },
                    "500": _SERVER_ERROR,
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "tags": ["health"],
                "responses": {
                    "200": {"description": "the OpenAPI 3.1 document", "content": {JSON: {"schema": {"type": "object"}}}},
                    "500": _SERVER_ERROR,
                },
            }
        },
        "/v1/admin/drain": admin("Take a region out of every decision", "DrainRequest", {"region": region or "eu-west-1"}),
        "/v1/admin/undrain": admin("Give a drained region back", "DrainRequest", {"region": region or "eu-west-1"}),
        "/v1/admin/pin": admin(
            "Pin a (service, group) to a region (and path)",
            "PinRequest",
            {"service": service or "api", "group": group or "default", "region": region or "eu-west-1"},
        ),
        "/v1/admin/unpin": admin("Remove a pin", "UnpinRequest", {"service": service or "api", "group": group or "default"}),
        "/v1/admin/state": {
            "get": {
                "summary": "The drained regions and the pins",
                "tags": ["admin"],
                "security": security,
                "responses": {"200": _json("AdminState", "the admin state"), **admin_common},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "latency-router",
            "version": __version__,
            "description": "Routing decisions from measured latency: where each client group goes, over which path, and why.",
        },
        "paths": paths,
        "components": {
            "schemas": _schemas(max_batch),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "description": "the [api] token"}},
        },
    }

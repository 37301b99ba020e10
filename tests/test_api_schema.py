"""The OpenAPI document against what the handlers really do: schemathesis over a live server on 127.0.0.1.

The server runs the real app over a LabBackend (real table and Decider) in a thread with its own event loop; every
operation is fuzzed (positive and negative data, bounded examples) with the admin token, and every response checked.
"""

from __future__ import annotations

import asyncio
import copy
import json
import threading
from collections.abc import Iterator
from typing import Any, Self

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    ignored_auth,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR

from api_support import fed_backend
from latency_router.api import bound_address, make_app, start_api, stop_api
from latency_router.decider.decision import Decision
from latency_router.secrets import Secret

TOKEN = "schema-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
MAX_EXAMPLES = 40
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
    response_headers_conformance,
    negative_data_rejection,
    ignored_auth,
    unsupported_method,
]


class ServerThread:
    """The API app over a fed LabBackend, served on 127.0.0.1 (a free port) by an event loop in its own thread."""

    def __init__(self) -> None:
        self.backend = fed_backend()
        self.url = ""
        self._started = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, name="api-schema-server", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - handed to the test thread
            self._error = exc
            self._started.set()

    async def _serve(self) -> None:
        app = make_app(self.backend, token=Secret(TOKEN, "env:TEST"), max_body_bytes=64 * 1024, max_batch=20)
        runner = await start_api(app, "127.0.0.1", 0)
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        host, port = bound_address(runner)
        self.url = f"http://{host}:{port}"
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await stop_api(runner)

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._started.wait(10) or self._error is not None:
            raise RuntimeError(f"the API server did not start: {self._error!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        assert not self._thread.is_alive(), "the API server thread did not stop"


@pytest.fixture(scope="module")
def server() -> Iterator[ServerThread]:
    with ServerThread() as running:
        yield running


@pytest.fixture(scope="module")
def api_schema(server: ServerThread) -> Any:
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json", timeout=10)
    schema.config.update(base_url=server.url, request_timeout=10)
    schema.config.generation.update(modes=["positive", "negative"], max_examples=MAX_EXAMPLES, deterministic=True)
    return schema


lazy_schema = schemathesis.pytest.from_fixture("api_schema")


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32's fixture loader reads and writes Node._nodeid, which pytest 9 no longer has
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@lazy_schema.parametrize()
@settings(max_examples=MAX_EXAMPLES, deadline=2000, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
def test_every_operation_conforms(case):
    case.call_and_validate(headers=AUTH, checks=CHECKS)


def test_every_documented_operation_is_fuzzed_but_the_document_itself(server: ServerThread, api_schema: Any):
    """schemathesis leaves out the operation that serves the document it loaded from; the next test covers that one."""
    import requests

    document = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    documented = {f"{method.upper()} {path}" for path, item in document["paths"].items() for method in item}
    fuzzed = {result.ok().label for result in api_schema.get_all_operations()}
    assert fuzzed == documented - {"GET /openapi.json"}
    assert len(fuzzed) == 13


def test_document_is_valid_openapi_3_1_and_describes_itself(server: ServerThread):
    import requests

    document = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    # openapi-spec-validator is not installed; schemathesis carries the official OpenAPI 3.1 meta-schema
    errors = [str(e) for e in OPENAPI_31_VALIDATOR.iter_errors(document)]
    assert errors == []
    assert document["openapi"] == "3.1.0"
    schema = schemathesis.openapi.from_dict(document)  # from a dict, /openapi.json is an operation like the others
    schema.config.update(base_url=server.url)
    schema["/openapi.json"]["GET"].Case().call_and_validate(checks=CHECKS)


def _component_validator(document: dict[str, Any], name: str) -> Any:
    """A JSON Schema validator of one component schema, its $refs resolved within the document."""
    import jsonschema_rs

    schema = {"$schema": "https://json-schema.org/draft/2020-12/schema", "$ref": f"#/components/schemas/{name}",
              "components": document["components"]}
    return jsonschema_rs.Draft202012Validator(schema)


def _all_decisions(server: ServerThread) -> list[Decision]:
    """Every decision of the backend, plus each one for a few clients (sticky pools answer per client)."""
    decisions = list(server.backend.decider.decisions.values())
    clients = ["192.0.2.1", "198.51.100.9", "2001:db8:1::1", "2001:db8:2::7"]
    return decisions + [d.for_client(c) for d in decisions for c in clients]


def test_real_objects_match_their_component_schemas(server: ServerThread):
    """Beside the fuzzing (which mostly meets 404s): every real decision, row and region is valid as documented."""
    import requests

    document = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    backend = server.backend
    decisions = [json.loads(json.dumps(d.to_json())) for d in _all_decisions(server)]
    rows = json.loads(json.dumps(backend.snapshot.to_json()))["rows"]
    checks = {"Decision": decisions, "Row": rows, "Region": backend.regions(), "AdminState": [backend.admin_state()]}
    for name, instances in checks.items():
        validator = _component_validator(document, name)
        assert instances, name
        for instance in instances:
            errors = [e.message for e in validator.iter_errors(instance)]
            assert errors == [], (name, instance)


def test_a_wrong_document_fails_the_checks(server: ServerThread):
    """The checks can fail: a copy of the document that says ttl is a string must be caught on a real answer."""
    import requests

    document = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    broken = copy.deepcopy(document)
    broken["components"]["schemas"]["Decision"]["properties"]["ttl"] = {"type": "string"}
    schema = schemathesis.openapi.from_dict(broken)
    schema.config.update(base_url=server.url)
    operation = schema["/v1/decision"]["GET"]
    case = operation.Case(query={"service": "api", "group": "eu"})
    with pytest.raises((AssertionError, FailureGroup)) as failure:
        case.call_and_validate(checks=[response_schema_conformance])
    assert "ttl" in str(failure.value)
    # and the true document passes the same case
    good = schemathesis.openapi.from_dict(document)
    good.config.update(base_url=server.url)
    good["/v1/decision"]["GET"].Case(query={"service": "api", "group": "eu"}).call_and_validate(checks=[response_schema_conformance])

"""The HTTP API: the aiohttp application factory, its handlers and the OpenAPI document, over the Backend protocol."""

from latency_router.api.app import ApiError, bound_address, make_app, start_api, stop_api
from latency_router.api.backend import AdminError, Backend
from latency_router.api.openapi import openapi_document

__all__ = ["AdminError", "ApiError", "Backend", "bound_address", "make_app", "openapi_document", "start_api", "stop_api"]

"""The OpenAPI document: the routes as FastAPI describes them, corrected to what they send.

Schemathesis checks the gateway against this document (tests/e2e/test_schemathesis.py), so it
must be exact: every status a route answers, the envelope of every error, the headers.
"""

from __future__ import annotations

import copy
from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")
_SECURITY_SCHEMES = {
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "BearerKey": {"type": "http", "scheme": "bearer", "description": "the same API key"},
}
_INTEGER = {"type": "integer", "minimum": 0}
_RATE_HEADERS = {
    "X-RateLimit-Limit": "Requests the key's bucket holds (twice its rate per second).",
    "X-RateLimit-Remaining": "Requests left in the bucket after this one.",
    "X-RateLimit-Reset": "Seconds until the bucket is full again.",
}
_RETRY_AFTER = {
    "description": "Seconds to wait before retrying (also `error.details.retry_after`).",
    "required": True, "schema": _INTEGER,
}
# Statuses answered before a key is known, or possibly so: they carry no X-RateLimit-*.
_BEFORE_THE_BUCKET = {"401", "500", "503"}
_HEALTH = {
    "/healthz": {"type": "object", "properties": {"status": {"const": "ok"}},
                 "required": ["status"]},
    "/readyz": {"type": "object", "required": ["status", "checks"], "properties": {
        "status": {"const": "ready"},
        "checks": {"type": "object", "additionalProperties": {"type": "string"}},
    }},
}


def install(app: FastAPI) -> None:
    """Serve the corrected document at `/openapi.json`."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = correct(schema)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def correct(schema: dict[str, Any]) -> dict[str, Any]:
    """Describe what the gateway really sends, and name the key."""
    components = schema.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "HTTPValidationError" in orjson.dumps(responses.get("422", {})).decode():
                del responses["422"]
            _hoist_definitions(operation, schemas)
            for response in responses.values():
                _drop_string_type(response)
            if path.startswith("/external/"):
                operation["security"] = [{name: []} for name in _SECURITY_SCHEMES]
                _describe_limits(responses)
            elif path in _HEALTH:
                _describe_health(path, responses)
    _link(schema)
    for name in _FASTAPI_ERROR_SCHEMAS:
        if f'"#/components/schemas/{name}"' not in orjson.dumps(schema).decode():
            schemas.pop(name, None)
    components["securitySchemes"] = _SECURITY_SCHEMES
    return schema


def _hoist_definitions(operation: dict[str, Any], schemas: dict[str, Any]) -> None:
    """Move a request body's `$defs` (pydantic's) to the components its `$ref`s point at."""
    for media in operation.get("requestBody", {}).get("content", {}).values():
        for name, definition in media.get("schema", {}).pop("$defs", {}).items():
            schemas.setdefault(name, definition)


def _drop_string_type(response: dict[str, Any]) -> None:
    # FastAPI calls the body of a response class it does not know a string; ours is JSON.
    for media_type, media in response.get("content", {}).items():
        body = media.get("schema", {})
        if media_type == "application/json" and body.get("type") == "string" and "$ref" in body:
            del body["type"]


def _describe_limits(responses: dict[str, Any]) -> None:
    """Add 429 and the rate-limit and retry headers to an operation that needs a key."""
    if "429" not in responses:
        responses["429"] = copy.deepcopy(responses["401"])
        responses["429"]["description"] = "RATE_LIMIT_EXCEEDED: this key's bucket is empty"
    for status, response in responses.items():
        headers = response.setdefault("headers", {})
        if status not in _BEFORE_THE_BUCKET:
            for name, description in _RATE_HEADERS.items():
                headers[name] = {"description": description, "required": True, "schema": _INTEGER}
        if status in ("429", "503"):
            headers["Retry-After"] = _RETRY_AFTER
        if status == "202" and "Location" in response.get("description", ""):
            headers["Location"] = {
                "description": "Where the update's status can be read.", "required": True,
                "schema": {"type": "string", "pattern": "^/external/v1/updates/upd_[a-z0-9]+$"},
            }
            headers["Preference-Applied"] = {
                "description": "`respond-async` when the request asked for it.",
                "schema": {"type": "string", "const": "respond-async"},
            }


def _describe_health(path: str, responses: dict[str, Any]) -> None:
    responses["200"]["content"] = {"application/json": {"schema": _HEALTH[path]}}
    if path == "/readyz":
        responses["503"] = {
            "description": "SERVICE_UNAVAILABLE: Redis or the database does not answer",
            "headers": {"Retry-After": _RETRY_AFTER},
            "content": {"application/json": {
                "schema": {"$ref": "#/components/schemas/ErrorEnvelope"}
            }},
        }


def _link(schema: dict[str, Any]) -> None:
    """Say where ids come from (OpenAPI links): a created contact, an accepted update, a
    registered webhook."""
    paths = schema.get("paths", {})
    webhook = "/external/v1/webhooks/{webhook_id}"
    by_webhook = {
        name: (target, method, "webhook_id", "$response.body#/data/id")
        for name, target, method in (
            ("GetWebhook", webhook, "get"), ("PatchWebhook", webhook, "patch"),
            ("DeleteWebhook", webhook, "delete"),
            ("RotateWebhookSecret", webhook + "/rotate-secret", "post"),
            ("GetWebhookDeliveries", webhook + "/deliveries", "get"),
            ("ReplayWebhook", webhook + "/replay", "post"),
        )
    }
    contact = "/external/v1/contacts/{contact_id}"
    update = "/external/v1/updates/{update_id}"
    by_contact = {
        f"{method.title()}Contact": (contact, method, "contact_id", "$response.body#/data/id")
        for method in ("get", "put", "delete")
    }
    sources = {
        ("/external/v1/contacts", "post", "201"): by_contact,
        (contact, "put", "200"): by_contact,
        (contact, "put", "202"): {
            "GetUpdate": (update, "get", "update_id", "$response.body#/data/update_id"),
        },
        ("/external/v1/webhooks", "post", "201"): by_webhook,
    }
    for (path, method, status), links in sources.items():
        response = paths.get(path, {}).get(method, {}).get("responses", {}).get(status)
        if response is None:
            continue
        for name, (target, target_method, parameter, expression) in links.items():
            operation_id = paths.get(target, {}).get(target_method, {}).get("operationId")
            if operation_id:
                response.setdefault("links", {})[name] = {
                    "operationId": operation_id, "parameters": {parameter: expression},
                }

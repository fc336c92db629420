"""The OpenAPI document: the routes as FastAPI describes them, corrected to what they send."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

_FASTAPI_ERROR_SCHEMAS = ("HTTPValidationError", "ValidationError")
_SECURITY_SCHEMES = {
    "ApiKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
    "BearerKey": {"type": "http", "scheme": "bearer", "description": "the same API key"},
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
    """Drop FastAPI's 422 (request errors are answered 400 in the envelope); name the key."""
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.get("responses", {})
            if "HTTPValidationError" in orjson.dumps(responses.get("422", {})).decode():
                del responses["422"]
            if path.startswith("/external/"):
                operation["security"] = [{name: []} for name in _SECURITY_SCHEMES]
    components = schema.setdefault("components", {})
    schemas = components.get("schemas", {})
    for name in _FASTAPI_ERROR_SCHEMAS:
        if f'"#/components/schemas/{name}"' not in orjson.dumps(schema).decode():
            schemas.pop(name, None)
    components["securitySchemes"] = _SECURITY_SCHEMES
    return schema

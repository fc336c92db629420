"""Map every error to the envelope `{"success": false, "error": {...}}`, in one place."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import ORJSONResponse
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from contactsync.errors import ClientError

log = logging.getLogger("contactsync.gateway")

_HTTP_CODES = {
    400: "VALIDATION_ERROR",
    401: "MISSING_API_KEY",
    403: "INSUFFICIENT_PERMISSIONS",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RATE_LIMIT_EXCEEDED",
    503: "SERVICE_UNAVAILABLE",
}


def envelope(code: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """Return the error envelope."""
    return {"success": False, "error": {"code": code, "message": message, "details": details or {}}}


def error_response(
    status: int, code: str, message: str, details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> ORJSONResponse:
    return ORJSONResponse(envelope(code, message, details), status_code=status, headers=headers)


async def _client_error(_: Request, exc: Exception) -> ORJSONResponse:
    assert isinstance(exc, ClientError)
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


async def _http_error(_: Request, exc: Exception) -> ORJSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "INTERNAL_ERROR")
    messages = {404: "No such resource.", 405: "Method not allowed on this resource."}
    message = messages.get(exc.status_code, str(exc.detail))
    return error_response(exc.status_code, code, message, headers=exc.headers)


async def _request_validation(_: Request, exc: Exception) -> ORJSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields: dict[str, str] = {}
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if p not in ("query", "path", "header", "body")]
        fields.setdefault(".".join(loc) or "_body", str(error.get("msg", "invalid")))
    return error_response(400, "VALIDATION_ERROR", "The request is not valid.", {"fields": fields})


async def _unavailable(_: Request, exc: Exception) -> ORJSONResponse:
    log.warning("dependency unavailable: %s", type(exc).__name__)
    return error_response(
        503, "SERVICE_UNAVAILABLE", "A backing service is unavailable; retry shortly.",
        {"retry_after": 1}, {"Retry-After": "1"},
    )


async def _internal(_: Request, exc: Exception) -> ORJSONResponse:
    log.error("unhandled error: %s", type(exc).__name__, exc_info=exc)
    return error_response(500, "INTERNAL_ERROR", "An internal error occurred.")


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into the envelope."""
    app.add_exception_handler(ClientError, _client_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _request_validation)
    for unavailable in (RedisConnectionError, RedisTimeoutError, OperationalError):
        app.add_exception_handler(unavailable, _unavailable)
    app.add_exception_handler(Exception, _internal)

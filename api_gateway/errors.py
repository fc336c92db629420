"""Map every error to the envelope `{"success": false, "error": {...}}`, in one place."""

from __future__ import annotations

import logging
import re
import traceback
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException

from api_gateway.responses import JSONResponse
from contactsync.errors import ClientError
from contactsync.messages import plain

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
) -> JSONResponse:
    return JSONResponse(envelope(code, message, details), status_code=status, headers=headers)


async def _client_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ClientError)
    return error_response(exc.status_code, exc.code, exc.message, exc.details, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    code = _HTTP_CODES.get(exc.status_code, "INTERNAL_ERROR")
    messages = {404: "No such resource.", 405: "Method not allowed on this resource."}
    message = messages.get(exc.status_code, str(exc.detail))
    headers = dict(exc.headers) if exc.headers else None
    allowed = _allowed_methods(request) if exc.status_code == 405 else None
    if allowed:
        headers = {**(headers or {}), "Allow": allowed}
    return error_response(exc.status_code, code, message, headers=headers)


def _allowed_methods(request: Request) -> str | None:
    """Return every method the OpenAPI document lists at this path, if it lists the path.

    Starlette's own `Allow` names only the methods of the first route whose path matched, but
    one path may be served by several routes (GET and POST /contacts).
    """
    table: list[tuple[re.Pattern[str], list[str]]] | None = getattr(
        request.app.state, "allow_table", None
    )
    if table is None:
        table = []
        for path, operations in request.app.openapi().get("paths", {}).items():
            pattern = re.compile("^" + re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(path)) + "$")
            table.append((pattern, sorted(m.upper() for m in operations)))
        # A literal path first: /contacts/upsert is no /contacts/{contact_id}.
        table.sort(key=lambda entry: "[^/]+" in entry[0].pattern)
        request.app.state.allow_table = table
    for pattern, methods in table:
        if pattern.fullmatch(request.url.path):
            return ", ".join(methods)
    return None


async def _request_validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields: dict[str, str] = {}
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if p not in ("query", "path", "header", "body")]
        fields.setdefault(".".join(loc) or "_body", plain(error))
    return error_response(400, "VALIDATION_ERROR", "The request is not valid.", {"fields": fields})


async def _unavailable(_: Request, exc: Exception) -> JSONResponse:
    log.warning("dependency unavailable: %s", type(exc).__name__)
    return error_response(
        503, "SERVICE_UNAVAILABLE", "A backing service is unavailable; retry shortly.",
        {"retry_after": 1}, {"Retry-After": "1"},
    )


def log_internal(exc: BaseException) -> None:
    # The exception text may quote personal data (a failed statement's parameters): log the
    # type and where it happened, never the message.
    frames = "".join(traceback.format_tb(exc.__traceback__))
    log.error("unhandled error: %s\n%s", type(exc).__name__, frames)


async def _internal(_: Request, exc: Exception) -> JSONResponse:
    log_internal(exc)
    return error_response(500, "INTERNAL_ERROR", "An internal error occurred.")


_HANDLERS: dict[type[Exception], Callable[[Request, Exception], Awaitable[JSONResponse]]] = {
    ClientError: _client_error,
    HTTPException: _http_error,
    RequestValidationError: _request_validation,
    RedisConnectionError: _unavailable,
    RedisTimeoutError: _unavailable,
    OperationalError: _unavailable,
}


async def answer(request: Request, exc: Exception) -> JSONResponse | None:
    """Return the envelope for an expected error, as the app's handlers would; else None."""
    for kind, handler in _HANDLERS.items():
        if isinstance(exc, kind):
            return await handler(request, exc)
    return None


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into the envelope."""
    for kind, handler in _HANDLERS.items():
        app.add_exception_handler(kind, handler)
    app.add_exception_handler(Exception, _internal)  # a backstop for the middleware's own

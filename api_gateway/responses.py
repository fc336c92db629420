"""Success envelopes and the OpenAPI description of every error a route can answer."""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response

from contactsync.schemas import ErrorEnvelope


class JSONResponse(Response):
    """A JSON response rendered by orjson.

    FastAPI's own `ORJSONResponse` is deprecated: it warns on every response, which fails any
    in-process test run with warnings as errors.
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def ok(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> JSONResponse:
    """Return `{"success": true, "data": ...}`."""
    return JSONResponse({"success": True, "data": data}, status_code=status, headers=headers)


_ERRORS = {
    400: "VALIDATION_ERROR: a field is invalid (details.fields names each)",
    401: "MISSING_API_KEY or INVALID_API_KEY",
    403: "INSUFFICIENT_PERMISSIONS",
    404: "NOT_FOUND: no such contact, update or webhook for this account",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT: another contact of the account holds an identity this write gives "
    "(`details.field`, `details.contact_id`), or a request with this Idempotency-Key is still "
    "in flight",
    413: "PAYLOAD_TOO_LARGE: the body is over 64 KiB",
    415: "UNSUPPORTED_MEDIA_TYPE: the body is not JSON",
    422: "IDEMPOTENCY_KEY_REUSED: the key was used with a different request",
    500: "INTERNAL_ERROR",
    503: "SERVICE_UNAVAILABLE: Redis or the database is down, or too many of the account's "
    "updates wait (see Retry-After)",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """Return the OpenAPI `responses` entries of these error statuses, with the envelope."""
    common = (401, 500, 503)
    return {
        status: {"model": ErrorEnvelope, "description": _ERRORS[status]}
        for status in sorted({*statuses, *common})
    }

"""The `Idempotency-Key` header: reading it, and answering a key seen before (the IETF draft)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import Request

from api_gateway.responses import JSONResponse
from contactsync.errors import Conflict, IdempotencyKeyReused, ValidationFailed
from contactsync.queue.accept import Idempotency

MAX_KEY = 255
# Visible ASCII, spaces inside only: what survives every proxy and HTTP parser unchanged.
KEY_PATTERN = "^[!-~]([ -~]*[!-~])?$"
_KEY = re.compile(KEY_PATTERN)
HELP = "1 to 255 visible ASCII characters; same key and body within 24 h, same answer"

HEADER = {
    "name": "Idempotency-Key", "in": "header", "required": False, "description": HELP,
    "schema": {"type": "string", "minLength": 1, "maxLength": MAX_KEY, "pattern": KEY_PATTERN},
}


def of_request(request: Request, method: str, body: Any) -> Idempotency | None:
    """Return the request's key with the fingerprint of its body, or None without one."""
    key = request.headers.get("idempotency-key")
    if key is None:
        return None
    if len(key) > MAX_KEY or not _KEY.fullmatch(key):
        raise ValidationFailed({"Idempotency-Key": "must be " + HELP.split(";")[0]})
    return Idempotency.of(key, method, request.url.path, body)


def stored(status: int, body: Any, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """Return an answer in the form it is kept under its key."""
    return {"status": status, "body": body, "headers": headers or {}}


def replay(record: dict[str, Any], idem: Idempotency) -> JSONResponse:
    """Answer a request whose key was seen before: its stored answer, 422 or 409."""
    if record.get("fingerprint") != idem.fingerprint:
        raise IdempotencyKeyReused(
            "This Idempotency-Key was already used with a different request."
        )
    response = record.get("response")
    if response is None:
        raise Conflict("A request with this Idempotency-Key is still in flight.")
    return JSONResponse(
        response["body"], status_code=response["status"], headers=response.get("headers")
    )

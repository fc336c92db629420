"""Read a JSON request body: content type, size limit, then decoding."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi import Request

from contactsync.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from contactsync.schemas import MAX_BODY_BYTES


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    """Return the decoded body; a missing content type is taken as JSON."""
    content_type = request.headers.get("content-type")
    if content_type is not None and not _is_json(content_type):
        raise UnsupportedMediaType("Send the body as application/json.")
    too_large = PayloadTooLarge(f"The body may be at most {limit} bytes.")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large  # stop reading: the rest of a huge body is never held
        chunks.append(chunk)
    raw = b"".join(chunks)
    if not raw.strip():
        raise ValidationFailed({"_body": "The body is empty: send a JSON object."})
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed({"_body": f"Malformed JSON: {exc}"}) from None

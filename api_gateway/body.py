"""Read a JSON request body: content type, size limit, then decoding."""

from __future__ import annotations

import json
from typing import Any

import orjson
from fastapi import Request

from contactsync.errors import PayloadTooLarge, UnsupportedMediaType, ValidationFailed
from contactsync.schemas import MAX_BODY_BYTES

MAX_DEPTH = 32


def _is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


async def read_json(request: Request, limit: int = MAX_BODY_BYTES) -> Any:
    """Return the decoded body; a missing content type is taken as JSON."""
    body, _ = await read_json_plain(request, limit)
    return body


async def read_json_plain(request: Request, limit: int = MAX_BODY_BYTES) -> tuple[Any, bool]:
    """Return the decoded body, and whether its text is plain: ASCII without `\\u` escapes, so
    that every string in it is already in NFC and free of NUL (`parse_body(plain=True)`)."""
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
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValidationFailed({"_body": _malformed(exc)}) from None
    if _may_repeat_a_key(raw, body):
        _refuse_repeated_keys(raw)
    return body, raw.isascii() and b"\\u" not in raw


def _malformed(exc: orjson.JSONDecodeError) -> str:
    """Say what is wrong with a body that is not JSON, in words about the text sent.

    orjson's own words are plain, but for two that speak of its internals (`str`, `double`).
    """
    where = f"line {exc.lineno} column {exc.colno}"
    if "UTF-8" in exc.msg:
        return f"The body is not valid UTF-8 text ({where})."
    if "infinity" in exc.msg:
        return f"Malformed JSON: a number too large to be a JSON number ({where})."
    return f"Malformed JSON: {exc.msg} ({where})."


def _may_repeat_a_key(raw: bytes, body: Any) -> bool:
    """Tell cheaply whether the text might hold a key twice (which decoding silently drops).

    Every key in the text is followed by one colon; if the decoded objects hold as many keys
    as the text has colons, no key was dropped. Colons inside strings (URLs, times) only make
    this answer "maybe".
    """
    keys = 0
    stack = [(body, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list) and depth > MAX_DEPTH:
            # No body of this API nests past 4 levels; deeper ones only cost CPU and stack.
            raise ValidationFailed({"_body": f"The JSON is nested more than {MAX_DEPTH} deep."})
        if isinstance(value, dict):
            keys += len(value)
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return raw.count(b":") != keys


def _refuse_repeated_keys(raw: bytes) -> None:
    """Raise `ValidationFailed` naming a key that an object of the body holds twice.

    JSON leaves duplicate keys undefined; parsers keep the first, the last, or fail, so a
    proxy and this gateway could read one body two ways. Refusing them is the safe reading.
    """
    objects = 0
    repeated: list[tuple[int, str]] = []

    def pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal objects
        objects += 1
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                repeated.append((objects, key))
                break
            seen.add(key)
        return dict(pairs)

    json.loads(raw, object_pairs_hook=pairs_hook)
    if repeated:
        position, key = repeated[0]
        if position == objects:  # the last object closed is the body itself
            raise ValidationFailed({key: "This field is sent more than once."})
        raise ValidationFailed({"_body": f"The key {key!r} is sent more than once in an object."})

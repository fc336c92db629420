"""A body whose text is plain (ASCII, no `\\u` escape) skips the NFC and NUL walks: only such
a body may, and it validates exactly as through the walks."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from starlette.requests import Request

from api_gateway.body import read_json_plain
from contactsync.schemas import ContactUpdate, parse_body


def _read(raw: bytes) -> tuple[Any, bool]:
    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": raw, "more_body": False}

    scope = {"type": "http", "method": "PUT", "headers": [(b"content-type", b"application/json")]}
    return asyncio.run(read_json_plain(Request(scope, receive)))


@pytest.mark.parametrize(("raw", "plain"), [
    (b'{"position": "P1", "tags": ["t"], "custom_fields": {"n": 1}}', True),
    (b'{"position": "a\\u0000b"}', False),  # NUL can only come escaped
    (b'{"company": "cafe\\u0301"}', False),  # so can a decomposed accent in ASCII text
    ('{"company": "cafe\u0301"}'.encode(), False),  # or as UTF-8
    (b'{"company": "a\\"b\\\\c\\n"}', True),  # escapes other than \u stay ASCII
])
def test_only_ascii_text_without_u_escapes_is_plain(raw: bytes, plain: bool) -> None:
    body, is_plain = _read(raw)
    assert body == json.loads(raw)
    assert is_plain is plain


def test_a_plain_body_validates_as_through_the_walks() -> None:
    body, plain = _read(b'{"position": " P1 ", "tags": ["b", "a", "b"], "custom_fields": '
                        b'{"n": 1, "s": "x"}, "company": ""}')
    assert plain
    fast = parse_body(ContactUpdate, body, plain=True).patch()
    assert fast == parse_body(ContactUpdate, body).patch()

"""Hostile bodies through the real server: each answered with its code and envelope, and no
contact changes (no record, no event)."""

from __future__ import annotations

import socket
import time
from typing import Any
from urllib.parse import urlsplit

import orjson
import pytest
from sqlalchemy import select

from contactsync.contacts import contact_to_dict
from contactsync.models import Contact
from contactsync.schemas import MAX_SAFE_INTEGER
from tests.conftest import Stack, make_contact
from tests.e2e.helpers import (
    api,
    assert_bad_fields,
    assert_error,
    contact_path,
    new_tenant,
    settled_events,
    update_records,
)

JSON = {"Content-Type": "application/json"}
FIELDS = ("name", "email", "phone", "company", "position", "linkedin_url", "tags", "custom_fields")
# A value of every JSON type; each field refuses all but its own (and null, where allowed).
WRONG: dict[str, Any] = {
    "number": 42, "float": 1.5, "true": True, "false": False, "array": ["x"], "empty array": [],
    "object": {"a": "b"}, "empty object": {}, "string": "text",
}
ACCEPTS = {
    "tags": {"array", "empty array"}, "custom_fields": {"object", "empty object"},
    **{f: {"string"} for f in FIELDS[:6]},
}
NULL_REFUSED = {"name", "tags", "custom_fields"}


class Tenancy:
    def __init__(self, stack: Stack) -> None:
        tenant = new_tenant(stack, "acme")
        self.account_id = tenant.account_id
        self.key = tenant.key
        self.contact_id = make_contact(
            stack.db, tenant.account_id, email="john@example.com", tags=["vip"],
            custom_fields={"plan": "pro"}, position="CTO",
        )
        self.client = api(stack, tenant.key)
        self.path = contact_path(self.contact_id)
        self.before = contacts(stack, self.account_id)


def contacts(stack: Stack, account_id: str) -> list[dict[str, Any]]:
    """Return the account's contacts (the barrier of `settled_events` has its own account)."""
    query = select(Contact).where(Contact.account_id == account_id).order_by(Contact.id)
    with stack.db.reading() as session:
        return [contact_to_dict(c) for c in session.scalars(query)]


def assert_nothing_changed(stack: Stack, seeded: Tenancy) -> None:
    assert settled_events(stack) == []
    assert contacts(stack, seeded.account_id) == seeded.before
    assert update_records(stack, seeded.contact_id) == 0


@pytest.fixture
def seeded(stack: Stack) -> Tenancy:
    return Tenancy(stack)


def test_every_field_with_every_wrong_type_is_named(stack: Stack, seeded: Tenancy) -> None:
    sent = 0
    for field in FIELDS:
        wrong = {k: v for k, v in WRONG.items() if k not in ACCEPTS[field]}
        if field in NULL_REFUSED:
            wrong["null"] = None
        for label, value in wrong.items():
            put = seeded.client.put(seeded.path, json={field: value})
            post = seeded.client.post("/external/v1/contacts", json={"name": "N", field: value})
            for response in (put, post):
                named = assert_bad_fields(response, field)
                assert named[field], (field, label)
            sent += 2
    assert sent > 100
    assert_nothing_changed(stack, seeded)


BAD_BODIES = [
    ("malformed", b'{"position": "CEO"', "_body"),
    ("trailing garbage", b'{"position": "CEO"} x', "_body"),
    ("array", b'[{"position": "CEO"}]', "_body"),
    ("string", b'"CEO"', "_body"),
    ("number", b"42", "_body"),
    ("true", b"true", "_body"),
    ("null", b"null", "_body"),
    ("nested 10,000 deep", b"[" * 10_000 + b"]" * 10_000, "_body"),
    ("object nested 10,000 deep", b'{"a":' * 10_000 + b"1" + b"}" * 10_000, "_body"),
    ("custom field nested 40 deep", b'{"custom_fields": {"a": ' + b"[" * 40 + b"]" * 40 + b"}}",
     "_body"),
    ("infinite number", b'{"custom_fields": {"n": 1e400}}', "_body"),
    ("NaN", b'{"custom_fields": {"n": NaN}}', "_body"),
    ("integer past 2^53", orjson.dumps({"custom_fields": {"n": MAX_SAFE_INTEGER + 1}}),
     "custom_fields"),
    ("integer past 2^64", b'{"custom_fields": {"n": 123456789012345678901234567890}}',
     "custom_fields"),
    ("huge negative float", b'{"custom_fields": {"n": -1e300}}', "custom_fields"),
    ("string of 10,000", orjson.dumps({"name": "n" * 10_000}), "name"),
    ("invalid UTF-8", b'{"position": "\xff\xfe"}', "_body"),
    ("overlong UTF-8", b'{"position": "\xc0\xaf"}', "_body"),
    ("UTF-8 surrogate", b'{"position": "\xed\xa0\x80"}', "_body"),
    ("lone high surrogate", b'{"position": "\\ud800"}', "_body"),
    ("lone low surrogate", b'{"position": "\\udc00x"}', "_body"),
    ("raw NUL", b'{"position": "a\x00b"}', "_body"),
    ("escaped NUL", b'{"position": "a\\u0000b"}', "position"),
    ("NUL in a tag", b'{"tags": ["a\\u0000"]}', "tags"),
    ("NUL in a custom key", b'{"custom_fields": {"a\\u0000": "x"}}', "custom_fields"),
    ("NUL in a custom value", b'{"custom_fields": {"a": "\\u0000"}}', "custom_fields"),
    ("duplicate key", b'{"position": "A", "position": "B"}', "position"),
    ("duplicate key, one spelled with an escape", b'{"position": "A", "posit\\u0069on": "B"}',
     "position"),
    ("duplicate custom key", b'{"custom_fields": {"plan": "a", "plan": "b"}}', "_body"),
    ("unknown field", b'{"position": "A", "nickname": "Johnny"}', "nickname"),
    ("source in a PUT", b'{"source": "api"}', "source"),
]


@pytest.mark.parametrize(("raw", "field"), [pytest.param(r, f, id=i) for i, r, f in BAD_BODIES])
def test_a_hostile_body_is_refused_with_the_field_named(
    stack: Stack, seeded: Tenancy, raw: bytes, field: str
) -> None:
    put = seeded.client.put(seeded.path, content=raw, headers=JSON)
    post = seeded.client.post("/external/v1/contacts", content=raw, headers=JSON)
    assert_bad_fields(put, field)
    if field != "source":  # a field of a POST
        error = assert_error(post, 400, "VALIDATION_ERROR")
        assert field in error["details"]["fields"], error
    assert contacts(stack, seeded.account_id) == seeded.before  # nothing created, nothing changed


def test_hostile_bodies_change_nothing_in_the_end(stack: Stack, seeded: Tenancy) -> None:
    for _, raw, _ in BAD_BODIES:
        for prefer in ({}, {"Prefer": "respond-async"}):
            response = seeded.client.put(seeded.path, content=raw, headers={**JSON, **prefer})
            assert response.status_code == 400, response.text
    assert_nothing_changed(stack, seeded)


def test_the_largest_safe_integer_is_kept_exactly(stack: Stack, seeded: Tenancy) -> None:
    body = {"custom_fields": {"max": MAX_SAFE_INTEGER, "min": -MAX_SAFE_INTEGER}}
    response = seeded.client.put(seeded.path, json=body)
    assert response.status_code == 200, response.text
    assert response.json()["data"]["custom_fields"] == {"plan": "pro", **body["custom_fields"]}


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/jsonx", "application/x-www-form-urlencoded", "image/png",
     "multipart/form-data; boundary=x", "json"],
)
def test_a_wrong_content_type_is_415(stack: Stack, seeded: Tenancy, content_type: str) -> None:
    raw = b'{"position": "CEO"}'
    put = seeded.client.put(seeded.path, content=raw, headers={"Content-Type": content_type})
    batch = seeded.client.post(
        "/external/v1/contacts/batch/update", headers={"Content-Type": content_type},
        content=orjson.dumps({"updates": [{"id": seeded.contact_id, "position": "CEO"}]}),
    )
    for response in (put, batch):
        assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert contacts(stack, seeded.account_id) == seeded.before


def test_a_duplicate_key_inside_a_batch_item_refuses_the_whole_batch(
    stack: Stack, seeded: Tenancy
) -> None:
    raw = b'{"updates": [{"id": "%s", "position": "A", "position": "B"}]}' % (
        seeded.contact_id.encode()
    )
    response = seeded.client.post("/external/v1/contacts/batch/update", content=raw, headers=JSON)
    named = assert_bad_fields(response, "_body")
    assert "position" in named["_body"]
    assert_nothing_changed(stack, seeded)


# --- bodies too large to read ---------------------------------------------------------


def raw_request(stack: Stack, head: bytes, body_parts: list[bytes]) -> tuple[bytes, float]:
    """Send a request head and some body over a socket, never the rest; return the answer."""
    url = urlsplit(stack.base_url)
    with socket.create_connection((url.hostname, url.port), timeout=10) as sock:
        sock.sendall(head)
        for part in body_parts:
            sock.sendall(part)
        started = time.monotonic()
        answer = b""
        while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            answer += chunk
        return answer, time.monotonic() - started


def request_head(seeded: Tenancy, framing: bytes) -> bytes:
    return (
        b"PUT %s HTTP/1.1\r\nHost: test\r\nX-API-Key: %s\r\nContent-Type: application/json\r\n"
        b"%s\r\n\r\n" % (seeded.path.encode(), seeded.key.encode(), framing)
    )


def test_a_10_mb_body_is_refused_before_it_is_read(stack: Stack, seeded: Tenancy) -> None:
    ten_mb = 10 * 1024 * 1024
    # Declared: refused on the header alone, though only 1 KiB of the 10 MB ever arrives.
    head = request_head(seeded, b"Content-Length: %d" % ten_mb)
    answer, waited = raw_request(stack, head, [b'{"custom_fields": {"a": "' + b"x" * 1000])
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b'"PAYLOAD_TOO_LARGE"' in answer
    assert waited < 5
    # Chunked, undeclared: refused once the first 64 KiB are past, the rest never sent.
    head = request_head(seeded, b"Transfer-Encoding: chunked")
    chunk = b"%x\r\n%s\r\n" % (16384, b"x" * 16384)
    answer, waited = raw_request(stack, head, [chunk] * 6)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert waited < 5
    # And through a client that would send it all: the answer is still 413.
    response = seeded.client.put(seeded.path, content=b"x" * ten_mb, headers=JSON)
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    batch = seeded.client.post(
        "/external/v1/contacts/batch/update", content=b"x" * ten_mb, headers=JSON
    )
    assert_error(batch, 413, "PAYLOAD_TOO_LARGE")
    assert api(stack).get("/healthz").status_code == 200
    assert_nothing_changed(stack, seeded)


def test_a_hostile_idempotency_key_is_refused(stack: Stack, seeded: Tenancy) -> None:
    # (Bytes HTTP itself forbids, like DEL, are refused by the server before the app runs.)
    for idem in (b"x" * 256, b"tab\there", "caf\u00e9".encode("latin-1")):
        response = seeded.client.put(
            seeded.path, json={"position": "CEO"}, headers={"Idempotency-Key": idem}
        )
        assert_bad_fields(response, "Idempotency-Key")
    assert_nothing_changed(stack, seeded)

"""Every error code through the real HTTP server, in the envelope, with nothing changed."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import func, select

from contactsync.models import Contact
from tests.conftest import Stack, make_contact
from tests.e2e.helpers import (
    ASYNC,
    api,
    assert_bad_fields,
    assert_error,
    assert_nothing_changed,
    contact_path,
    get_contact,
    new_tenant,
    revoke_key,
    settled_events,
    update_records,
)
from tests.support import wait_until

MAX_BODY = 64 * 1024


@dataclass
class Seeded:
    key: str
    account_id: str
    contact_id: str
    before: dict[str, Any]

    @property
    def path(self) -> str:
        return contact_path(self.contact_id)


@pytest.fixture
def seeded(stack: Stack) -> Seeded:
    tenant = new_tenant(stack, "acme")
    contact_id = make_contact(
        stack.db, tenant.account_id, email="john@example.com", phone="+5511999999999",
        company="Acme Inc", position="CTO", tags=["vip"], custom_fields={"plan": "pro"},
    )
    before = get_contact(stack, tenant.key, contact_id)
    return Seeded(tenant.key, tenant.account_id, contact_id, before)


def _contacts(stack: Stack) -> int:
    with stack.db.reading() as session:
        return int(session.scalar(select(func.count()).select_from(Contact)) or 0)


# --- 400 VALIDATION_ERROR ---------------------------------------------------------------

FIELD_RULES: list[tuple[str, dict[str, Any], str]] = [
    ("name null", {"name": None}, "name"),
    ("name blank after trimming", {"name": "   "}, "name"),
    ("name over 200", {"name": "x" * 201}, "name"),
    ("name a number", {"name": 42}, "name"),
    ("email invalid", {"email": "not-an-email"}, "email"),
    ("email over 254", {"email": "a" * 250 + "@x.io"}, "email"),
    ("email a list", {"email": ["john@example.com"]}, "email"),
    ("phone with 4 digits", {"phone": "+1 (23) 4"}, "phone"),
    ("phone with letters", {"phone": "555-CALL-NOW"}, "phone"),
    ("phone over 32", {"phone": "1" * 33}, "phone"),
    ("phone a number", {"phone": 5511999999999}, "phone"),
    ("company over 200", {"company": "c" * 201}, "company"),
    ("position a boolean", {"position": True}, "position"),
    ("linkedin_url not http", {"linkedin_url": "ftp://linkedin.com/in/x"}, "linkedin_url"),
    ("linkedin_url no host", {"linkedin_url": "https://"}, "linkedin_url"),
    ("tags null", {"tags": None}, "tags"),
    ("tags a string", {"tags": "hot-lead"}, "tags"),
    ("tags holding a number", {"tags": ["ok", 1]}, "tags"),
    ("tags holding an empty tag", {"tags": [""]}, "tags"),
    ("tag over 64", {"tags": ["t" * 65]}, "tags"),
    ("more than 100 tags", {"tags": [f"t{i}" for i in range(101)]}, "tags"),
    ("custom_fields null", {"custom_fields": None}, "custom_fields"),
    ("custom_fields a list", {"custom_fields": ["plan"]}, "custom_fields"),
    ("custom field nested object", {"custom_fields": {"plan": {"tier": "pro"}}}, "custom_fields"),
    ("custom field array value", {"custom_fields": {"plan": ["pro"]}}, "custom_fields"),
    ("custom field empty key", {"custom_fields": {"": "x"}}, "custom_fields"),
    ("custom field key over 64", {"custom_fields": {"k" * 65: "x"}}, "custom_fields"),
    ("custom field value over 1,000 characters", {"custom_fields": {"note": "n" * 1001}},
     "custom_fields"),
    ("custom fields over 16 KiB of JSON",
     {"custom_fields": {f"k{i}": "n" * 1000 for i in range(17)}}, "custom_fields"),
    (
        "more than 100 custom fields",
        {"custom_fields": {f"k{i}": i for i in range(101)}},
        "custom_fields",
    ),
    ("unknown field", {"nickname": "Johnny"}, "nickname"),
    ("source in a PUT", {"source": "linkedin"}, "source"),
    ("id in a PUT", {"id": "cnt_000000000000"}, "id"),
]


@pytest.mark.parametrize(
    ("body", "field"), [pytest.param(b, f, id=i) for i, b, f in FIELD_RULES]
)
def test_an_invalid_field_is_named_and_nothing_changes(
    stack: Stack, seeded: Seeded, body: dict[str, Any], field: str
) -> None:
    client = api(stack, seeded.key)
    response = client.put(seeded.path, json=body)
    assert_bad_fields(response, field)
    assert_nothing_changed(stack, seeded.key, seeded.contact_id, seeded.before)


def test_every_invalid_field_is_named_at_once(stack: Stack, seeded: Seeded) -> None:
    body = {"name": None, "email": "nope", "tags": [1], "source": "csv", "position": "CEO"}
    client = api(stack, seeded.key)
    sync = client.put(seeded.path, json=body)
    queued = client.put(seeded.path, json=body, headers=ASYNC)
    for response in (sync, queued):
        named = assert_bad_fields(response, "name", "email", "tags", "source")
        assert "null" in named["name"].lower()
        assert named["source"] == "Unknown field."
    assert_nothing_changed(stack, seeded.key, seeded.contact_id, seeded.before)


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b'{"position": "CTO"', id="truncated"),
        pytest.param(b"{'position': 'CTO'}", id="single-quoted"),
        pytest.param(b'{"position": NaN}', id="nan"),
        pytest.param(b"\xff\xfe{}", id="not-utf8"),
        pytest.param(b"", id="empty"),
        pytest.param(b"   ", id="blank"),
        pytest.param(b'[{"position": "CTO"}]', id="array"),
        pytest.param(b'"position"', id="string"),
        pytest.param(b"42", id="number"),
        pytest.param(b"null", id="null"),
    ],
)
def test_a_body_that_is_not_a_json_object_is_named_body(
    stack: Stack, seeded: Seeded, raw: bytes
) -> None:
    headers = {"Content-Type": "application/json"}
    client = api(stack, seeded.key)
    put = client.put(seeded.path, content=raw, headers=headers)
    post = client.post("/external/v1/contacts", content=raw, headers=headers)
    assert_bad_fields(put, "_body")
    assert_bad_fields(post, "_body")
    assert _contacts(stack) == 1
    assert_nothing_changed(stack, seeded.key, seeded.contact_id, seeded.before)


# --- 401 --------------------------------------------------------------------------------


def test_no_key_is_missing_api_key_on_every_protected_route(stack: Stack, seeded: Seeded) -> None:
    client = api(stack)
    answers = [
        client.put(seeded.path, json={"position": "CEO"}),
        client.put(seeded.path, json={"position": "CEO"}, headers=ASYNC),
        client.get(seeded.path),
        client.post("/external/v1/contacts", json={"name": "Jane"}),
        client.get("/external/v1/updates/upd_00000000000000000000"),
        client.put(seeded.path, json={"position": "CEO"}, headers={"X-API-Key": ""}),
        client.put(
            seeded.path, json={"position": "CEO"},
            headers={"Authorization": f"Basic {seeded.key}"},
        ),
        client.put(seeded.path, json={"position": "CEO"}, headers={"Authorization": "Bearer"}),
    ]
    for response in answers:
        assert_error(response, 401, "MISSING_API_KEY")
    assert _contacts(stack) == 1
    assert_nothing_changed(stack, seeded.key, seeded.contact_id, seeded.before)


def test_authentication_comes_before_validation(stack: Stack, seeded: Seeded) -> None:
    client = api(stack)
    missing = client.put(seeded.path, content=b"{oops", headers={"Content-Type": "text/plain"})
    client = api(stack, "csk_live_" + "x" * 40)
    invalid = client.put(seeded.path, content=b"x" * (MAX_BODY + 1))
    assert_error(missing, 401, "MISSING_API_KEY")
    assert_error(invalid, 401, "INVALID_API_KEY")


@pytest.mark.parametrize(
    "wrong",
    [
        pytest.param("csk_live_" + "A" * 40, id="unknown"),
        pytest.param("not-a-key", id="garbage"),
        pytest.param("csk_live_" + "A" * 5000, id="huge"),
    ],
)
def test_an_unknown_key_is_invalid_api_key(stack: Stack, seeded: Seeded, wrong: str) -> None:
    client = api(stack, wrong)
    put = client.put(seeded.path, json={"position": "CEO"})
    get = client.get(seeded.path)
    client = api(stack)
    bearer = client.put(
        seeded.path, json={"position": "CEO"}, headers={"Authorization": f"Bearer {wrong}"}
    )
    for response in (put, get, bearer):
        assert_error(response, 401, "INVALID_API_KEY")
    assert_nothing_changed(stack, seeded.key, seeded.contact_id, seeded.before)


def test_a_key_of_another_account_with_a_near_miss_is_invalid(stack: Stack, seeded: Seeded) -> None:
    near_miss = seeded.key[:-1] + ("a" if seeded.key[-1] != "a" else "b")
    client = api(stack, near_miss)
    assert_error(client.get(seeded.path), 401, "INVALID_API_KEY")
    client = api(stack, seeded.key.upper())
    assert_error(client.get(seeded.path), 401, "INVALID_API_KEY")


def test_a_revoked_key_is_invalid_api_key(stack: Stack, seeded: Seeded) -> None:
    other = new_tenant(stack, "acme")  # a second key of the same account stays valid
    client = api(stack, seeded.key)
    assert client.get(seeded.path).status_code == 200
    assert revoke_key(stack, seeded.key) == 1
    client = api(stack, seeded.key)
    answers = [
        client.put(seeded.path, json={"position": "CEO"}),
        client.put(seeded.path, json={"position": "CEO"}, headers=ASYNC),
        client.get(seeded.path),
    ]
    for response in answers:
        assert_error(response, 401, "INVALID_API_KEY")
    assert_nothing_changed(stack, other.key, seeded.contact_id, seeded.before)


def test_authorization_bearer_is_accepted(stack: Stack, seeded: Seeded) -> None:
    client = api(stack)
    for scheme in ("Bearer", "bearer"):
        response = client.put(
            seeded.path, json={"position": f"CEO ({scheme})"},
            headers={"Authorization": f"{scheme} {seeded.key}"},
        )
        assert response.status_code == 200, response.text
        assert response.json()["data"]["position"] == f"CEO ({scheme})"
    read = client.get(seeded.path, headers={"Authorization": f"Bearer {seeded.key}"})
    assert read.status_code == 200
    assert read.json()["data"]["position"] == "CEO (bearer)"


# --- 403 --------------------------------------------------------------------------------


def test_a_read_only_key_cannot_write(stack: Stack, seeded: Seeded) -> None:
    reader = new_tenant(stack, "acme", ["contacts:read"])
    client = api(stack, reader.key)
    answers = [
        client.put(seeded.path, json={"position": "CEO"}),
        client.put(seeded.path, json={"position": "CEO"}, headers=ASYNC),
        client.post("/external/v1/contacts", json={"name": "Jane Roe"}),
    ]
    assert client.get(seeded.path).json()["data"] == seeded.before
    for response in answers:
        error = assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
        assert "contacts:write" in error["message"]
    assert _contacts(stack) == 1
    assert_nothing_changed(stack, seeded.key, seeded.contact_id, seeded.before)


def test_a_write_only_key_cannot_read(stack: Stack, seeded: Seeded) -> None:
    write_only = new_tenant(stack, "acme", ["contacts:write"])
    client = api(stack, write_only.key)
    queued = client.put(seeded.path, json={"position": "CEO"}, headers=ASYNC)
    assert queued.status_code == 202, queued.text
    update_id = queued.json()["data"]["update_id"]
    answers = [
        client.get(seeded.path),
        client.get(f"/external/v1/updates/{update_id}"),
        client.get("/external/v1/updates/upd_00000000000000000000"),
    ]
    for response in answers:
        error = assert_error(response, 403, "INSUFFICIENT_PERMISSIONS")
        assert "contacts:read" in error["message"]
        assert "CTO" not in response.text
    assert stack.wait_finished(seeded.key, update_id)["status"] == "applied"


def test_a_delete_only_key_can_do_nothing_here(stack: Stack, seeded: Seeded) -> None:
    deleter = new_tenant(stack, "acme", ["contacts:delete"])
    client = api(stack, deleter.key)
    put = client.put(seeded.path, json={"position": "CEO"})
    get = client.get(seeded.path)
    assert_error(put, 403, "INSUFFICIENT_PERMISSIONS")
    assert_error(get, 403, "INSUFFICIENT_PERMISSIONS")
    assert_nothing_changed(stack, seeded.key, seeded.contact_id, seeded.before)


# --- 404 --------------------------------------------------------------------------------


def test_an_unknown_contact_is_not_found_in_default_mode(stack: Stack, seeded: Seeded) -> None:
    client = api(stack, seeded.key)
    put = client.put(contact_path("cnt_doesnotexist"), json={"position": "CEO"})
    get = client.get(contact_path("cnt_doesnotexist"))
    assert_error(put, 404, "NOT_FOUND")
    assert_error(get, 404, "NOT_FOUND")
    assert settled_events(stack) == []
    assert get_contact(stack, seeded.key, seeded.contact_id) == seeded.before


@pytest.mark.parametrize(
    "contact_id",
    [
        pytest.param("cnt.with.dots", id="dots"),
        pytest.param("c" * 65, id="too-long"),
        pytest.param("cnt_%E2%9C%93", id="non-ascii"),
    ],
)
def test_an_impossible_contact_id_is_not_found(
    stack: Stack, seeded: Seeded, contact_id: str
) -> None:
    client = api(stack, seeded.key)
    put = client.put(contact_path(contact_id), json={"position": "CEO"})
    queued = client.put(contact_path(contact_id), json={"position": "CEO"}, headers=ASYNC)
    get = client.get(contact_path(contact_id))
    for response in (put, queued, get):
        assert_error(response, 404, "NOT_FOUND")
    # Refused at the edge: not even queued to end `not_found` later.
    assert "update_id" not in queued.text
    assert_nothing_changed(stack, seeded.key, seeded.contact_id, seeded.before)
    assert update_records(stack) == 1  # the barrier's own


@pytest.mark.parametrize(
    "path",
    [
        "/external/v1/nope",
        "/external/v2/contacts/cnt_abc123def456",
        "/external/v1/contacts/cnt_abc123def456/extra",
        "/",
    ],
)
def test_an_unknown_path_is_not_found(stack: Stack, seeded: Seeded, path: str) -> None:
    client = api(stack, seeded.key)
    assert_error(client.get(path), 404, "NOT_FOUND")
    assert_error(client.put(path, json={"position": "CEO"}), 404, "NOT_FOUND")
    client = api(stack)
    assert_error(client.get(path), 404, "NOT_FOUND")


def test_an_unknown_update_is_not_found(stack: Stack, seeded: Seeded) -> None:
    client = api(stack, seeded.key)
    for update_id in ("upd_00000000000000000000", "nope", "x" * 300):
        assert_error(client.get(f"/external/v1/updates/{update_id}"), 404, "NOT_FOUND")


# --- 405 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("PATCH", "/external/v1/contacts/{id}"),
        ("POST", "/external/v1/contacts/{id}"),
        ("PUT", "/external/v1/contacts"),
        ("POST", "/external/v1/updates/upd_00000000000000000000"),
        ("POST", "/healthz"),
    ],
)
def test_a_wrong_method_is_method_not_allowed(
    stack: Stack, seeded: Seeded, method: str, path: str
) -> None:
    client = api(stack, seeded.key)
    response = client.request(
        method, path.format(id=seeded.contact_id), json={"position": "CEO"}
    )
    assert_error(response, 405, "METHOD_NOT_ALLOWED")
    assert response.headers.get("allow"), response.headers
    assert method not in response.headers["allow"]
    assert_nothing_changed(stack, seeded.key, seeded.contact_id, seeded.before)


# --- 413 --------------------------------------------------------------------------------


def _padded(size: int) -> bytes:
    """Return a valid update body of exactly `size` bytes (whitespace after the fields)."""
    body = orjson.dumps({"custom_fields": {"note": "n" * 1000}})
    return body + b" " * (size - len(body))


def test_a_body_over_64_kib_is_payload_too_large(stack: Stack, seeded: Seeded) -> None:
    too_big = _padded(MAX_BODY + 1)
    assert len(too_big) == MAX_BODY + 1

    def chunked() -> Iterator[bytes]:
        for start in range(0, len(too_big), 4096):
            yield too_big[start : start + 4096]

    headers = {"Content-Type": "application/json"}
    client = api(stack, seeded.key)
    answers = [
        client.put(seeded.path, content=too_big, headers=headers),
        client.put(seeded.path, content=too_big, headers={**headers, **ASYNC}),
        client.put(seeded.path, content=chunked(), headers=headers),
        client.post("/external/v1/contacts", content=too_big, headers=headers),
    ]
    for response in answers:
        assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert _contacts(stack) == 1
    assert_nothing_changed(stack, seeded.key, seeded.contact_id, seeded.before)


def test_a_body_of_exactly_64_kib_is_accepted(stack: Stack, seeded: Seeded) -> None:
    body = _padded(MAX_BODY)
    client = api(stack, seeded.key)
    response = client.put(
        seeded.path, content=body, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 200, response.text[:300]
    assert response.json()["data"]["custom_fields"]["note"] == orjson.loads(body)[
        "custom_fields"
    ]["note"]


# --- 415 --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
     "application/xml", "text/json"],
)
def test_a_body_that_is_not_json_is_unsupported_media_type(
    stack: Stack, seeded: Seeded, content_type: str
) -> None:
    raw = b'{"position": "CEO"}'
    headers = {"Content-Type": content_type}
    client = api(stack, seeded.key)
    put = client.put(seeded.path, content=raw, headers=headers)
    queued = client.put(seeded.path, content=raw, headers={**headers, **ASYNC})
    post = client.post("/external/v1/contacts", content=b'{"name": "Jane"}', headers=headers)
    for response in (put, queued, post):
        assert_error(response, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert _contacts(stack) == 1
    assert_nothing_changed(stack, seeded.key, seeded.contact_id, seeded.before)


@pytest.mark.parametrize(
    "content_type",
    ["application/json; charset=utf-8", "APPLICATION/JSON", "application/merge-patch+json"],
)
def test_json_content_types_are_accepted(
    stack: Stack, seeded: Seeded, content_type: str
) -> None:
    client = api(stack, seeded.key)
    response = client.put(
        seeded.path, content=b'{"position": "CEO"}', headers={"Content-Type": content_type}
    )
    assert response.status_code == 200, response.text
    assert response.json()["data"]["position"] == "CEO"


# --- 500 --------------------------------------------------------------------------------


def test_an_internal_error_is_enveloped_and_keeps_the_connection(
    stack: Stack, seeded: Seeded
) -> None:
    with stack.db.unit_of_work() as session:  # a row no code path can render
        contact = session.get(Contact, seeded.contact_id)
        assert contact is not None
        contact.custom_fields = ["not-an-object"]  # type: ignore[assignment]
    # One connection only: the request after the 500 must travel on the same one.
    transport = httpx.HTTPTransport(limits=httpx.Limits(max_connections=1))
    with httpx.Client(
        base_url=stack.base_url, headers={"X-API-Key": seeded.key}, transport=transport
    ) as client:
        broken = client.get(seeded.path)
        error = assert_error(broken, 500, "INTERNAL_ERROR")
        assert error["details"] == {}
        assert "not-an-object" not in broken.text
        assert client.get("/healthz").status_code == 200
        assert client.get(seeded.path).status_code == 500
    logged = wait_until(lambda: "unhandled error: ValueError" in stack.gateway.log(), timeout=5)
    assert logged
    # Answered, not re-raised: the server did not log it again and drop the connection.
    assert "Exception in ASGI application" not in stack.gateway.log()


NUL = "a\u0000b"


def test_a_nul_character_is_a_validation_error(stack: Stack, seeded: Seeded) -> None:
    client = api(stack, seeded.key)
    put = client.put(seeded.path, json={"position": NUL}, headers=ASYNC)
    post = client.post("/external/v1/contacts", json={"name": NUL})
    assert_bad_fields(put, "position")
    assert_bad_fields(post, "name")

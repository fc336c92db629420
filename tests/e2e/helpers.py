"""Assertions the end-to-end tests share: the error envelope, shapes, and "nothing changed"."""

from __future__ import annotations

import atexit
import re
import uuid
from typing import Any

import httpx
from sqlalchemy import func, select

from contactsync.keys import revoke
from contactsync.models import UpdateRecord
from tests.conftest import Stack, Tenant, make_contact, make_tenant
from tests.support import wait_until

CONTACT_KEYS = {
    "id", "name", "email", "phone", "company", "position", "source", "linkedin_url", "tags",
    "custom_fields", "external_ids", "created_at", "updated_at",
}
UPDATE_KEYS = {
    "update_id", "contact_id", "status", "received_at", "applied_at", "changed_fields", "error",
}
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")
CONTACT_ID = re.compile(r"^cnt_[a-z0-9]{12}$")
ASYNC = {"Prefer": "respond-async"}

_TRANSPORT = httpx.HTTPTransport()
atexit.register(_TRANSPORT.close)


def api(stack: Stack, key: str | None = None) -> httpx.Client:
    """Return a client of the test gateway sending `key` in X-API-Key.

    Clients share one connection pool: building a fresh `httpx.Client` costs ~50 ms (an SSL
    context), more than most of these requests. Not to be closed: that would close the pool.
    """
    headers = {"X-API-Key": key} if key else {}
    return httpx.Client(base_url=stack.base_url, headers=headers, timeout=15, transport=_TRANSPORT)


def new_tenant(stack: Stack, name: str, permissions: list[str] | None = None) -> Tenant:
    """Return an account's new key."""
    return make_tenant(stack.db, name, permissions)


def revoke_key(stack: Stack, key: str) -> int:
    """Revoke a key as `contactsync keys revoke` does; return how many keys it named."""
    with stack.db.unit_of_work() as session:
        return int(revoke(session, key) is not None)


def contact_path(contact_id: str) -> str:
    return f"/external/v1/contacts/{contact_id}"


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """Check the status and the exact error envelope; return its `error` object."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == {"success", "error"}, body
    assert body["success"] is False
    error: dict[str, Any] = body["error"]
    assert set(error) == {"code", "message", "details"}, error
    assert error["code"] == code, error
    assert isinstance(error["message"], str) and error["message"], error
    assert isinstance(error["details"], dict), error
    return error


def assert_bad_fields(response: httpx.Response, *fields: str) -> dict[str, str]:
    """Check a 400 VALIDATION_ERROR naming exactly `fields`, each with a message."""
    error = assert_error(response, 400, "VALIDATION_ERROR")
    named: dict[str, str] = error["details"]["fields"]
    assert set(named) == set(fields), named
    assert all(isinstance(m, str) and m for m in named.values()), named
    return named


def assert_contact_shape(data: dict[str, Any]) -> None:
    assert set(data) == CONTACT_KEYS, sorted(data)
    assert CONTACT_ID.match(data["id"]), data["id"]
    assert TIME.match(data["created_at"]), data["created_at"]
    assert TIME.match(data["updated_at"]), data["updated_at"]
    assert isinstance(data["tags"], list) and isinstance(data["custom_fields"], dict)


def assert_update_shape(data: dict[str, Any]) -> None:
    assert set(data) == UPDATE_KEYS, sorted(data)
    assert data["update_id"].startswith("upd_"), data
    assert data["status"] in {"queued", "applied", "noop", "conflict", "not_found", "failed"}, data
    assert TIME.match(data["received_at"]), data
    assert data["applied_at"] is None or TIME.match(data["applied_at"]), data
    assert isinstance(data["changed_fields"], list), data


def get_contact(stack: Stack, key: str, contact_id: str) -> dict[str, Any]:
    client = api(stack, key)
    response = client.get(contact_path(contact_id))
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()["data"]
    return data


def update_records(stack: Stack, contact_id: str | None = None) -> int:
    """Return how many updates workers have recorded (for one contact, or in all)."""
    query = select(func.count()).select_from(UpdateRecord)
    if contact_id is not None:
        query = query.where(UpdateRecord.contact_id == contact_id)
    with stack.db.reading() as session:
        return int(session.scalar(query) or 0)


_BARRIERS: set[str] = set()


def settled_events(stack: Stack) -> list[dict[str, Any]]:
    """Return every change event once all work queued so far is done, minus barriers'.

    A barrier update goes through the same queue, worker and relay; once its event is on the
    stream, anything queued before it has been applied and published too.
    """
    tenant = new_tenant(stack, f"barrier-{uuid.uuid4().hex[:8]}")
    contact_id = make_contact(stack.db, tenant.account_id)
    client = api(stack, tenant.key)
    response = client.put(contact_path(contact_id), json={"position": "barrier"}, headers=ASYNC)
    assert response.status_code == 202, response.text
    barrier = response.json()["data"]["update_id"]
    _BARRIERS.add(barrier)

    def probe() -> list[dict[str, Any]] | None:
        events = stack.events()
        return events if any(e["update_id"] == barrier for e in events) else None

    return [e for e in wait_until(probe) if e["update_id"] not in _BARRIERS]


def assert_nothing_changed(
    stack: Stack, key: str, contact_id: str, before: dict[str, Any]
) -> None:
    """Check the contact reads as before, and no update was recorded or event emitted."""
    assert get_contact(stack, key, contact_id) == before
    assert settled_events(stack) == []
    assert update_records(stack, contact_id) == 0

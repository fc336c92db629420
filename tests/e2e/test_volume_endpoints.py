"""Batch update, list with a stable cursor, and delete, through the real gateway and worker."""

from __future__ import annotations

import threading
from typing import Any

from tests.conftest import Stack, make_contact
from tests.e2e.helpers import ASYNC, api, assert_error, contact_path, new_tenant
from tests.support import wait_until

BATCH = "/external/v1/contacts/batch/update"


def test_batch_queues_valid_items_and_rejects_invalid_ones_in_order(stack: Stack) -> None:
    tenant = new_tenant(stack, "acme")
    first = make_contact(stack.db, tenant.account_id)
    second = make_contact(stack.db, tenant.account_id)
    body = {"updates": [
        {"id": first, "company": "Beta", "tags": ["a"]},
        {"id": second, "email": "not-an-email"},
        {"company": "no id"},
        {"id": "cnt_missing00000", "company": "x"},
        {"id": second, "custom_fields": {"plan": "pro"}},
    ]}
    response = api(stack, tenant.key).post(BATCH, json=body)
    assert response.status_code == 202, response.text
    results = response.json()["data"]["results"]
    assert [r["index"] for r in results] == [0, 1, 2, 3, 4]
    assert [r.get("status") for r in results] == ["queued", None, None, "queued", "queued"]
    assert results[1]["error"]["code"] == "VALIDATION_ERROR"
    assert "email" in results[1]["error"]["details"]["fields"]
    assert "id" in results[2]["error"]["details"]["fields"]
    statuses = [
        stack.wait_finished(tenant.key, results[i]["update_id"])["status"] for i in (0, 3, 4)
    ]
    assert statuses == ["applied", "not_found", "applied"]
    contact = api(stack, tenant.key).get(contact_path(second)).json()["data"]
    assert contact["email"] is None
    assert contact["custom_fields"] == {"plan": "pro"}


def test_batch_rejects_a_bad_envelope_whole(stack: Stack) -> None:
    tenant = new_tenant(stack, "acme")
    client = api(stack, tenant.key)
    for body in ({"updates": []}, {"updates": [{}] * 1001}, {"items": []}, []):
        assert_error(client.post(BATCH, json=body), 400, "VALIDATION_ERROR")


def _walk(stack: Stack, key: str, params: dict[str, Any]) -> list[str]:
    seen: list[str] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        response = api(stack, key).get("/external/v1/contacts", params=query)
        assert response.status_code == 200, response.text
        data = response.json()["data"]
        seen += [c["id"] for c in data["contacts"]]
        cursor = data["pagination"]["next_cursor"]
        if cursor is None:
            return seen


def test_cursor_never_skips_or_repeats_while_updates_apply(stack: Stack) -> None:
    tenant = new_tenant(stack, "acme")
    other = new_tenant(stack, "other")
    ids = {make_contact(stack.db, tenant.account_id, company=f"c{i}") for i in range(45)}
    make_contact(stack.db, other.account_id)
    stop = threading.Event()

    def keep_updating() -> None:
        client = api(stack, tenant.key)
        n = 0
        while not stop.is_set():
            for contact_id in list(ids)[:10]:
                client.put(contact_path(contact_id), json={"position": f"p{n}"}, headers=ASYNC)
            n += 1

    updater = threading.Thread(target=keep_updating)
    updater.start()
    try:
        seen = _walk(stack, tenant.key, {"limit": 7})
    finally:
        stop.set()
        updater.join(30)
    assert len(seen) == len(set(seen)) == 45
    assert set(seen) == ids


def test_list_filters_and_pages(stack: Stack) -> None:
    tenant = new_tenant(stack, "acme")
    a = make_contact(stack.db, tenant.account_id, name="Ada Lovelace", company="Acme",
                     email="ada@example.com", tags=["vip", "lead"], source="linkedin")
    b = make_contact(stack.db, tenant.account_id, name="Bob", company="acme", tags=["lead"])
    make_contact(stack.db, tenant.account_id, name="Cy", company="Other")
    client = api(stack, tenant.key)

    def ids(**params: Any) -> list[str]:
        response = client.get("/external/v1/contacts", params=params)
        assert response.status_code == 200, response.text
        return [c["id"] for c in response.json()["data"]["contacts"]]

    assert set(ids(company="ACME")) == {a, b}
    assert ids(tags="vip,lead") == [a]
    assert set(ids(tags="lead")) == {a, b}
    assert ids(search="lovel") == [a]
    assert ids(email="ADA@example.com") == [a]
    assert ids(source="linkedin") == [a]
    assert ids(sort_by="name", sort_order="asc") [:2] == [a, b]
    page = client.get("/external/v1/contacts", params={"limit": 2, "page": 2}).json()["data"]
    assert page["pagination"] == {
        "page": 2, "limit": 2, "total": 3, "total_pages": 2, "next_cursor": None,
    }
    assert len(page["contacts"]) == 1
    future = "2999-01-01T00:00:00Z"
    assert ids(updated_since=future) == []
    assert_error(client.get("/external/v1/contacts", params={"limit": 101}), 400,
                 "VALIDATION_ERROR")
    assert_error(client.get("/external/v1/contacts", params={"cursor": "garbage"}), 400,
                 "VALIDATION_ERROR")


def test_delete_emits_an_event_and_queued_updates_end_not_found(stack: Stack) -> None:
    tenant = new_tenant(stack, "acme")
    other = new_tenant(stack, "other")
    reader = new_tenant(stack, "acme", ["contacts:read", "contacts:write"])
    contact_id = make_contact(stack.db, tenant.account_id)
    client = api(stack, tenant.key)
    assert_error(api(stack, other.key).delete(contact_path(contact_id)), 404, "NOT_FOUND")
    assert_error(api(stack, reader.key).delete(contact_path(contact_id)), 403,
                 "INSUFFICIENT_PERMISSIONS")
    response = client.delete(contact_path(contact_id))
    assert response.status_code == 200
    assert response.json() == {"success": True, "message": "Contact deleted successfully"}
    assert_error(client.get(contact_path(contact_id)), 404, "NOT_FOUND")
    queued = client.put(contact_path(contact_id), json={"name": "Late"}, headers=ASYNC)
    update_id = queued.json()["data"]["update_id"]
    assert stack.wait_finished(tenant.key, update_id)["status"] == "not_found"
    events = wait_until(lambda: [e for e in stack.events() if e["type"] == "contact.deleted"])
    assert events[0]["contact_id"] == contact_id
    assert events[0]["contact"]["name"] == "John Doe"
    assert_error(client.delete(contact_path(contact_id)), 404, "NOT_FOUND")

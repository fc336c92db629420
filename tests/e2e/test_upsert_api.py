"""The upsert endpoints end to end: gateway → queue → worker → record and events."""

from __future__ import annotations

from typing import Any

from contactsync.ids import contact_id_for
from tests.conftest import Stack
from tests.e2e.helpers import (
    ASYNC,
    CONTACT_KEYS,
    UPDATE_KEYS,
    api,
    assert_bad_fields,
    assert_error,
    new_tenant,
)
from tests.support import wait_until

UPSERT = "/external/v1/contacts/upsert"
BATCH = "/external/v1/contacts/batch/upsert"


def _events_of(stack: Stack, contact_id: str, kind: str) -> list[dict[str, Any]]:
    return [e for e in stack.events() if e["contact_id"] == contact_id and e["type"] == kind]


def test_an_upsert_creates_201_then_updates_200(stack: Stack) -> None:
    client = api(stack, new_tenant(stack, "acme").key)
    created = client.post(UPSERT, json={"match_on": "email", "name": "Ann",
                                        "email": "ann@example.com", "source": "linkedin"})
    assert created.status_code == 201, created.text
    contact = created.json()["data"]
    assert set(contact) == CONTACT_KEYS and contact["source"] == "linkedin"
    updated = client.post(UPSERT, json={"match_on": ["external_ids.crm", "email"],
                                        "email": "ANN@example.com", "position": "CTO",
                                        "external_ids": {"crm": "9"}})
    assert updated.status_code == 200, updated.text
    assert updated.json()["data"]["id"] == contact["id"]
    assert updated.json()["data"]["external_ids"] == {"crm": "9"}
    again = client.post(UPSERT, json={"match_on": "external_ids.crm", "position": "CTO",
                                      "external_ids": {"crm": "9"}})
    assert again.status_code == 200 and again.json()["data"]["id"] == contact["id"]
    [made] = wait_until(lambda: _events_of(stack, contact["id"], "contact.created"), 15)
    assert made["changes"]["name"] == {"old": None, "new": "Ann"}
    [changed] = wait_until(lambda: _events_of(stack, contact["id"], "contact.updated"), 15)
    assert set(changed["changes"]) == {"email", "position", "external_ids.crm"}


def test_an_async_upsert_answers_its_record_with_the_contact_it_made(stack: Stack) -> None:
    tenant = new_tenant(stack, "acme")
    answer = api(stack, tenant.key).post(
        UPSERT, json={"match_on": "linkedin_url", "name": "Bo",
                      "linkedin_url": "https://www.linkedin.com/in/bo"}, headers=ASYNC)
    assert answer.status_code == 202, answer.text
    record = answer.json()["data"]
    assert set(record) == UPDATE_KEYS and record["status"] == "queued"
    assert record["contact_id"] is None  # unknown until the worker looks it up
    assert answer.headers["location"] == f"/external/v1/updates/{record['update_id']}"
    done = stack.wait_finished(tenant.key, record["update_id"])
    assert done["status"] == "created"
    assert done["contact_id"] == contact_id_for(record["update_id"])
    found = api(stack, tenant.key).get(f"/external/v1/contacts/{done['contact_id']}")
    assert found.json()["data"]["name"] == "Bo"


def test_an_upsert_whose_other_identity_is_held_is_409_naming_the_holder(stack: Stack) -> None:
    client = api(stack, new_tenant(stack, "acme").key)
    ann = client.post("/external/v1/contacts", json={"name": "Ann", "email": "ann@example.com"})
    bob = client.post("/external/v1/contacts", json={
        "name": "Bob", "linkedin_url": "https://linkedin.com/in/bob"})
    answer = client.post(UPSERT, json={"match_on": "linkedin_url", "email": "ann@example.com",
                                       "linkedin_url": "https://linkedin.com/in/bob"})
    error = assert_error(answer, 409, "CONFLICT")
    assert error["details"] == {"field": "email", "contact_id": ann.json()["data"]["id"]}
    bob_now = client.get(f"/external/v1/contacts/{bob.json()['data']['id']}").json()["data"]
    assert bob_now["email"] is None


def test_post_contacts_emits_contact_created(stack: Stack) -> None:
    client = api(stack, new_tenant(stack, "acme").key)
    made = client.post("/external/v1/contacts", json={"name": "Cy", "tags": ["a"]}).json()["data"]
    [event] = wait_until(lambda: _events_of(stack, made["id"], "contact.created"), 15)
    assert event["changes"] == {"name": {"old": None, "new": "Cy"},
                                "tags": {"old": None, "new": ["a"]}}
    assert event["contact"] == made


def test_an_upsert_naming_an_identity_it_lacks_is_400(stack: Stack) -> None:
    client = api(stack, new_tenant(stack, "acme").key)
    assert_bad_fields(client.post(UPSERT, json={"match_on": "email", "name": "A"}), "match_on")
    assert_bad_fields(client.post(UPSERT, json={"match_on": "phone", "name": "A",
                                                "phone": "12345"}), "match_on")
    assert_bad_fields(client.post(UPSERT, json={"name": "A", "email": "a@example.com"}),
                      "match_on")


def test_a_create_without_a_name_is_400_and_makes_nothing(stack: Stack) -> None:
    client = api(stack, new_tenant(stack, "acme").key)
    answer = client.post(UPSERT, json={"match_on": "email", "email": "nameless@example.com"})
    assert_bad_fields(answer, "name")
    listed = client.get("/external/v1/contacts").json()["data"]["contacts"]
    assert listed == []


def test_a_batch_upsert_queues_each_item_and_refuses_bad_ones(stack: Stack) -> None:
    tenant = new_tenant(stack, "acme")
    client = api(stack, tenant.key)
    body = {"upserts": [
        {"match_on": "email", "name": "Ann", "email": "ann@example.com"},
        {"match_on": "email", "name": "No email"},
        {"match_on": ["email"], "email": "ANN@example.com", "company": "Acme"},
        "not an object",
    ]}
    answer = client.post(BATCH, json=body, headers={"Idempotency-Key": "batch-1"})
    assert answer.status_code == 202, answer.text
    results = answer.json()["data"]["results"]
    assert [r.get("status") for r in results] == ["queued", None, "queued", None]
    assert all(r["id"] is None for r in results)
    assert results[1]["error"]["details"]["fields"] == {"match_on": results[1]["error"][
        "details"]["fields"]["match_on"]}
    first = stack.wait_finished(tenant.key, results[0]["update_id"])
    second = stack.wait_finished(tenant.key, results[2]["update_id"])
    assert first["status"] == "created" and second["status"] == "applied"
    assert first["contact_id"] == second["contact_id"]
    replay = client.post(BATCH, json=body, headers={"Idempotency-Key": "batch-1"})
    assert replay.status_code == 202 and replay.json() == answer.json()
    listed = client.get("/external/v1/contacts").json()["data"]["contacts"]
    assert [(c["name"], c["company"]) for c in listed] == [("Ann", "Acme")]


def test_an_upsert_by_another_account_never_matches(stack: Stack) -> None:
    acme, other = new_tenant(stack, "acme"), new_tenant(stack, "other")
    theirs = api(stack, acme.key).post(
        "/external/v1/contacts", json={"name": "Ann", "email": "ann@example.com"}
    ).json()["data"]
    mine = api(stack, other.key).post(UPSERT, json={
        "match_on": "email", "name": "Mine", "email": "ann@example.com", "position": "X"})
    assert mine.status_code == 201, mine.text
    assert mine.json()["data"]["id"] != theirs["id"]
    still = api(stack, acme.key).get(f"/external/v1/contacts/{theirs['id']}").json()["data"]
    assert still == theirs


def test_an_upsert_needs_contacts_write(stack: Stack) -> None:
    reader = new_tenant(stack, "acme", ["contacts:read"])
    body = {"match_on": "email", "name": "A", "email": "a@example.com"}
    assert_error(api(stack, reader.key).post(UPSERT, json=body), 403, "INSUFFICIENT_PERMISSIONS")
    assert_error(api(stack, reader.key).post(BATCH, json={"upserts": [body]}), 403,
                 "INSUFFICIENT_PERMISSIONS")


def test_the_upsert_path_allows_post_only(stack: Stack) -> None:
    answer = api(stack, new_tenant(stack, "acme").key).request("OPTIONS", UPSERT)
    assert_error(answer, 405, "METHOD_NOT_ALLOWED")
    assert answer.headers["allow"] == "POST"  # not /contacts/{contact_id}'s methods


def test_an_upserts_idempotency_key_answers_the_same_and_applies_once(stack: Stack) -> None:
    client = api(stack, new_tenant(stack, "acme").key)
    body = {"match_on": "email", "name": "Ann", "email": "ann@example.com"}
    key = {"Idempotency-Key": "upsert-1"}
    first = client.post(UPSERT, json=body, headers=key)
    assert first.status_code == 201, first.text
    again = client.post(UPSERT, json=body, headers=key)
    assert (again.status_code, again.json()) == (201, first.json())
    assert_error(client.post(UPSERT, json={**body, "name": "Bo"}, headers=key), 422,
                 "IDEMPOTENCY_KEY_REUSED")
    listed = client.get("/external/v1/contacts").json()["data"]["contacts"]
    assert [c["id"] for c in listed] == [first.json()["data"]["id"]]

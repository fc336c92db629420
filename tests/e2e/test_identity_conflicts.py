"""Identities (DESIGN §2, "Identities and upsert"): each unique within an account, a write
that would give one to a second contact is a conflict naming the holder, and contacts are
found by them."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Stack, Tenant, make_contact
from tests.e2e.helpers import (
    ASYNC,
    api,
    assert_bad_fields,
    assert_contact_shape,
    assert_error,
    contact_path,
    get_contact,
    new_tenant,
    settled_events,
    update_records,
)

CONTACTS = "/external/v1/contacts"
BATCH = "/external/v1/contacts/batch/update"


@pytest.fixture
def tenant(stack: Stack) -> Tenant:
    return new_tenant(stack, "identities")


def _conflict(response: Any, field: str, holder: str) -> None:
    error = assert_error(response, 409, "CONFLICT")
    assert error["details"] == {"field": field, "contact_id": holder}, error


def _listed(stack: Stack, key: str, **params: str) -> list[str]:
    response = api(stack, key).get(CONTACTS, params=params)
    assert response.status_code == 200, response.text
    return [c["id"] for c in response.json()["data"]["contacts"]]


def test_put_of_an_email_another_contact_has_is_409_in_any_case(
    stack: Stack, tenant: Tenant
) -> None:
    holder = make_contact(stack.db, tenant.account_id, email="jane@example.com")
    other = make_contact(stack.db, tenant.account_id, email="other@example.com")
    before = get_contact(stack, tenant.key, other)
    response = api(stack, tenant.key).put(
        contact_path(other), json={"email": "  JANE@Example.COM ", "position": "CTO"}
    )
    _conflict(response, "email", holder)
    assert get_contact(stack, tenant.key, other) == before
    assert settled_events(stack) == []


def test_an_async_conflict_is_recorded_and_changes_nothing(stack: Stack, tenant: Tenant) -> None:
    holder = make_contact(stack.db, tenant.account_id, email="jane@example.com")
    other = make_contact(stack.db, tenant.account_id)
    before = get_contact(stack, tenant.key, other)
    response = api(stack, tenant.key).put(
        contact_path(other), json={"email": "Jane@example.com", "company": "Acme"}, headers=ASYNC
    )
    assert response.status_code == 202, response.text
    record = stack.wait_finished(tenant.key, response.json()["data"]["update_id"])
    assert record["status"] == "conflict", record
    assert record["changed_fields"] == []
    assert record["error"]["code"] == "CONFLICT"
    assert record["error"]["details"] == {"field": "email", "contact_id": holder}
    assert get_contact(stack, tenant.key, other) == before
    assert settled_events(stack) == []


def test_create_with_a_held_email_is_409_and_creates_nothing(
    stack: Stack, tenant: Tenant
) -> None:
    holder = make_contact(stack.db, tenant.account_id, email="jane@example.com")
    response = api(stack, tenant.key).post(
        CONTACTS, json={"name": "Jane Again", "email": "JANE@EXAMPLE.COM"}
    )
    _conflict(response, "email", holder)
    assert _listed(stack, tenant.key) == [holder]


@pytest.mark.parametrize("form", [
    "http://LinkedIn.com/in/JohnDoe/?trk=x",
    "https://br.linkedin.com/in/johndoe",
    "https://m.linkedin.com/in/john%64oe/#about",
])
def test_any_form_of_a_held_linkedin_url_is_a_conflict(
    stack: Stack, tenant: Tenant, form: str
) -> None:
    holder = make_contact(
        stack.db, tenant.account_id, linkedin_url="https://www.linkedin.com/in/johndoe"
    )
    other = make_contact(stack.db, tenant.account_id)
    client = api(stack, tenant.key)
    _conflict(client.put(contact_path(other), json={"linkedin_url": form}), "linkedin_url", holder)
    _conflict(
        client.post(CONTACTS, json={"name": "J", "linkedin_url": form}), "linkedin_url", holder
    )
    assert _listed(stack, tenant.key, linkedin_url=form) == [holder]


def test_external_ids_are_stored_merged_and_unique_per_system(
    stack: Stack, tenant: Tenant
) -> None:
    client = api(stack, tenant.key)
    created = client.post(CONTACTS, json={"name": "Jane", "external_ids": {"hubspot": "51"}})
    assert created.status_code == 201, created.text
    holder = created.json()["data"]
    assert_contact_shape(holder)
    assert holder["external_ids"] == {"hubspot": "51"}
    other = make_contact(stack.db, tenant.account_id)
    assert get_contact(stack, tenant.key, other)["external_ids"] == {}
    _conflict(
        client.put(contact_path(other), json={"external_ids": {"hubspot": "51"}}),
        "external_ids.hubspot", holder["id"],
    )
    # The same id in another system is another identity.
    moved = client.put(contact_path(other), json={"external_ids": {"salesforce": "51"}})
    assert moved.status_code == 200, moved.text
    assert moved.json()["data"]["external_ids"] == {"salesforce": "51"}
    merged = client.put(
        contact_path(other), json={"external_ids": {"hubspot": "52", "salesforce": None}}
    )
    assert merged.json()["data"]["external_ids"] == {"hubspot": "52"}
    changes = [e["changes"] for e in settled_events(stack) if e["type"] == "contact.updated"]
    assert changes == [
        {"external_ids.salesforce": {"old": None, "new": "51"}},
        {"external_ids.hubspot": {"old": None, "new": "52"},
         "external_ids.salesforce": {"old": "51", "new": None}},
    ]
    assert _listed(stack, tenant.key, external_id="hubspot:52") == [other]
    assert _listed(stack, tenant.key, external_id="hubspot:51") == [holder["id"]]
    assert _listed(stack, tenant.key, external_id="salesforce:51") == []


def test_a_released_identity_can_be_taken_and_a_holder_may_rewrite_its_own(
    stack: Stack, tenant: Tenant
) -> None:
    first = make_contact(stack.db, tenant.account_id, email="jane@example.com")
    second = make_contact(stack.db, tenant.account_id)
    client = api(stack, tenant.key)
    recased = client.put(contact_path(first), json={"email": "Jane@Example.com"})
    assert recased.status_code == 200, recased.text
    assert client.put(contact_path(first), json={"email": None}).status_code == 200
    taken = client.put(contact_path(second), json={"email": "JANE@example.com"})
    assert taken.status_code == 200, taken.text
    _conflict(client.put(contact_path(first), json={"email": "jane@example.com"}),
              "email", second)
    assert _listed(stack, tenant.key, email="jane@EXAMPLE.com") == [second]


def test_in_one_batch_the_first_by_sequence_takes_the_identity(
    stack: Stack, tenant: Tenant
) -> None:
    a = make_contact(stack.db, tenant.account_id)
    b = make_contact(stack.db, tenant.account_id)
    response = api(stack, tenant.key).post(BATCH, json={"updates": [
        {"id": a, "email": "new@example.com"},
        {"id": b, "email": "NEW@example.com", "company": "Acme"},
    ]})
    assert response.status_code == 202, response.text
    first, second = (
        stack.wait_finished(tenant.key, r["update_id"]) for r in response.json()["data"]["results"]
    )
    assert first["status"] == "applied", first
    assert second["status"] == "conflict", second
    assert second["error"]["details"] == {"field": "email", "contact_id": a}
    assert get_contact(stack, tenant.key, b)["company"] is None
    assert update_records(stack, b) == 1


def test_another_account_may_hold_the_same_identities_and_never_finds_ours(
    stack: Stack, tenant: Tenant
) -> None:
    ours = make_contact(
        stack.db, tenant.account_id, email="jane@example.com",
        linkedin_url="https://linkedin.com/in/jane", external_ids={"hubspot": "51"},
    )
    other: Tenant = new_tenant(stack, "other-account")
    theirs = api(stack, other.key).post(CONTACTS, json={
        "name": "Jane", "email": "JANE@example.com",
        "linkedin_url": "https://www.linkedin.com/in/Jane/", "external_ids": {"hubspot": "51"},
    })
    assert theirs.status_code == 201, theirs.text
    their_id = theirs.json()["data"]["id"]
    for params in ({"email": "jane@example.com"}, {"linkedin_url": "linkedin.com/in/jane"},
                   {"external_id": "hubspot:51"}):
        assert _listed(stack, tenant.key, **params) == [ours], params
        assert _listed(stack, other.key, **params) == [their_id], params


def test_find_by_identity_matches_exactly_one_form_and_refuses_a_malformed_external_id(
    stack: Stack, tenant: Tenant
) -> None:
    jane = make_contact(stack.db, tenant.account_id, email="jane@example.com")
    make_contact(stack.db, tenant.account_id, email="jane.doe@example.com")
    assert _listed(stack, tenant.key, email="JANE@example.com") == [jane]
    assert _listed(stack, tenant.key, email="jane@example") == []
    assert _listed(stack, tenant.key, email="jane@example.com", external_id="x:1") == []
    client = api(stack, tenant.key)
    for bad in ("hubspot", "HubSpot:51", "hubspot:", ":51"):
        assert_bad_fields(client.get(CONTACTS, params={"external_id": bad}), "external_id")


def test_external_ids_are_validated(stack: Stack, tenant: Tenant) -> None:
    contact = make_contact(stack.db, tenant.account_id)
    client = api(stack, tenant.key)
    for bad in ({"Hub Spot": "1"}, {"hubspot": ""}, {"hubspot": 51}, {"hubspot": "x" * 256},
                {f"s{i}": "1" for i in range(11)}, None):
        response = client.put(contact_path(contact), json={"external_ids": bad})
        assert_bad_fields(response, "external_ids")


def test_an_update_past_ten_external_ids_fails_and_changes_nothing(
    stack: Stack, tenant: Tenant
) -> None:
    ten = {f"s{i}": str(i) for i in range(10)}
    contact = make_contact(stack.db, tenant.account_id, external_ids=ten)
    before = get_contact(stack, tenant.key, contact)
    response = api(stack, tenant.key).put(
        contact_path(contact), json={"external_ids": {"eleventh": "11"}}
    )
    assert_bad_fields(response, "external_ids")
    assert get_contact(stack, tenant.key, contact) == before
    swapped = api(stack, tenant.key).put(
        contact_path(contact), json={"external_ids": {"s0": None, "eleventh": "11"}}
    )
    assert swapped.status_code == 200, swapped.text
    assert len(swapped.json()["data"]["external_ids"]) == 10


def test_a_deleted_contacts_identities_are_free_again(stack: Stack, tenant: Tenant) -> None:
    holder = make_contact(
        stack.db, tenant.account_id, email="jane@example.com", external_ids={"hubspot": "51"}
    )
    client = api(stack, tenant.key)
    assert client.delete(contact_path(holder)).status_code == 200
    body = {"name": "Jane", "email": "jane@example.com", "external_ids": {"hubspot": "51"}}
    again = client.post(CONTACTS, json=body)
    assert again.status_code == 201, again.text
    assert _listed(stack, tenant.key, external_id="hubspot:51") == [again.json()["data"]["id"]]

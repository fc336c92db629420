"""A key never reads or changes another account's contact or update: it sees NOT_FOUND."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from contactsync import names
from contactsync.updates import AcceptedUpdate
from tests.conftest import Stack, Tenant, make_contact
from tests.e2e.helpers import (
    ASYNC,
    api,
    assert_error,
    assert_update_shape,
    contact_path,
    get_contact,
    new_tenant,
    settled_events,
    update_records,
)


@dataclass
class Two:
    a: Tenant
    b: Tenant
    b_contact: str


@pytest.fixture
def two(stack: Stack) -> Two:
    a = new_tenant(stack, "account-a")
    b = new_tenant(stack, "account-b")
    b_contact = make_contact(
        stack.db, b.account_id, email="secret@b.example", company="B Corp", tags=["b"],
        custom_fields={"tier": "gold"},
    )
    return Two(a, b, b_contact)


def test_put_and_get_on_another_accounts_contact_are_not_found(stack: Stack, two: Two) -> None:
    before = get_contact(stack, two.b.key, two.b_contact)
    client = api(stack, two.a.key)
    put = client.put(contact_path(two.b_contact), json={"company": "Hijacked"})
    get = client.get(contact_path(two.b_contact))
    unknown_put = client.put(contact_path("cnt_000000000000"), json={"company": "Hijacked"})
    unknown_get = client.get(contact_path("cnt_000000000000"))
    assert_error(put, 404, "NOT_FOUND")
    assert_error(get, 404, "NOT_FOUND")
    # Exactly as for an id that does not exist: the answer tells nothing about B.
    assert put.json() == unknown_put.json()
    assert get.json() == unknown_get.json()
    for response in (put, get):
        assert "secret@b.example" not in response.text and "B Corp" not in response.text
    assert get_contact(stack, two.b.key, two.b_contact) == before
    assert settled_events(stack) == []


def test_another_accounts_finished_update_is_not_found(stack: Stack, two: Two) -> None:
    queued = api(stack, two.b.key).put(
        contact_path(two.b_contact), json={"position": "CFO"}, headers=ASYNC
    )
    assert queued.status_code == 202, queued.text
    update_id = queued.json()["data"]["update_id"]
    assert stack.wait_finished(two.b.key, update_id)["status"] == "applied"
    theirs = api(stack, two.a.key).get(f"/external/v1/updates/{update_id}")
    unknown = api(stack, two.a.key).get("/external/v1/updates/upd_00000000000000000000")
    assert_error(theirs, 404, "NOT_FOUND")
    assert theirs.json() == unknown.json()
    assert two.b_contact not in theirs.text


def test_another_accounts_queued_update_is_not_found(stack: Stack, two: Two) -> None:
    # An accepted update no worker has taken yet: its body sits in Redis, with no task.
    update = AcceptedUpdate(
        update_id="upd_tenancyqueued000001", account_id=two.b.account_id,
        contact_id=two.b_contact, seq=1, received_at="2024-01-25T10:00:00.000Z",
        patch={"position": "CFO"}, queue=names.UPDATES_QUEUE,
    )
    body_key = names.update_body_key(update.update_id)
    stack.redis.set(body_key, update.to_json())
    try:
        path = f"/external/v1/updates/{update.update_id}"
        mine = api(stack, two.b.key).get(path)
        assert mine.status_code == 200, mine.text
        assert mine.json()["data"]["status"] == "queued"
        assert_update_shape(mine.json()["data"])
        theirs = api(stack, two.a.key).get(path)
        assert_error(theirs, 404, "NOT_FOUND")
        assert two.b_contact not in theirs.text
    finally:
        stack.redis.delete(body_key)  # an unfinished update would hold up the next test


def test_async_put_on_another_accounts_contact_ends_not_found(stack: Stack, two: Two) -> None:
    before = get_contact(stack, two.b.key, two.b_contact)
    client = api(stack, two.a.key)
    response = client.put(
        contact_path(two.b_contact),
        json={"email": "attacker@a.example", "tags": [], "custom_fields": {"tier": None}},
        headers=ASYNC,
    )
    # The high-volume path neither looks the contact up nor tells whose it is.
    assert response.status_code == 202, response.text
    update_id = response.json()["data"]["update_id"]
    finished = stack.wait_finished(two.a.key, update_id)
    assert_update_shape(finished)
    assert finished["status"] == "not_found"
    assert finished["changed_fields"] == []
    assert finished["error"]["code"] == "NOT_FOUND"
    assert "secret@b.example" not in str(finished)
    assert get_contact(stack, two.b.key, two.b_contact) == before
    assert settled_events(stack) == []
    # The update is A's: B does not see it either.
    assert_error(
        api(stack, two.b.key).get(f"/external/v1/updates/{update_id}"), 404, "NOT_FOUND"
    )
    assert update_records(stack, two.b_contact) == 1


def test_another_key_of_the_same_account_shares_its_contacts(stack: Stack, two: Two) -> None:
    second = new_tenant(stack, "account-b", ["contacts:read", "contacts:write"])
    assert second.account_id == two.b.account_id
    client = api(stack, second.key)
    response = client.put(contact_path(two.b_contact), json={"position": "CFO"})
    assert response.status_code == 200, response.text
    assert get_contact(stack, two.b.key, two.b_contact)["position"] == "CFO"
    assert_error(
        api(stack, two.a.key).get(contact_path(two.b_contact)), 404, "NOT_FOUND"
    )

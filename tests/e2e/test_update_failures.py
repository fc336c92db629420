"""Updates that the worker cannot apply: how the answer and the update record tell it."""

from __future__ import annotations

import pytest

from contactsync.models import Contact, DeadLetter
from tests.conftest import Stack, Tenant, make_contact
from tests.e2e.helpers import (
    ASYNC,
    api,
    assert_bad_fields,
    assert_error,
    assert_update_shape,
    contact_path,
    get_contact,
    new_tenant,
    settled_events,
)


@pytest.fixture
def tenant(stack: Stack) -> Tenant:
    return new_tenant(stack, "acme")


def _corrupt(stack: Stack, contact_id: str) -> None:
    """Break a contact's stored merge state, so that applying any update to it fails for good."""
    with stack.db.unit_of_work() as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None
        contact.field_seqs = {"position": "not-a-sequence"}


def test_a_full_set_of_custom_fields_refuses_one_more(stack: Stack, tenant: Tenant) -> None:
    contact_id = make_contact(
        stack.db, tenant.account_id, custom_fields={f"k{i}": i for i in range(99)}
    )
    before = get_contact(stack, tenant.key, contact_id)
    client = api(stack, tenant.key)
    # The 100th key fits; replacing one and removing one keep it at 100.
    full = client.put(contact_path(contact_id), json={"custom_fields": {"k99": 99}})
    assert full.status_code == 200, full.text
    assert len(full.json()["data"]["custom_fields"]) == 100
    swap = client.put(contact_path(contact_id), json={"custom_fields": {"k0": None, "n": 1}})
    assert swap.status_code == 200, swap.text
    # One more is refused, in default mode as a 400 naming custom_fields...
    over = client.put(contact_path(contact_id), json={"custom_fields": {"extra": 1}})
    assert "100" in assert_bad_fields(over, "custom_fields")["custom_fields"]
    # ...and asynchronously as a failed update with the same error.
    queued = client.put(
        contact_path(contact_id), json={"custom_fields": {"extra": 1}}, headers=ASYNC
    )
    assert queued.status_code == 202, queued.text
    record = stack.wait_finished(tenant.key, queued.json()["data"]["update_id"])
    assert_update_shape(record)
    assert (record["status"], record["changed_fields"]) == ("failed", [])
    assert record["error"]["code"] == "VALIDATION_ERROR"
    after = get_contact(stack, tenant.key, contact_id)
    assert len(after["custom_fields"]) == 100 and "extra" not in after["custom_fields"]
    assert len(settled_events(stack)) == 2
    assert before["custom_fields"]["k0"] == 0 and "k0" not in after["custom_fields"]


def test_an_update_that_fails_for_good_ends_failed_and_is_parked(
    stack: Stack, tenant: Tenant
) -> None:
    contact_id = make_contact(stack.db, tenant.account_id, position="CTO")
    _corrupt(stack, contact_id)
    queued = api(stack, tenant.key).put(
        contact_path(contact_id), json={"position": "CEO"}, headers=ASYNC
    )
    assert queued.status_code == 202, queued.text
    update_id = queued.json()["data"]["update_id"]
    record = stack.wait_finished(tenant.key, update_id)
    assert_update_shape(record)
    assert (record["status"], record["changed_fields"]) == ("failed", [])
    assert set(record["error"]) == {"code", "message"}
    assert "CEO" not in record["error"]["message"]  # no personal data in the reason
    assert get_contact(stack, tenant.key, contact_id)["position"] == "CTO"
    assert settled_events(stack) == []
    with stack.db.reading() as session:
        letter = session.get(DeadLetter, update_id)
        assert letter is not None and letter.contact_id == contact_id


def test_default_mode_answers_promptly_when_the_update_fails(
    stack: Stack, tenant: Tenant
) -> None:
    contact_id = make_contact(stack.db, tenant.account_id, position="CTO")
    _corrupt(stack, contact_id)
    # The worker fails it at once: the gateway answers from the worker's reply (a gateway that
    # waited out its 5 s would answer 202), however long a loaded machine takes to get there.
    response = api(stack, tenant.key).put(contact_path(contact_id), json={"position": "CEO"})
    error = assert_error(response, 500, "INTERNAL_ERROR")
    update_id = error["details"]["update_id"]
    assert "CEO" not in response.text
    record = stack.wait_finished(tenant.key, update_id)
    assert (record["status"], record["error"]["code"]) == ("failed", "APPLY_FAILED")

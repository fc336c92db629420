"""Idempotency-Key on the batch update: the whole batch is one request, applied once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from contactsync import names
from contactsync.keys import create_key
from contactsync.queue.accept import Idempotency, idempotency_record
from tests.conftest import ALL_PERMISSIONS, Stack, make_contact
from tests.e2e.helpers import (
    api,
    assert_bad_fields,
    assert_error,
    contact_path,
    get_contact,
    new_tenant,
    settled_events,
    update_records,
)

BATCH = "/external/v1/contacts/batch/update"


@dataclass
class Seeded:
    key: str
    account_id: str
    contacts: list[str]

    def body(self, position: str = "VP of Engineering") -> dict[str, Any]:
        """A batch with an item for each contact, an invalid item and a non-object."""
        first, second, third = self.contacts
        return {"updates": [
            {"id": first, "position": position, "tags": ["hot-lead"]},
            {"id": second, "email": "not-an-email"},
            {"id": second, "company": "Acme"},
            "not an object",
            {"id": third, "custom_fields": {"plan": "pro"}},
        ]}


@pytest.fixture
def seeded(stack: Stack) -> Seeded:
    tenant = new_tenant(stack, "acme")
    contacts = [make_contact(stack.db, tenant.account_id) for _ in range(3)]
    return Seeded(tenant.key, tenant.account_id, contacts)


def _post(stack: Stack, key: str, body: Any, idem: str) -> httpx.Response:
    return api(stack, key).post(BATCH, json=body, headers={"Idempotency-Key": idem})


def _update_ids(response: httpx.Response) -> list[str]:
    assert response.status_code == 202, response.text
    return [r["update_id"] for r in response.json()["data"]["results"] if "update_id" in r]


def test_a_retried_batch_gets_the_same_results_and_applies_once(
    stack: Stack, seeded: Seeded
) -> None:
    first = _post(stack, seeded.key, seeded.body(), "batch-1")
    again = _post(stack, seeded.key, seeded.body(), "batch-1")
    update_ids = _update_ids(first)
    assert len(update_ids) == 3
    assert (again.status_code, again.json()) == (202, first.json())
    results = first.json()["data"]["results"]
    assert [r.get("status") for r in results] == ["queued", None, "queued", None, "queued"]
    assert results[1]["error"]["details"]["fields"].keys() == {"email"}
    for update_id in update_ids:
        assert stack.wait_finished(seeded.key, update_id)["status"] == "applied"
    later = _post(stack, seeded.key, seeded.body(), "batch-1")
    assert (later.status_code, later.json()) == (202, first.json())
    assert [update_records(stack, c) for c in seeded.contacts] == [1, 1, 1]
    events = settled_events(stack)
    assert sorted(e["update_id"] for e in events) == sorted(update_ids)
    assert get_contact(stack, seeded.key, seeded.contacts[0])["position"] == "VP of Engineering"


def test_the_same_key_with_another_request_is_reused(stack: Stack, seeded: Seeded) -> None:
    first = _post(stack, seeded.key, seeded.body(), "batch-2")
    update_ids = _update_ids(first)
    body = seeded.body()
    others = [
        seeded.body("CTO"),
        {"updates": body["updates"][:2]},
        {"updates": list(reversed(body["updates"]))},
    ]
    for other in others:
        assert_error(_post(stack, seeded.key, other, "batch-2"), 422, "IDEMPOTENCY_KEY_REUSED")
    put = api(stack, seeded.key).put(
        contact_path(seeded.contacts[0]), json={"position": "CTO"},
        headers={"Idempotency-Key": "batch-2"},
    )
    assert_error(put, 422, "IDEMPOTENCY_KEY_REUSED")
    for update_id in update_ids:
        stack.wait_finished(seeded.key, update_id)
    assert [update_records(stack, c) for c in seeded.contacts] == [1, 1, 1]
    assert len(settled_events(stack)) == 3
    assert get_contact(stack, seeded.key, seeded.contacts[0])["position"] == "VP of Engineering"


def test_a_batch_still_in_flight_is_a_conflict(stack: Stack, seeded: Seeded) -> None:
    # The key as the accept script leaves it while its batch is being queued: reserved, no
    # answer yet (tests/integration/test_enqueue.py races two batches for it in one flush).
    idem = Idempotency.of("in-flight", "POST", BATCH, seeded.body())
    stack.redis.set(
        names.idempotency_key(seeded.account_id, idem.key_digest),
        idempotency_record(idem.fingerprint, "upd_planted0000000000001", None), ex=120,
    )
    error = assert_error(_post(stack, seeded.key, seeded.body(), "in-flight"), 409, "CONFLICT")
    assert "flight" in error["message"]
    reused = _post(stack, seeded.key, seeded.body("CTO"), "in-flight")
    assert_error(reused, 422, "IDEMPOTENCY_KEY_REUSED")
    assert settled_events(stack) == []
    assert [update_records(stack, c) for c in seeded.contacts] == [0, 0, 0]


def test_keys_are_scoped_to_the_account(stack: Stack, seeded: Seeded) -> None:
    other = new_tenant(stack, "globex")
    theirs = Seeded(other.key, other.account_id,
                    [make_contact(stack.db, other.account_id) for _ in range(3)])
    mine = _post(stack, seeded.key, seeded.body(), "shared-key")
    yours = _post(stack, theirs.key, theirs.body(), "shared-key")
    # The very same body from another account: its own request, its contacts not found.
    probe = _post(stack, theirs.key, seeded.body(), "shared-key-2")
    source = _post(stack, seeded.key, seeded.body("CTO"), "shared-key-2")
    mine_ids, yours_ids, probe_ids = _update_ids(mine), _update_ids(yours), _update_ids(probe)
    retried = _post(stack, seeded.key, seeded.body(), "shared-key")
    assert (retried.status_code, retried.json()) == (202, mine.json())
    assert not set(mine_ids) & set(yours_ids) and not set(mine_ids) & set(probe_ids)
    for update_id in yours_ids:
        assert stack.wait_finished(theirs.key, update_id)["status"] == "applied"
    for update_id in probe_ids:
        assert stack.wait_finished(theirs.key, update_id)["status"] == "not_found"
    for update_id in _update_ids(source):  # only the first item changes anything again
        assert stack.wait_finished(seeded.key, update_id)["status"] in ("applied", "noop")
    assert get_contact(stack, seeded.key, seeded.contacts[0])["position"] == "CTO"


def test_a_batch_of_invalid_items_only_is_replayed_too(stack: Stack, seeded: Seeded) -> None:
    body = {"updates": [{"id": seeded.contacts[0], "email": "nope"}, {"company": "no id"}]}
    first = _post(stack, seeded.key, body, "invalid-only")
    again = _post(stack, seeded.key, body, "invalid-only")
    assert first.status_code == 202, first.text
    assert (again.status_code, again.json()) == (202, first.json())
    assert all("error" in r for r in first.json()["data"]["results"])
    reused = _post(stack, seeded.key, {"updates": [{"company": "no id either"}]}, "invalid-only")
    assert_error(reused, 422, "IDEMPOTENCY_KEY_REUSED")
    assert settled_events(stack) == []


def test_a_replayed_batch_spends_no_update_tokens(stack: Stack) -> None:
    # An update bucket of 1 a second holds 1,000 tokens: one batch of 600 fits, two do not.
    with stack.db.unit_of_work() as session:
        row, key = create_key(session, "slow", list(ALL_PERMISSIONS),
                              update_rate_limit_per_second=1)
        account_id = row.account_id
    contact_id = make_contact(stack.db, account_id)
    body = {"updates": [{"id": contact_id, "custom_fields": {"n": n}} for n in range(600)]}
    first = _post(stack, key, body, "big")
    again = _post(stack, key, body, "big")
    assert (again.status_code, again.json()) == (202, first.json())
    update_ids = _update_ids(first)
    stack.wait_finished(key, update_ids[-1], timeout=60)
    assert_error(_post(stack, key, body, "big-2"), 429, "RATE_LIMIT_EXCEEDED")
    assert get_contact(stack, key, contact_id)["custom_fields"] == {"n": 599}


@pytest.mark.parametrize("idem", ["", "k" * 256, "tab\there"])
def test_a_bad_key_is_a_validation_error(stack: Stack, seeded: Seeded, idem: str) -> None:
    assert_bad_fields(_post(stack, seeded.key, seeded.body(), idem), "Idempotency-Key")
    assert settled_events(stack) == []

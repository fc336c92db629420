"""Ids no contact or update can have (DESIGN §2), through the real gateway: 404 at once in every
mode, never queued; in a batch, that item's NOT_FOUND while the other items queue and apply.
`^…$` with `re.match` let a final newline through: `cnt_<60 letters>\\n` was queued, then
failed in PostgreSQL on every delivery, forever."""

from __future__ import annotations

import pytest

from contactsync import names
from contactsync.queue.wire import queue_list_key
from tests.conftest import Stack, make_contact
from tests.e2e.helpers import ASYNC, api, assert_error, contact_path, get_contact, new_tenant
from tests.support import wait_until

SIXTY = "a" * 60
BAD_IDS = [
    pytest.param(f"cnt_{SIXTY}%0A", f"cnt_{SIXTY}\n", id="newline-long"),
    pytest.param("cnt_abc123def456%0A", "cnt_abc123def456\n", id="newline"),
    pytest.param("cnt_ABC123DEF456", "cnt_ABC123DEF456", id="uppercase"),
    pytest.param("cnt_abc123", "cnt_abc123", id="short"),
    pytest.param("contact-1", "contact-1", id="no-prefix"),
]


def queued(stack: Stack) -> tuple[int, int, int, int]:
    """Return what waits in Redis: pending updates, stored bodies, and messages per queue."""
    bodies = sum(1 for _ in stack.redis.scan_iter(names.update_body_key("*"), count=1000))
    return (
        int(stack.redis.zcard(names.PENDING_KEY)), bodies,
        int(stack.redis.llen(queue_list_key(names.UPDATES_QUEUE))),
        int(stack.redis.llen(queue_list_key(names.BULK_QUEUE))),
    )


@pytest.mark.parametrize(("in_path", "_decoded"), BAD_IDS)
def test_an_id_no_contact_can_have_is_404_at_once_and_never_queued(
    stack: Stack, in_path: str, _decoded: str
) -> None:
    tenant = new_tenant(stack, "acme")
    client = api(stack, tenant.key)
    before = queued(stack)
    path = contact_path(in_path)
    for response in (
        client.put(path, json={"position": "CEO"}),
        client.put(path, json={"position": "CEO"}, headers=ASYNC),
        client.get(path),
        client.delete(path),
    ):
        assert_error(response, 404, "NOT_FOUND")
        assert "update_id" not in response.text
    assert queued(stack) == before


@pytest.mark.parametrize(
    "update_id", ["upd_abc%0A", "upd_" + "a" * 37, "upd_abc-def", "UPD_abc"]
)
def test_an_update_id_no_update_can_have_is_404(stack: Stack, update_id: str) -> None:
    tenant = new_tenant(stack, "acme")
    response = api(stack, tenant.key).get(f"/external/v1/updates/{update_id}")
    assert_error(response, 404, "NOT_FOUND")


def test_a_batch_item_with_such_an_id_is_not_found_and_the_others_queue(stack: Stack) -> None:
    tenant = new_tenant(stack, "acme")
    contact_id = make_contact(stack.db, tenant.account_id)
    client = api(stack, tenant.key)
    bad = [decoded for _, decoded in (p.values for p in BAD_IDS)]
    items = [{"id": contact_id, "position": "CTO"}, *({"id": i, "company": "X"} for i in bad)]
    items.append({"id": contact_id, "company": "Acme"})
    response = client.post("/external/v1/contacts/batch/update", json={"updates": items})
    assert response.status_code == 202, response.text
    results = response.json()["data"]["results"]
    for index, contact in enumerate(bad, start=1):
        assert results[index] == {"index": index, "id": contact, "error": {
            "code": "NOT_FOUND", "message": "Contact not found.", "details": {},
        }}
    good = [results[0], results[-1]]
    assert [r["status"] for r in good] == ["queued", "queued"]
    for result in good:
        assert stack.wait_finished(tenant.key, result["update_id"])["status"] == "applied"
    after = get_contact(stack, tenant.key, contact_id)
    assert (after["position"], after["company"]) == ("CTO", "Acme")
    wait_until(lambda: queued(stack) == (0, 0, 0, 0))  # the bad items left nothing behind


@pytest.mark.parametrize("body", [b"not json", b"[1]", b'{"account_id": "acc_x"}'])
def test_an_update_whose_stored_body_is_corrupt_reads_as_404_not_500(
    stack: Stack, body: bytes
) -> None:
    tenant = new_tenant(stack, "acme")
    update_id = "upd_corrupt0body0test0"
    stack.redis.set(names.update_body_key(update_id), body)
    try:
        response = api(stack, tenant.key).get(f"/external/v1/updates/{update_id}")
        assert_error(response, 404, "NOT_FOUND")
    finally:
        stack.redis.delete(names.update_body_key(update_id))

"""Updates a real worker cannot record as they are, planted in Redis past the gateway's checks:
each ends `failed` once, parked, its body and pending entry gone, while the updates beside it
in the same message apply. And one whose body vanished ends `failed` with BODY_MISSING."""

from __future__ import annotations

from sqlalchemy import select

from contactsync import names
from contactsync.dead_letters import pending
from contactsync.models import DeadLetter
from contactsync.queue.wire import queue_list_key, task_message
from contactsync.updates import AcceptedUpdate
from tests.conftest import Stack, make_contact, make_tenant
from tests.integration.apply_support import ORIGIN, accepted, contact, records
from tests.support import wait_until

# Fits the old `^[A-Za-z0-9_-]{1,64}$` with `re.match` (which ignores a final newline), but
# not update_records.contact_id (64 characters) on PostgreSQL.
LONG_ID = "cnt_" + "a" * 60 + "\n"


def plant(stack: Stack, updates: list[AcceptedUpdate], lost: tuple[str, ...] = ()) -> bytes:
    """Store bodies (but those `lost`), pending entries and one task message, as the gateway
    does, without its validation."""
    seconds, micros = stack.redis.time()
    message = task_message(names.UPDATES_QUEUE, updates, ORIGIN)
    with stack.redis.pipeline(transaction=True) as pipe:
        for update in updates:
            if update.update_id not in lost:
                pipe.set(names.update_body_key(update.update_id), update.to_json())
        pipe.zadd(names.PENDING_KEY, {u.update_id: seconds * 1_000_000 + micros for u in updates})
        pipe.lpush(queue_list_key(names.UPDATES_QUEUE), message)
        pipe.execute()
    return message


def left_in_redis(stack: Stack, update_ids: list[str]) -> list[str]:
    """Return which of these updates still have a body or a pending entry."""
    return [
        i for i in update_ids
        if stack.redis.exists(names.update_body_key(i))
        or stack.redis.zscore(names.PENDING_KEY, i) is not None
    ]


def parked(stack: Stack) -> dict[str, DeadLetter]:
    """Return the dead letters `contactsync dead-letters list` shows."""
    with stack.db.reading() as session:
        return {letter.update_id: letter for letter in pending(session)}


def test_updates_the_database_refuses_end_failed_and_parked_and_the_rest_apply(
    stack: Stack,
) -> None:
    tenant = make_tenant(stack.db, "acme")
    contact_id = make_contact(stack.db, tenant.account_id)
    first = accepted(tenant.account_id, contact_id, {"position": "CTO"})
    long_id = accepted(tenant.account_id, LONG_ID, {"company": "Long"})
    # Past BIGINT: the batch's insert of records fails for good, then this one alone.
    huge_seq = accepted(tenant.account_id, contact_id, {"phone": "+1 555 0100"}, seq=2**63)
    last = accepted(tenant.account_id, contact_id, {"company": "Acme"})
    poison = [long_id.update_id, huge_seq.update_id]
    plant(stack, [first, long_id, huge_seq, last])

    with stack.client(tenant.key) as client:
        found = wait_until(lambda: len(records(stack.db, poison)) == 2 and records(stack.db))
        for update_id in poison:
            answer = client.get(f"/external/v1/updates/{update_id}").json()["data"]
            assert answer["status"] == "failed", answer
        assert answer["error"]["code"] == "APPLY_FAILED"  # huge_seq
    assert found[long_id.update_id].error == {
        "code": "UNREADABLE_UPDATE", "message": "the stored body's contact id is malformed",
    }
    assert {found[i].status for i in (first.update_id, last.update_id)} == {"applied"}
    after = contact(stack.db, contact_id)
    assert (after["position"], after["company"], after["phone"]) == ("CTO", "Acme", None)
    letters = parked(stack)
    assert set(poison) <= set(letters)
    # The letter keeps the body as it came, for an operator to read.
    assert letters[long_id.update_id].body["contact_id"] == LONG_ID
    assert letters[huge_seq.update_id].body["seq"] == 2**63
    ids = [first.update_id, long_id.update_id, huge_seq.update_id, last.update_id]
    wait_until(lambda: not left_in_redis(stack, ids), timeout=10)
    log = stack.worker.log()
    assert log.count(f"update {long_id.update_id} failed") <= 1  # parked once, not in a loop


def test_an_update_whose_body_vanished_ends_failed_with_body_missing(stack: Stack) -> None:
    tenant = make_tenant(stack.db, "acme")
    contact_id = make_contact(stack.db, tenant.account_id)
    gone = accepted(tenant.account_id, contact_id, {"position": "Lost"})
    kept = accepted(tenant.account_id, contact_id, {"company": "Kept"})
    plant(stack, [gone, kept], lost=(gone.update_id,))

    record = stack.wait_finished(tenant.key, gone.update_id)
    assert record["status"] == "failed"
    assert record["contact_id"] == contact_id
    assert record["error"] == {
        "code": "BODY_MISSING",
        "message": "The update's stored body was lost before it could be applied.",
    }
    assert stack.wait_finished(tenant.key, kept.update_id)["status"] == "applied"
    assert contact(stack.db, contact_id)["position"] is None
    wait_until(lambda: not left_in_redis(stack, [gone.update_id, kept.update_id]), timeout=10)
    # Nothing to replay without a body: no dead letter.
    with stack.db.reading() as session:
        assert session.scalars(select(DeadLetter)).all() == []

"""apply_batch on real databases: last writer wins per field, exactly-once records, the outbox."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from sqlalchemy import text

from contactsync import pg_batch
from contactsync.batch_apply import apply_batch, record_failures
from contactsync.db import Database
from contactsync.dead_letters import park
from contactsync.merge import MAX_MARKERS
from contactsync.schemas import MAX_CUSTOM_FIELDS_BYTES, custom_fields_bytes
from contactsync.settings import Settings
from contactsync.timeutil import isoformat, utcnow
from contactsync.updates import AcceptedUpdate
from tasks.parking import park_refused
from tests.conftest import make_contact, make_tenant
from tests.integration.apply_support import (
    accepted,
    contact,
    dead_letters,
    outbox_mark,
    outbox_since,
    records,
)


@pytest.fixture(scope="module")
def writer(settings: Settings) -> Iterator[Database]:
    """A database that takes the write lock up front, as the worker's does."""
    database = Database(settings)
    yield database
    database.dispose()


def run(writer: Database, updates: list[AcceptedUpdate]) -> tuple[list, list[dict]]:
    """Apply one batch in one transaction, parking what the rule refused as the worker does;
    return its outcomes and the events it wrote."""
    with writer.unit_of_work() as session:
        mark = outbox_mark(session)
        now = utcnow()
        outcomes = apply_batch(session, updates, now)
        park_refused(session, outcomes, now)
        events = [orjson.loads(row.payload) for row in outbox_since(session, mark)]
    return outcomes, events


def test_shuffled_batches_converge_on_sequence_order(db: Database, writer: Database) -> None:
    tenant = make_tenant(db, "acme")
    base = {"email": "old@example.com", "tags": ["t0"], "custom_fields": {"plan": "trial", "x": 1}}
    patches = [
        (10, {"position": "A", "custom_fields": {"plan": "free"}, "tags": ["a"]}),
        (20, {"position": "B", "custom_fields": {"seats": 5}}),
        (30, {"custom_fields": {"plan": "pro", "x": None}, "tags": ["b", "c"]}),
        (15, {"position": "C", "email": "new@example.com", "custom_fields": {"seats": 3}}),
        (25, {"company": "Acme", "email": None}),
        (5, {"company": "Old Co", "custom_fields": {"x": 2, "y": "kept"}}),
    ]
    reference = make_contact(db, tenant.account_id, **base)
    for seq, patch in sorted(patches, key=lambda p: p[0]):
        run(writer, [accepted(tenant.account_id, reference, patch, seq=seq)])
    expected = contact(db, reference)
    assert expected["position"] == "B" and expected["email"] is None
    assert expected["tags"] == ["b", "c"]
    assert expected["custom_fields"] == {"plan": "pro", "seats": 5, "y": "kept"}

    rng = random.Random(7)
    for _ in range(4):
        contact_id = make_contact(db, tenant.account_id, **base)
        updates = [accepted(tenant.account_id, contact_id, p, seq=s) for s, p in patches]
        rng.shuffle(updates)
        cut = rng.randrange(1, len(updates))
        run(writer, updates[:cut])  # two batches: the later sequences may come first
        run(writer, updates[cut:])
        got = contact(db, contact_id)
        for key in ("name", "email", "phone", "company", "position", "tags", "custom_fields"):
            assert got[key] == expected[key], key
        assert got["field_seqs"] == expected["field_seqs"]


def test_one_batch_applies_in_sequence_order_whatever_the_order_given(
    db: Database, writer: Database
) -> None:
    tenant = make_tenant(db, "acme")
    contact_id = make_contact(db, tenant.account_id)
    first = accepted(tenant.account_id, contact_id, {"position": "A"}, seq=100)
    second = accepted(tenant.account_id, contact_id, {"position": "B"}, seq=200)
    outcomes, events = run(writer, [second, first])
    assert [(o.update.update_id, o.status) for o in outcomes] == [
        (first.update_id, "applied"), (second.update_id, "applied"),
    ]
    assert [e["changes"] for e in events] == [
        {"position": {"old": None, "new": "A"}}, {"position": {"old": "A", "new": "B"}},
    ]
    # Each event carries the contact as that update left it, not as the batch did.
    assert [e["contact"]["position"] for e in events] == ["A", "B"]
    assert contact(db, contact_id)["position"] == "B"


def test_an_update_delivered_again_is_applied_once(db: Database, writer: Database) -> None:
    tenant = make_tenant(db, "acme")
    contact_id = make_contact(db, tenant.account_id)
    update = accepted(tenant.account_id, contact_id, {"company": "Acme", "tags": ["x"]})

    outcomes, events = run(writer, [update, update])
    assert [(o.status, o.duplicate) for o in outcomes] == [("applied", False)]
    assert len(events) == 1
    after_first = contact(db, contact_id)

    newer = accepted(tenant.account_id, contact_id, {"position": "CTO"})
    outcomes, events = run(writer, [update, newer, update])
    by_id = {o.update.update_id: o for o in outcomes}
    assert len(outcomes) == 2
    assert by_id[update.update_id].duplicate and by_id[update.update_id].status == "applied"
    assert by_id[update.update_id].contact is not None
    assert not by_id[newer.update_id].duplicate
    assert [e["update_id"] for e in events] == [newer.update_id]

    outcomes, events = run(writer, [update])
    assert [(o.status, o.duplicate) for o in outcomes] == [("applied", True)]
    assert events == []
    after = contact(db, contact_id)
    assert after["company"] == "Acme" and after["position"] == "CTO"
    assert after["created_at"] == after_first["created_at"]
    found = records(db)
    assert sorted(found) == sorted([update.update_id, newer.update_id])
    assert found[update.update_id].changed_fields == ["company", "tags"]


def test_a_missing_contact_is_not_found_once(db: Database, writer: Database) -> None:
    tenant = make_tenant(db, "acme")
    update = accepted(tenant.account_id, "cnt_doesnotexist", {"position": "CTO"})
    outcomes, events = run(writer, [update])
    assert [(o.status, o.duplicate, o.contact) for o in outcomes] == [("not_found", False, None)]
    assert outcomes[0].error is not None and outcomes[0].error["code"] == "NOT_FOUND"
    assert events == []
    outcomes, _ = run(writer, [update])
    assert [(o.status, o.duplicate) for o in outcomes] == [("not_found", True)]
    record = records(db)[update.update_id]
    assert record.status == "not_found" and record.error["code"] == "NOT_FOUND"


def test_another_accounts_contact_is_not_found_and_unchanged(
    db: Database, writer: Database
) -> None:
    owner = make_tenant(db, "owner")
    intruder = make_tenant(db, "intruder")
    contact_id = make_contact(db, owner.account_id, email="a@example.com", tags=["t"])
    before = contact(db, contact_id)
    update = accepted(
        intruder.account_id, contact_id,
        {"email": "evil@example.com", "tags": [], "custom_fields": {"k": "v"}},
    )
    legit = accepted(owner.account_id, contact_id, {"position": "CTO"})
    outcomes, events = run(writer, [update, legit])
    statuses = {o.update.update_id: o for o in outcomes}
    assert statuses[update.update_id].status == "not_found"
    assert statuses[update.update_id].contact is None  # nothing of the contact leaks
    again, _ = run(writer, [update])  # delivered again: answered from its record
    assert [(o.status, o.duplicate, o.contact) for o in again] == [("not_found", True, None)]
    assert statuses[legit.update_id].status == "applied"
    assert [e["update_id"] for e in events] == [legit.update_id]
    after = contact(db, contact_id)
    assert {**after, "position": None, "updated_at": None} == {
        **before, "position": None, "updated_at": None,
        "field_seqs": {"position": legit.seq},
    }


def test_a_noop_writes_no_event_and_keeps_updated_at(db: Database, writer: Database) -> None:
    tenant = make_tenant(db, "acme")
    contact_id = make_contact(
        db, tenant.account_id, company="Acme", tags=["a", "b"], custom_fields={"plan": "pro"}
    )
    before = contact(db, contact_id)
    same = accepted(
        tenant.account_id, contact_id,
        {"company": "Acme", "tags": ["a", "b"], "custom_fields": {"plan": "pro", "gone": None}},
    )
    empty = accepted(tenant.account_id, contact_id, {})
    outcomes, events = run(writer, [same, empty])
    assert [o.status for o in outcomes] == ["noop", "noop"]
    assert all(o.changed_fields == [] for o in outcomes)
    assert events == []
    after = contact(db, contact_id)
    assert after["updated_at"] == before["updated_at"]
    assert {r.status for r in records(db).values()} == {"noop"}

    newer = accepted(tenant.account_id, contact_id, {"company": "New"})
    older = accepted(tenant.account_id, contact_id, {"company": "Stale"}, seq=newer.seq - 500)
    run(writer, [newer])
    stamped = contact(db, contact_id)["updated_at"]
    outcomes, events = run(writer, [older])  # loses to the newer write: changes nothing
    assert [o.status for o in outcomes] == ["noop"] and events == []
    assert contact(db, contact_id)["company"] == "New"
    assert contact(db, contact_id)["updated_at"] == stamped


def test_an_answer_carries_the_contacts_times_to_the_millisecond_truncated(
    db: Database, writer: Database
) -> None:
    # PostgreSQL formats the locked row's times (pg_batch), Python formats SQLite's: one text.
    tenant = make_tenant(db, "acme")
    contact_id = make_contact(db, tenant.account_id, company="Acme")
    with db.unit_of_work() as session:
        session.execute(
            text("UPDATE contacts SET created_at = :c, updated_at = :u WHERE id = :id"),
            {"c": datetime(2024, 2, 29, 23, 59, 59, 999_999, tzinfo=UTC),
             "u": datetime(2025, 1, 1, 0, 0, 0, 500, tzinfo=UTC), "id": contact_id},
        )
    (outcome,) = run(writer, [accepted(tenant.account_id, contact_id, {"company": "Acme"})])[0]
    assert outcome.status == "noop" and outcome.contact is not None
    assert outcome.contact["created_at"] == "2024-02-29T23:59:59.999Z"
    assert outcome.contact["updated_at"] == "2025-01-01T00:00:00.000Z"
    stored = contact(db, contact_id)
    assert (stored["created_at"], stored["updated_at"]) == (
        outcome.contact["created_at"], outcome.contact["updated_at"]
    )


def test_more_than_100_custom_fields_fails_and_changes_nothing(
    db: Database, writer: Database
) -> None:
    tenant = make_tenant(db, "acme")
    full = {f"k{i}": i for i in range(100)}
    contact_id = make_contact(db, tenant.account_id, custom_fields=full)
    before = contact(db, contact_id)
    too_many = accepted(
        tenant.account_id, contact_id, {"position": "CTO", "custom_fields": {"extra": 1}}
    )
    swap = accepted(tenant.account_id, contact_id, {"custom_fields": {"k0": None, "new": 1}})
    outcomes, events = run(writer, [too_many, swap])
    by_id = {o.update.update_id: o for o in outcomes}
    failed = by_id[too_many.update_id]
    assert failed.status == "failed" and failed.changed_fields == []
    assert failed.error is not None and failed.error["code"] == "VALIDATION_ERROR"
    assert by_id[swap.update_id].status == "applied"
    assert [e["update_id"] for e in events] == [swap.update_id]
    after = contact(db, contact_id)
    assert after["position"] is None  # the failed update changed none of its fields
    assert "extra" not in after["custom_fields"] and len(after["custom_fields"]) == 100
    assert "position" not in after["field_seqs"]
    assert before["custom_fields"]["k0"] == 0
    record = records(db)[too_many.update_id]
    assert record.status == "failed" and record.error["code"] == "VALIDATION_ERROR"
    # A failed update is parked, so that it can be replayed once the contact has room.
    assert list(dead_letters(db)) == [too_many.update_id]

    room = accepted(tenant.account_id, contact_id, {"custom_fields": {"k1": None, "k2": None}})
    run(writer, [room])
    outcomes, events = run(writer, [too_many])  # what a replay delivers
    assert [(o.status, o.duplicate) for o in outcomes] == [("applied", False)]
    assert len(events) == 1
    assert records(db)[too_many.update_id].status == "applied"
    assert contact(db, contact_id)["custom_fields"]["extra"] == 1


def test_an_update_that_would_push_custom_fields_past_16_kib_fails_and_is_parked(
    db: Database, writer: Database
) -> None:
    tenant = make_tenant(db, "acme")
    # 16 values of 1,000 characters: 16,145 bytes as compact JSON, just under the bound.
    stored = {f"k{i:02}": "v" * 1000 for i in range(16)}
    contact_id = make_contact(db, tenant.account_id, custom_fields=stored)
    assert custom_fields_bytes(stored) <= MAX_CUSTOM_FIELDS_BYTES
    # Each of these alone is a valid request; on this contact it would pass 16 KiB.
    grow = accepted(tenant.account_id, contact_id,
                    {"position": "CTO", "custom_fields": {"more": "m" * 1000}})
    outcomes, events = run(writer, [grow])
    assert [(o.status, o.changed_fields) for o in outcomes] == [("failed", [])]
    assert events == []
    assert outcomes[0].error is not None and outcomes[0].error["code"] == "VALIDATION_ERROR"
    assert "16384 bytes" in outcomes[0].error["message"]
    after = contact(db, contact_id)
    assert after["custom_fields"] == stored and after["position"] is None
    assert records(db)[grow.update_id].status == "failed"
    assert list(dead_letters(db)) == [grow.update_id]
    # Trading a value for one of the same size keeps it under the bound: applied.
    swap = accepted(tenant.account_id, contact_id,
                    {"custom_fields": {"k00": None, "more": "m" * 1000}})
    outcomes, events = run(writer, [swap])
    assert [o.status for o in outcomes] == ["applied"] and len(events) == 1


def test_nulls_for_keys_a_contact_lacks_leave_bounded_sequences(
    db: Database, writer: Database
) -> None:
    tenant = make_tenant(db, "acme")
    contact_id = make_contact(db, tenant.account_id, custom_fields={"plan": "pro"})
    nulls = [  # ten PUTs of a hundred 64-character keys, none of which the contact has
        accepted(tenant.account_id, contact_id,
                 {"custom_fields": {f"{n}-{i}".ljust(64, "x"): None for i in range(100)}})
        for n in range(10)
    ]
    for update in nulls:
        outcomes, events = run(writer, [update])
        assert [o.status for o in outcomes] == ["noop"] and events == []
    after = contact(db, contact_id)
    assert after["custom_fields"] == {"plan": "pro"}
    assert len(after["field_seqs"]) <= MAX_MARKERS + 1
    assert len(orjson.dumps(after["field_seqs"])) < 10_000  # was about 90 KB: one per null
    # the newest nulls still block an older write of their key
    late = accepted(tenant.account_id, contact_id,
                    {"custom_fields": {"9-0".ljust(64, "x"): 1}}, seq=nulls[-1].seq - 1)
    outcomes, _ = run(writer, [late])
    assert [o.status for o in outcomes] == ["noop"]


def test_event_payload(db: Database, writer: Database) -> None:
    tenant = make_tenant(db, "acme")
    contact_id = make_contact(
        db, tenant.account_id, email="john@example.com", position="Engineer", tags=["old"],
        custom_fields={"plan": "free", "drop": True},
    )
    update = accepted(
        tenant.account_id, contact_id,
        {
            "position": "VP", "tags": ["hot", "vip"],
            "custom_fields": {"plan": "pro", "drop": None, "seats": 10},
        },
    )
    now = utcnow() + timedelta(seconds=5)
    with writer.unit_of_work() as session:
        mark = outbox_mark(session)
        (outcome,) = apply_batch(session, [update], now)
        rows = outbox_since(session, mark)
    assert len(rows) == 1
    event = orjson.loads(rows[0].payload)
    after = contact(db, contact_id)
    after.pop("field_seqs")
    assert rows[0].event_id == event["id"]
    assert event == {
        "id": "evt_" + update.update_id.removeprefix("upd_"),
        "type": "contact.updated",
        "account_id": tenant.account_id,
        "contact_id": contact_id,
        "update_id": update.update_id,
        "sequence": update.seq,
        "occurred_at": isoformat(now),
        "changes": {
            "position": {"old": "Engineer", "new": "VP"},
            "tags": {"old": ["old"], "new": ["hot", "vip"]},
            "custom_fields.plan": {"old": "free", "new": "pro"},
            "custom_fields.drop": {"old": True, "new": None},
            "custom_fields.seats": {"old": None, "new": 10},
        },
        "contact": after,
    }
    assert after["updated_at"] == isoformat(now)
    assert outcome.contact == after
    assert set(outcome.changed_fields) == set(event["changes"])


def test_parking_leaves_an_update_whose_commit_went_through_as_it_finished(
    db: Database, writer: Database
) -> None:
    # Its commit's answer was lost and the retries ran out: parked, it would read `failed`
    # though applied, and a replay would apply nothing.
    tenant = make_tenant(db, "acme")
    contact_id = make_contact(db, tenant.account_id)
    applied = accepted(tenant.account_id, contact_id, {"position": "CTO"})
    failed = accepted(tenant.account_id, contact_id, {"company": "Acme"})
    run(writer, [applied])
    error = {"code": "TRANSIENT_FAILURE", "message": "Failed after every retry."}
    with writer.unit_of_work() as session:
        now = utcnow()
        park(session, record_failures(session, [(applied, error), (failed, error)], now), now)
    found = records(db, [applied.update_id, failed.update_id])
    assert found[applied.update_id].status == "applied"
    assert found[failed.update_id].status == "failed"
    letters = dead_letters(db)
    assert failed.update_id in letters and applied.update_id not in letters


def test_a_batch_that_opens_its_transaction_rolls_back_as_one(
    db: Database, writer: Database
) -> None:
    # On PostgreSQL the batch's read pipeline sends the BEGIN itself (pg_batch._begins_here):
    # its writes must still be undone by the unit of work's rollback, and the connection must
    # go back to the pool as psycopg's autocommit had it.
    tenant = make_tenant(db, "acme")
    contact_id = make_contact(db, tenant.account_id, position="Before")
    update = accepted(tenant.account_id, contact_id, {"position": "After"})
    with pytest.raises(RuntimeError), writer.unit_of_work() as session:
        outcomes = apply_batch(session, [update], utcnow())  # written at once, not at COMMIT
        assert [o.status for o in outcomes] == ["applied"]
        raise RuntimeError("after the writes")
    assert records(db, [update.update_id]) == {}
    assert contact(db, contact_id)["position"] == "Before"
    with writer.engine.connect() as connection:
        driver = connection.connection.driver_connection
        assert getattr(driver, "autocommit", False) is False
    outcomes, _ = run(writer, [update])
    assert [o.status for o in outcomes] == ["applied"]
    assert contact(db, contact_id)["position"] == "After"


def test_a_second_transaction_on_the_same_connection_is_one_again(
    db: Database, writer: Database
) -> None:
    # The read pipeline's BEGIN leaves psycopg's autocommit on for its transaction; the next
    # transaction on the same connection, without a trip through the pool, must be whole.
    if writer.engine.dialect.name != "postgresql":
        pytest.skip("the read pipeline is PostgreSQL's")
    tenant = make_tenant(db, "acme")
    contact_id = make_contact(db, tenant.account_id, position="Before")
    with writer.engine.connect() as connection:
        connection.begin()  # as a unit of work's session begins before the batch reads
        locked, _, _ = pg_batch.read_locked(connection, [contact_id], [], [], [])
        assert [row.id for row in locked] == [contact_id]
        connection.commit()
        connection.begin()
        connection.execute(text("UPDATE contacts SET position = 'Undone' WHERE id = :id"),
                           {"id": contact_id})
        connection.rollback()
    assert contact(db, contact_id)["position"] == "Before"

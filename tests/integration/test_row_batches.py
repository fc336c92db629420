"""Many rows in one statement (contactsync/row_batches.py): every value arrives as it left,
on PostgreSQL (rows as one JSON array) and SQLite (executemany) alike."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError

from contactsync.db import Database
from contactsync.models import Contact, OutboxEvent, UpdateRecord
from contactsync.row_batches import RowInsert, RowUpdate
from contactsync.timeutil import as_utc
from tests.conftest import make_tenant

RECORD_COLUMNS = (
    "update_id", "account_id", "contact_id", "seq", "status", "received_at", "applied_at",
    "changed_fields", "error",
)
CONTACT_COLUMNS = ("name", "email", "company", "tags", "custom_fields", "field_seqs", "updated_at")
AWKWARD = "O'Brien \"Bob\" \\ 100% ✓ 名前 \u2028 ; DROP TABLE contacts; --"


def _record(index: int, **extra: Any) -> dict[str, Any]:
    return {
        "update_id": f"upd_{index:04d}", "account_id": "acc_x", "contact_id": f"cnt_{index}",
        "seq": 9_007_199_254_740_991 - index, "status": "applied",
        "received_at": datetime(2026, 11, 27, 3, 54, 0, 123456, tzinfo=UTC),
        "applied_at": None, "changed_fields": ["name", "custom_fields.k"], "error": None,
        **extra,
    }


def test_inserted_rows_read_back_equal(db: Database) -> None:
    rows = [
        _record(0, error={"code": "NOT_FOUND", "message": AWKWARD}),
        _record(1, contact_id=AWKWARD[:64], changed_fields=[]),
        _record(2, applied_at=datetime(2026, 1, 1, tzinfo=UTC)),
    ]
    with db.unit_of_work() as session:
        RowInsert(UpdateRecord.__table__, RECORD_COLUMNS).run(session.connection(), rows)
    with db.reading() as session:
        stored = {r.update_id: r for r in session.scalars(select(UpdateRecord))}
    assert sorted(stored) == ["upd_0000", "upd_0001", "upd_0002"]
    for row in rows:
        got = stored[row["update_id"]]
        assert got.contact_id == row["contact_id"]
        assert got.seq == row["seq"]
        assert as_utc(got.received_at) == row["received_at"]
        assert (got.applied_at and as_utc(got.applied_at)) == row["applied_at"]
        assert got.changed_fields == row["changed_fields"]
        assert got.error == row["error"]


def test_serial_ids_follow_the_order_of_the_rows(db: Database) -> None:
    rows = [
        {"event_id": f"evt_{9 - i}", "payload": f'{{"n": {i}}}',
         "created_at": datetime(2026, 11, 27, tzinfo=UTC)}
        for i in range(10)
    ]
    # Read inside the writing transaction: a running worker's relay (another test's stack, on
    # the same database) publishes and deletes committed outbox rows.
    with db.unit_of_work() as session:
        RowInsert(OutboxEvent.__table__, ("event_id", "payload", "created_at")).run(
            session.connection(), rows
        )
        stored = session.execute(select(OutboxEvent.event_id).order_by(OutboxEvent.id)).all()
    assert [e for (e,) in stored] == [r["event_id"] for r in rows]


def test_updated_rows_change_only_their_own_columns(db: Database) -> None:
    tenant = make_tenant(db, "rows")
    with db.unit_of_work() as session:
        for i in range(3):
            session.add(Contact(
                id=f"cnt_{i}", account_id=tenant.account_id, name=f"Before {i}", email=None,
                phone="+1 555", company=None, position=None, source="other", linkedin_url=None,
                tags=[], custom_fields={}, field_seqs={},
                created_at=datetime(2026, 1, 1, tzinfo=UTC),
                updated_at=datetime(2026, 1, 1, tzinfo=UTC),
            ))
    later = datetime(2026, 11, 27, 3, 54, 0, 654321, tzinfo=UTC)
    changes = [
        {"locked_id": "cnt_0", "name": AWKWARD, "email": "a@example.com", "company": None,
         "tags": ["vip", AWKWARD], "custom_fields": {"score": 1.5, "big": 9_007_199_254_740_991,
                                                   "ok": True, "nested?": "no"},
         "field_seqs": {"name": 7, "custom_fields.score": 8}, "updated_at": later},
        {"locked_id": "cnt_2", "name": "After 2", "email": None, "company": "Acme",
         "tags": [], "custom_fields": {}, "field_seqs": {"company": 9}, "updated_at": later},
    ]
    with db.unit_of_work() as session:
        RowUpdate(Contact.__table__, "id", "locked_id", CONTACT_COLUMNS).run(
            session.connection(), changes
        )
    with db.reading() as session:
        stored = {c.id: c for c in session.scalars(select(Contact))}
    for change in changes:
        got = stored[change["locked_id"]]
        for column in CONTACT_COLUMNS:
            value = getattr(got, column)
            assert (as_utc(value) if column == "updated_at" else value) == change[column]
        assert got.phone == "+1 555"  # not among the columns: untouched
    assert stored["cnt_1"].name == "Before 1"  # not among the rows: untouched


def test_a_value_too_long_for_its_column_fails_the_statement(db: Database, backend: str) -> None:
    # As executemany would: the caller's fallback then applies the batch one by one.
    if backend == "sqlite":
        pytest.skip("SQLite does not enforce VARCHAR lengths")
    with pytest.raises(DBAPIError), db.unit_of_work() as session:
        RowInsert(UpdateRecord.__table__, RECORD_COLUMNS).run(
            session.connection(), [_record(0, status="x" * 17)]
        )
    with db.reading() as session:
        assert session.scalars(select(UpdateRecord)).all() == []

"""Helpers for the apply and worker tests: accepted updates, queue messages, table reads."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from redis import Redis
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from contactsync import names
from contactsync.contacts import contact_to_dict
from contactsync.db import Database
from contactsync.ids import new_update_id
from contactsync.models import Contact, DeadLetter, OutboxEvent, UpdateRecord
from contactsync.queue.wire import queue_list_key, task_message
from contactsync.timeutil import isoformat, utcnow
from contactsync.updates import AcceptedUpdate

ORIGIN = "tests@integration"
_seqs = itertools.count(1_000)


def next_seq() -> int:
    """Return a sequence number higher than every one handed out before in this run."""
    return next(_seqs)


def accepted(
    account_id: str, contact_id: str, patch: dict[str, Any], *, seq: int | None = None,
    update_id: str | None = None, queue: str = names.UPDATES_QUEUE,
) -> AcceptedUpdate:
    """Return an update as the gateway would have accepted it."""
    return AcceptedUpdate(
        update_id=update_id or new_update_id(), account_id=account_id, contact_id=contact_id,
        seq=next_seq() if seq is None else seq, received_at=isoformat(utcnow()), patch=patch,
        queue=queue,
    )


def push(redis: Redis, updates: list[AcceptedUpdate], queue: str = names.UPDATES_QUEUE) -> bytes:
    """Store the bodies and queue one task message for `updates`, as the gateway does."""
    message = task_message(queue, updates, ORIGIN)
    with redis.pipeline(transaction=True) as pipe:
        for update in updates:
            pipe.set(names.update_body_key(update.update_id), update.to_json())
        pipe.lpush(queue_list_key(queue), message)
        pipe.execute()
    return message


def contact(db: Database, contact_id: str) -> dict[str, Any]:
    """Return a contact's public shape plus the sequences that wrote its fields."""
    with db.reading() as session:
        row = session.get(Contact, contact_id)
        assert row is not None
        return {**contact_to_dict(row), "field_seqs": dict(row.field_seqs)}


def records(db: Database, update_ids: list[str] | None = None) -> dict[str, UpdateRecord]:
    """Return update records by id (all of them, or those of `update_ids`)."""
    query = select(UpdateRecord)
    if update_ids is not None:
        query = query.where(UpdateRecord.update_id.in_(update_ids))
    with db.reading() as session:
        return {r.update_id: r for r in session.scalars(query)}


def dead_letters(db: Database) -> dict[str, DeadLetter]:
    with db.reading() as session:
        return {d.update_id: d for d in session.scalars(select(DeadLetter))}


def outbox_count(db: Database) -> int:
    with db.reading() as session:
        return int(session.scalar(select(func.count()).select_from(OutboxEvent)) or 0)


def outbox_mark(session: Session) -> int:
    """Return the highest outbox row id this transaction sees (rows after it are its own)."""
    return int(session.scalar(select(func.max(OutboxEvent.id))) or 0)


def outbox_since(session: Session, mark: int) -> list[OutboxEvent]:
    """Return the outbox rows this transaction wrote after `outbox_mark`.

    A worker's relay may be publishing (and deleting) committed rows meanwhile, so tests look
    only at the rows of their own, still open, transaction.
    """
    query = select(OutboxEvent).where(OutboxEvent.id > mark).order_by(OutboxEvent.id)
    return list(session.scalars(query))


@contextmanager
def commit_fails_once(db: Database) -> Iterator[None]:
    """Fail the next COMMIT that writes an update record, at the COMMIT itself (PostgreSQL).

    A deferred constraint trigger runs at commit; the sequence it counts with is not rolled
    back with the transaction, so only the first such commit fails (as a serialization
    failure: transient, as a connection dropped mid-commit is).
    """
    ddl = [
        "CREATE SEQUENCE commit_faults",
        """CREATE FUNCTION fail_first_commit() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF nextval('commit_faults') = 1 THEN
                RAISE EXCEPTION 'commit fault for a test' USING ERRCODE = '40001';
            END IF;
            RETURN NULL;
        END $$""",
        """CREATE CONSTRAINT TRIGGER fail_first_commit AFTER INSERT ON update_records
        DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION fail_first_commit()""",
    ]
    with db.unit_of_work() as session:
        for statement in ddl:
            session.execute(text(statement))
    try:
        yield
    finally:
        with db.unit_of_work() as session:
            session.execute(text("DROP TRIGGER fail_first_commit ON update_records"))
            session.execute(text("DROP FUNCTION fail_first_commit()"))
            session.execute(text("DROP SEQUENCE commit_faults"))

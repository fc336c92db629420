"""Apply a group of accepted updates in one transaction: merge, record, write the outbox."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import flag_modified

from contactsync import events
from contactsync.contacts import contact_to_dict, state_of, store_state
from contactsync.dead_letters import park
from contactsync.merge import CUSTOM_PREFIX, Change, merge
from contactsync.models import Contact, OutboxEvent, UpdateRecord
from contactsync.schemas import MAX_CUSTOM_FIELDS
from contactsync.timeutil import isoformat, parse_iso
from contactsync.updates import AcceptedUpdate

FINISHED = ("applied", "noop", "not_found")


@dataclass(frozen=True)
class Outcome:
    """What became of one update; `duplicate` marks one that an earlier delivery finished."""

    update: AcceptedUpdate
    status: str
    changes: dict[str, Change] = field(default_factory=dict)
    contact: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    duplicate: bool = False

    @property
    def changed_fields(self) -> list[str]:
        return list(self.changes)


def apply_batch(
    session: Session, updates: Sequence[AcceptedUpdate], now: datetime
) -> list[Outcome]:
    """Apply `updates` within the caller's transaction; return one outcome per distinct id."""
    unique = list({u.update_id: u for u in updates}.values())
    contact_ids = sorted({u.contact_id for u in unique})
    # Locking in id order keeps two workers with overlapping batches from deadlocking, and
    # holding the locks before reading update_records makes the duplicate check exact.
    rows = session.scalars(
        select(Contact).where(Contact.id.in_(contact_ids)).order_by(Contact.id).with_for_update()
    ).all()
    contacts = {row.id: row for row in rows}
    finished: dict[str, str] = {
        update_id: status
        for update_id, status in session.execute(
            select(UpdateRecord.update_id, UpdateRecord.status).where(
                UpdateRecord.update_id.in_([u.update_id for u in unique])
            )
        )
    }
    applied_at = isoformat(now)
    outcomes: list[Outcome] = []
    records: list[dict[str, Any]] = []
    outbox: list[dict[str, Any]] = []
    for update in sorted(unique, key=lambda u: u.seq):
        if finished.get(update.update_id) in FINISHED:
            contact = contacts.get(update.contact_id)
            current = contact_to_dict(contact) if contact is not None else None
            status = str(finished[update.update_id])
            outcomes.append(Outcome(update, status, contact=current, duplicate=True))
            continue
        outcome = _apply_one(contacts, update, now)
        outcomes.append(outcome)
        records.append(_record(update, outcome, now))
        if outcome.status == "applied" and outcome.contact is not None:
            event = events.contact_updated(update, outcome.changes, outcome.contact, applied_at)
            payload = orjson.dumps(event).decode()
            outbox.append({"event_id": event["id"], "payload": payload, "created_at": now})
    retried = [r["update_id"] for r in records if r["update_id"] in finished]
    if retried:  # a replayed dead letter replaces its `failed` record
        session.execute(delete(UpdateRecord).where(UpdateRecord.update_id.in_(retried)))
    if records:
        session.execute(insert(UpdateRecord), records)
    if outbox:
        session.execute(insert(OutboxEvent), outbox)
    # An update the rule refused (too many custom fields) is parked with its record, so that
    # `dead-letters replay` can queue it again once the contact has room.
    refused = [(o.update, o.error) for o in outcomes if o.status == "failed" and o.error]
    if refused:
        park(session, refused, now)
    return outcomes


def _apply_one(
    contacts: dict[str, Contact], update: AcceptedUpdate, now: datetime
) -> Outcome:
    contact = contacts.get(update.contact_id)
    if contact is None or contact.account_id != update.account_id:
        error = {"code": "NOT_FOUND", "message": "Contact not found."}
        return Outcome(update, "not_found", error=error)
    result = merge(state_of(contact), update.patch, update.seq)
    if len(result.state.custom_fields) > MAX_CUSTOM_FIELDS:
        error = {
            "code": "VALIDATION_ERROR",
            "message": f"A contact holds at most {MAX_CUSTOM_FIELDS} custom fields.",
        }
        return Outcome(update, "failed", contact=contact_to_dict(contact), error=error)
    store_state(contact, result.state)
    if any(name.startswith(CUSTOM_PREFIX) for name in result.changes):
        # SQLAlchemy writes a JSON column only if the new value is not == the old one, and
        # Python has 1 == True == 1.0: a change between those would be reported, not stored.
        flag_modified(contact, "custom_fields")
    if not result.changes:
        return Outcome(update, "noop", contact=contact_to_dict(contact))
    contact.updated_at = now
    return Outcome(update, "applied", result.changes, contact_to_dict(contact))


def _record(update: AcceptedUpdate, outcome: Outcome, now: datetime) -> dict[str, Any]:
    return {
        "update_id": update.update_id,
        "account_id": update.account_id,
        "contact_id": update.contact_id,
        "seq": update.seq,
        "status": outcome.status,
        "received_at": parse_iso(update.received_at),
        "applied_at": now,
        "changed_fields": outcome.changed_fields,
        "error": outcome.error,
    }


def record_failures(
    session: Session, failures: Sequence[tuple[AcceptedUpdate, dict[str, str]]], now: datetime
) -> None:
    """Record updates that ended `failed` (the caller parks them as dead letters too)."""
    ids = [u.update_id for u, _ in failures]
    session.execute(delete(UpdateRecord).where(UpdateRecord.update_id.in_(ids)))
    session.execute(
        insert(UpdateRecord),
        [_record(u, Outcome(u, "failed", error=err), now) for u, err in failures],
    )

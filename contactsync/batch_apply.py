"""Apply a group of accepted updates in one transaction: find or create an upsert's contact,
merge, claim identities, record, write the outbox."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Table, bindparam, delete, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from contactsync import events, pg_batch
from contactsync.contacts import locked_views
from contactsync.errors import TransientFailure
from contactsync.identities import MAX_EXTERNAL_SYSTEMS
from contactsync.identity_store import IdentityBook, is_identity_race, may_touch_identities
from contactsync.merge import SCALAR_FIELDS, Change, ContactState, merge
from contactsync.models import Contact, OutboxEvent, UpdateRecord
from contactsync.row_batches import RowInsert, RowUpdate
from contactsync.schemas import MAX_CUSTOM_FIELDS, MAX_CUSTOM_FIELDS_BYTES, custom_fields_bytes
from contactsync.timeutil import isoformat, parse_iso
from contactsync.updates import AcceptedUpdate
from contactsync.upserts import blank_public, blank_state, created_row, match_keys

FINISHED = ("applied", "noop", "not_found", "conflict", "created")

# Built once: a statement built per batch costs more to construct and to key for SQLAlchemy's
# compiled cache than to run. All run on the session's connection, beneath the ORM.
CONTACTS: Table = Contact.__table__  # type: ignore[assignment]
RECORDS: Table = UpdateRecord.__table__  # type: ignore[assignment]
OUTBOX: Table = OutboxEvent.__table__  # type: ignore[assignment]
_LOCK_CONTACTS = (
    select(CONTACTS).where(CONTACTS.c.id.in_(bindparam("ids", expanding=True)))
    .order_by(CONTACTS.c.id).with_for_update()
)
_FINISHED = select(
    RECORDS.c.update_id, RECORDS.c.status, RECORDS.c.error, RECORDS.c.contact_id
).where(
    RECORDS.c.update_id.in_(bindparam("ids", expanding=True))
)
_UPDATE_CONTACTS = RowUpdate(
    CONTACTS, "id", "locked_id",
    (*SCALAR_FIELDS, "tags", "custom_fields", "external_ids", "field_seqs", "updated_at"),
)
_DELETE_RECORDS = delete(RECORDS).where(RECORDS.c.update_id.in_(bindparam("ids", expanding=True)))
_INSERT_RECORDS = RowInsert(RECORDS, (
    "update_id", "account_id", "contact_id", "seq", "status", "received_at", "applied_at",
    "changed_fields", "error",
))
_INSERT_EVENTS = RowInsert(OUTBOX, ("event_id", "payload", "created_at"))
_INSERT_CONTACTS = RowInsert(CONTACTS, (
    "id", "account_id", *SCALAR_FIELDS, "source", "tags", "custom_fields", "external_ids",
    "field_seqs", "created_at", "updated_at",
))
_NAME_REQUIRED = {
    "code": "VALIDATION_ERROR", "message": "No contact matched, and creating one needs a name.",
    "details": {"fields": {"name": "Required when the upsert creates a contact."}},
}


class IdentityMoved(TransientFailure):
    """An identity an upsert is matched on is held by a contact the batch did not lock: it
    moved between the look-up and the lock. Applying again looks it up afresh (at once, then
    as any transient failure)."""


def must_apply_again(exc: BaseException) -> bool:
    """Tell whether a concurrent write beat this batch's look-up: the identity index refused a
    second holder, a concurrent delivery of an upsert made its contact first, or an identity
    moved. Applying again at once reads what they committed."""
    if isinstance(exc, IdentityMoved) or is_identity_race(exc):
        return True
    return isinstance(exc, IntegrityError) and any(
        name in str(exc.orig) for name in ("contacts_pkey", "contacts.id")
    )


@dataclass(frozen=True)
class Outcome:
    """What became of one update; `duplicate` marks one that an earlier delivery finished."""

    update: AcceptedUpdate
    status: str
    changes: dict[str, Change] = field(default_factory=dict)
    contact: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    duplicate: bool = False

    @property
    def changed_fields(self) -> list[str]:
        return list(self.changes)


@dataclass
class _Locked:
    """A contact row locked for the batch, as the updates before the current one left it."""

    account_id: str
    state: ContactState
    public: dict[str, Any]  # the seed's shape
    updated_at: datetime
    dirty: bool = False
    created: bool = False  # made by an upsert of this batch: inserted, not updated


def apply_batch(
    session: Session, updates: Sequence[AcceptedUpdate], now: datetime, *,
    with_commit: bool = False,
) -> list[Outcome]:
    """Apply `updates` within the caller's transaction; return one outcome per distinct id.

    `with_commit`: on PostgreSQL the batch's writes go with the COMMIT of the caller's unit of
    work (one round trip less), so the caller must not read them before it commits.

    Core statements, not ORM objects: a batch is a few set-based statements whatever its size
    (lock, look up records, update contacts, insert records and events), and the ORM's
    per-object bookkeeping would cost more than the merge itself.
    """
    unique = list({u.update_id: u for u in updates}.values())
    connection = session.connection()
    contact_ids = sorted({u.contact_id for u in unique} | _matched(connection, unique))
    if connection.dialect.name == "postgresql":
        rows, rows_finished, book = _read_pg(connection, contact_ids, unique)
    else:
        rows, rows_finished, book = _read(connection, contact_ids, unique)
    contacts = {row.id: _locked(row) for row in rows}
    finished: dict[str, str] = {row.update_id: row.status for row in rows_finished}
    # A redelivered conflict answers a waiting gateway with the holder, as the first did.
    errors: dict[str, dict[str, Any] | None] = {row.update_id: row.error for row in rows_finished}
    # An upsert's record names the contact it found or made.
    recorded: dict[str, str] = {row.update_id: row.contact_id for row in rows_finished}
    applied_at = isoformat(now)
    outcomes: list[Outcome] = []
    records: list[dict[str, Any]] = []
    outbox: list[dict[str, Any]] = []
    for accepted in sorted(unique, key=lambda u: u.seq):
        if finished.get(accepted.update_id) in FINISHED:
            accepted = replace(accepted, contact_id=recorded[accepted.update_id])
            locked = contacts.get(accepted.contact_id)
            # Another account's contact (a `not_found` delivered again) is never answered.
            mine = locked is not None and locked.account_id == accepted.account_id
            current = dict(locked.public) if locked is not None and mine else None
            status = str(finished[accepted.update_id])
            outcomes.append(Outcome(
                accepted, status, contact=current, error=errors[accepted.update_id],
                duplicate=True,
            ))
            continue
        if accepted.match_on is not None:
            accepted = _resolve(contacts, book, accepted)
        outcome = _apply_one(contacts, book, accepted, now, applied_at)
        outcomes.append(outcome)
        records.append(_record(accepted, outcome, now))
        if outcome.status in ("applied", "created") and outcome.contact is not None:
            kind = events.CONTACT_CREATED if outcome.status == "created" else events.CONTACT_UPDATED
            event = events.contact_updated(
                accepted, outcome.changes, outcome.contact, applied_at, kind
            )
            payload = orjson.dumps(event).decode()
            outbox.append({"event_id": event["id"], "payload": payload, "created_at": now})
    updated = [
        _row_values(contact_id, c) for contact_id, c in contacts.items()
        if c.dirty and not c.created
    ]
    created = [
        created_row(contact_id, c.account_id, c.public, c.state, now, c.updated_at)
        for contact_id, c in contacts.items() if c.created
    ]
    # A replayed dead letter replaces its `failed` record.
    replaced = [r["update_id"] for r in records if r["update_id"] in finished]
    if connection.dialect.name == "postgresql":
        released, claimed = book.changes()
        pg_batch.write_batch(
            session, updated=updated, created=created, released=released, claimed=claimed,
            replaced=replaced, records=records, events=outbox, with_commit=with_commit,
        )
    else:
        _UPDATE_CONTACTS.run(connection, updated)
        _INSERT_CONTACTS.run(connection, created)  # before their identities, which refer to them
        book.write(connection)
        if replaced:
            connection.execute(_DELETE_RECORDS, {"ids": replaced})
        _INSERT_RECORDS.run(connection, records)
        _INSERT_EVENTS.run(connection, outbox)
    # The worker parks what the rule refused (`failed`) in this transaction (tasks/parking.py).
    return outcomes


def _locked(row: Any) -> _Locked:
    state, public = locked_views(row)
    return _Locked(row.account_id, state, public, row.updated_at)


def _read(
    connection: Any, contact_ids: list[str], unique: list[AcceptedUpdate]
) -> tuple[list[Any], list[Any], IdentityBook]:
    """Lock the contacts, then read the records and the identities the batch may touch."""
    # Locking in id order keeps two workers with overlapping batches from deadlocking, and
    # holding the locks before reading update_records makes the duplicate check exact.
    rows = connection.execute(_LOCK_CONTACTS, {"ids": contact_ids}).all()
    rows_finished = connection.execute(
        _FINISHED, {"ids": [u.update_id for u in unique]}
    ).all()
    finished = {row.update_id for row in rows_finished if row.status in FINISHED}
    pending = [u for u in unique if u.update_id not in finished]
    if not _touches_identities(pending):
        return rows, rows_finished, IdentityBook([])
    book = IdentityBook.load(
        connection, [row.id for row in rows], [(u.account_id, u.patch) for u in pending]
    )
    return rows, rows_finished, book


def _read_pg(
    connection: Any, contact_ids: list[str], unique: list[AcceptedUpdate]
) -> tuple[list[Any], list[Any], IdentityBook]:
    """`_read` in one round trip: the identities of every update, finished or not (a finished
    one's only add rows the book leaves as they are)."""
    identities = _touches_identities(unique)
    accounts, keys = (
        IdentityBook.wanted((u.account_id, u.patch) for u in unique) if identities else ([], [])
    )
    rows, rows_finished, held = pg_batch.read_locked(
        connection, contact_ids, [u.update_id for u in unique], accounts, keys,
        identities=identities,
    )
    return rows, rows_finished, IdentityBook(held)


def _touches_identities(updates: list[AcceptedUpdate]) -> bool:
    # Most updates name no identity (a position, a tag): their batch's book stays empty, and
    # its claims and writes are then none (a lone update: one statement of four less).
    return any(may_touch_identities(u.patch, u.match_on is not None) for u in updates)


def _matched(connection: Any, updates: list[AcceptedUpdate]) -> set[str]:
    """Return the contacts that hold an identity an upsert of `updates` names: locked with the
    batch's others, so that what the look-up found cannot move before the write."""
    upserts = [(u.account_id, u.patch) for u in updates if u.match_on is not None]
    if not upserts:
        return set()
    return IdentityBook.load(connection, [], upserts).contact_ids()


def _resolve(
    contacts: dict[str, _Locked], book: IdentityBook, update: AcceptedUpdate
) -> AcceptedUpdate:
    """Return the upsert aimed at the contact its first matching identity finds; as it is
    (aimed at the contact it would create) when none finds one."""
    assert update.match_on is not None
    for key in match_keys(update.match_on, update.patch):
        holder = book.holder(update.account_id, key)
        if holder is not None:
            if holder not in contacts:
                raise IdentityMoved(update.update_id)
            return replace(update, contact_id=holder)
    return update


def _row_values(contact_id: str, locked: _Locked) -> dict[str, Any]:
    state = locked.state
    return {
        "locked_id": contact_id, **state.fields, "tags": list(state.tags),
        "custom_fields": dict(state.custom_fields), "external_ids": dict(state.external_ids),
        "field_seqs": dict(state.field_seqs), "updated_at": locked.updated_at,
    }


def _apply_one(
    contacts: dict[str, _Locked], book: IdentityBook, update: AcceptedUpdate, now: datetime,
    applied_at: str,
) -> Outcome:
    locked = contacts.get(update.contact_id)
    creating = locked is None and update.match_on is not None
    if creating:  # an upsert that found no contact: it makes the one its id names
        if not isinstance(update.patch.get("name"), str):
            return Outcome(update, "failed", error=_NAME_REQUIRED)
        public = blank_public(update.contact_id, update.patch, applied_at)
        locked = _Locked(update.account_id, blank_state(), public, now, created=True)
    if locked is None or locked.account_id != update.account_id:
        error = {"code": "NOT_FOUND", "message": "Contact not found."}
        return Outcome(update, "not_found", error=error)
    current = None if creating else dict(locked.public)
    result = merge(locked.state, update.patch, update.seq)
    touches_custom = "custom_fields" in update.patch
    refusal = _too_much_custom(locked.state, result.state) if touches_custom else None
    if refusal:
        error = {"code": "VALIDATION_ERROR", "message": refusal}
        return Outcome(update, "failed", contact=current, error=error)
    if len(result.state.external_ids) > MAX_EXTERNAL_SYSTEMS:
        message = f"A contact holds at most {MAX_EXTERNAL_SYSTEMS} external ids."
        too_many = {"code": "VALIDATION_ERROR", "message": message,
                    "details": {"fields": {"external_ids": message}}}
        return Outcome(update, "failed", contact=current, error=too_many)
    conflict = book.claim(update.account_id, update.contact_id, result.changes)
    if conflict is not None:  # changes nothing, not even the sequences; creates nothing
        return Outcome(update, "conflict", contact=current, error=conflict)
    if creating:
        contacts[update.contact_id] = locked
    if result.state != locked.state:  # values, or only the sequences that wrote them
        locked.state = result.state
        locked.dirty = True
    if not result.changes:
        return Outcome(update, "noop", contact=dict(locked.public))
    locked.updated_at = now
    changes = result.changes
    if creating:  # every field set, from nothing (tags too, not from `[]`)
        changes = {name: Change(None, c.new) for name, c in changes.items()}
    locked.public = {
        **locked.public, **result.state.fields, "tags": list(result.state.tags),
        "custom_fields": dict(result.state.custom_fields),
        "external_ids": dict(result.state.external_ids), "updated_at": applied_at,
    }
    return Outcome(update, "created" if creating else "applied", changes, dict(locked.public))


def _too_much_custom(before: ContactState, after: ContactState) -> str | None:
    """Say why the custom fields `after` an update are more than a contact may hold, if so."""
    if len(after.custom_fields) > MAX_CUSTOM_FIELDS:
        return f"A contact holds at most {MAX_CUSTOM_FIELDS} custom fields."
    size = custom_fields_bytes(dict(after.custom_fields))
    # Only growth past the bound is refused: a contact stored over it before the bound existed
    # can still be trimmed.
    if size > MAX_CUSTOM_FIELDS_BYTES and size > custom_fields_bytes(dict(before.custom_fields)):
        return (f"A contact's custom fields hold at most {MAX_CUSTOM_FIELDS_BYTES} bytes "
                "as compact JSON.")
    return None


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
) -> list[tuple[AcceptedUpdate, dict[str, str]]]:
    """Record updates that ended `failed`; return those recorded (the caller parks them).

    One already finished keeps its record: its commit went through though its answer was lost
    (the retries that followed ran out), and it must not read `failed` nor be replayed.
    """
    ids = [u.update_id for u, _ in failures]
    done = set(session.scalars(select(UpdateRecord.update_id).where(
        UpdateRecord.update_id.in_(ids), UpdateRecord.status.in_(FINISHED),
    )))
    failures = [(u, err) for u, err in failures if u.update_id not in done]
    if failures:
        session.execute(delete(UpdateRecord).where(
            UpdateRecord.update_id.in_([u.update_id for u, _ in failures])
        ))
        session.execute(
            insert(UpdateRecord),
            [_record(u, Outcome(u, "failed", error=err), now) for u, err in failures],
        )
    return failures

"""Contacts: the public shape of a row, creation, and lookup within one account."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson
from sqlalchemy import Row, select
from sqlalchemy.orm import Session

from contactsync import events
from contactsync.errors import Conflict
from contactsync.identities import identities_of
from contactsync.identity_store import (
    conflict_error,
    holder_of,
    insert_identities,
    is_identity_race,
)
from contactsync.ids import new_contact_id
from contactsync.merge import SCALAR_FIELDS, Change, ContactState
from contactsync.models import Contact, OutboxEvent
from contactsync.timeutil import isoformat, utcnow


def contact_to_dict(contact: Contact | Row[Any]) -> dict[str, Any]:
    """Return the seed's contact shape for a row."""
    return _public(
        contact, list(contact.tags), dict(contact.custom_fields),
        dict(contact.external_ids or {}), isoformat(contact.created_at),
        isoformat(contact.updated_at),
    )


def state_of(contact: Contact | Row[Any]) -> ContactState:
    """Return the mergeable state of a row."""
    return _state(
        contact, tuple(contact.tags), dict(contact.custom_fields), dict(contact.field_seqs),
        dict(contact.external_ids or {}),
    )


def locked_views(row: Any) -> tuple[ContactState, dict[str, Any]]:
    """Return a row the worker locked as the merge reads it and in the seed's shape, sharing
    the JSON values the driver decoded rather than copying them: the worker changes neither in
    place (the merge copies what it changes, and the apply makes a new public shape). Two
    copies, with two times formatted in Python, cost 15 µs a row, a seventh of a bulk update's
    apply. PostgreSQL's locked rows carry their times formatted (`contactsync/pg_batch.py`),
    SQLite's do not."""
    tags, custom, external = row.tags, row.custom_fields, row.external_ids or {}
    created = getattr(row, "created_at_text", None) or isoformat(row.created_at)
    updated = getattr(row, "updated_at_text", None) or isoformat(row.updated_at)
    state = _state(row, tuple(tags), custom, row.field_seqs, external)
    return state, _public(row, tags, custom, external, created, updated)


def _public(
    contact: Any, tags: list[str], custom: dict[str, Any], external: dict[str, str],
    created_at: str, updated_at: str,
) -> dict[str, Any]:
    return {
        "id": contact.id,
        "name": contact.name,
        "email": contact.email,
        "phone": contact.phone,
        "company": contact.company,
        "position": contact.position,
        "source": contact.source,
        "linkedin_url": contact.linkedin_url,
        "tags": tags,
        "custom_fields": custom,
        "external_ids": external,
        "created_at": created_at,
        "updated_at": updated_at,
    }


def _state(
    contact: Any, tags: tuple[str, ...], custom: dict[str, Any], seqs: dict[str, int],
    external: dict[str, str],
) -> ContactState:
    fields = {
        "name": contact.name,
        "email": contact.email,
        "phone": contact.phone,
        "company": contact.company,
        "position": contact.position,
        "linkedin_url": contact.linkedin_url,
    }
    return ContactState(fields, tags, custom, seqs, external)


def get_contact(session: Session, account_id: str, contact_id: str) -> Contact | None:
    """Return one account's contact, or None: another account's contact is not found."""
    return session.scalar(
        select(Contact).where(Contact.id == contact_id, Contact.account_id == account_id)
    )


def delete_contact(session: Session, account_id: str, contact_id: str, now: datetime) -> bool:
    """Delete one account's contact and write its `contact.deleted` event; False if absent."""
    contact = session.scalar(
        select(Contact)
        .where(Contact.id == contact_id, Contact.account_id == account_id)
        .with_for_update()
    )
    if contact is None:
        return False
    event = events.contact_deleted(account_id, contact_to_dict(contact), isoformat(now))
    session.add(OutboxEvent(event_id=event["id"], payload=orjson.dumps(event).decode(),
                            created_at=now))
    session.delete(contact)
    return True


def create_contact(
    session: Session, account_id: str, fields: dict[str, Any], contact_id: str | None = None
) -> Contact:
    """Add a new contact and its identities; `fields` holds a validated creation body.

    Raises `Conflict` (nothing added) when another contact of the account holds one of its
    identities, whether found before the write or by the identity index during it.
    """
    now = utcnow()
    external_ids = {k: v for k, v in (fields.get("external_ids") or {}).items() if v is not None}
    contact = Contact(
        id=contact_id or new_contact_id(),
        account_id=account_id,
        name=fields["name"],
        email=fields.get("email"),
        phone=fields.get("phone"),
        company=fields.get("company"),
        position=fields.get("position"),
        source=fields.get("source", "other"),
        linkedin_url=fields.get("linkedin_url"),
        tags=list(fields.get("tags") or []),
        custom_fields={
            k: v for k, v in (fields.get("custom_fields") or {}).items() if v is not None
        },
        external_ids=external_ids,
        # Creation writes at sequence 0: any accepted update is newer.
        field_seqs={},
        created_at=now,
        updated_at=now,
    )
    _add_created_event(session, account_id, contact_to_dict(contact), now)
    identities = identities_of(fields, external_ids)
    if not identities:
        session.add(contact)
        return contact
    _refuse_taken(session, account_id, identities)
    try:
        with session.begin_nested():
            session.add(contact)
            session.flush()
            insert_identities(session.connection(), account_id, contact.id, identities)
    except Exception as exc:
        if not is_identity_race(exc):
            raise
        _refuse_taken(session, account_id, identities)  # the holder has committed by now
        raise
    return contact


def _add_created_event(
    session: Session, account_id: str, contact: dict[str, Any], now: datetime
) -> None:
    """Write the `contact.created` event of a new contact: every field set, `old` null."""
    changes = {name: Change(None, contact[name]) for name in SCALAR_FIELDS if contact[name]}
    if contact["tags"]:
        changes["tags"] = Change(None, contact["tags"])
    for prefix in ("custom_fields", "external_ids"):
        changes.update({f"{prefix}.{k}": Change(None, v) for k, v in contact[prefix].items()})
    event = events.contact_created(account_id, changes, contact, isoformat(now))
    session.add(OutboxEvent(event_id=event["id"], payload=orjson.dumps(event).decode(),
                            created_at=now))


def _refuse_taken(session: Session, account_id: str, identities: dict[str, str]) -> None:
    taken = holder_of(session.connection(), account_id, identities)
    if taken is not None:
        error = conflict_error(*taken)
        raise Conflict(error["message"], details=error["details"])

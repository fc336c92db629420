"""Change events: their shape, fixed per update so that redelivery never makes a second id."""

from __future__ import annotations

from typing import Any

from contactsync.ids import event_id_for, new_event_id
from contactsync.merge import Change
from contactsync.updates import AcceptedUpdate

CONTACT_UPDATED = "contact.updated"
CONTACT_DELETED = "contact.deleted"
CONTACT_CREATED = "contact.created"


def contact_updated(
    update: AcceptedUpdate, changes: dict[str, Change], contact: dict[str, Any], occurred_at: str,
    kind: str = CONTACT_UPDATED,
) -> dict[str, Any]:
    """Return the `contact.updated` event of one applied update (`contact.created` for an
    upsert that made the contact: `changes` then holds every field set, `old` null)."""
    return {
        "id": event_id_for(update.update_id),
        "type": kind,
        "account_id": update.account_id,
        "contact_id": contact["id"],
        "update_id": update.update_id,
        "sequence": update.seq,
        "occurred_at": occurred_at,
        "changes": {name: {"old": c.old, "new": c.new} for name, c in changes.items()},
        "contact": contact,
    }


def contact_created(
    account_id: str, changes: dict[str, Change], contact: dict[str, Any], occurred_at: str
) -> dict[str, Any]:
    """Return the `contact.created` event of a contact made by `POST /contacts`, which no
    update (and so no sequence) produced."""
    return {
        "id": new_event_id(),
        "type": CONTACT_CREATED,
        "account_id": account_id,
        "contact_id": contact["id"],
        "update_id": None,
        "sequence": None,
        "occurred_at": occurred_at,
        "changes": {name: {"old": c.old, "new": c.new} for name, c in changes.items()},
        "contact": contact,
    }


def contact_deleted(account_id: str, contact: dict[str, Any], occurred_at: str) -> dict[str, Any]:
    """Return the `contact.deleted` event, with the contact as it was."""
    return {
        "id": new_event_id(),
        "type": CONTACT_DELETED,
        "account_id": account_id,
        "contact_id": contact["id"],
        "occurred_at": occurred_at,
        "contact": contact,
    }

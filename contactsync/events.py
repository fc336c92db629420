"""Change events: their shape, fixed per update so that redelivery never makes a second id."""

from __future__ import annotations

from typing import Any

from contactsync.ids import event_id_for, new_event_id
from contactsync.merge import Change
from contactsync.updates import AcceptedUpdate

CONTACT_UPDATED = "contact.updated"
CONTACT_DELETED = "contact.deleted"


def contact_updated(
    update: AcceptedUpdate, changes: dict[str, Change], contact: dict[str, Any], occurred_at: str
) -> dict[str, Any]:
    """Return the `contact.updated` event of one applied update."""
    return {
        "id": event_id_for(update.update_id),
        "type": CONTACT_UPDATED,
        "account_id": update.account_id,
        "contact_id": update.contact_id,
        "update_id": update.update_id,
        "sequence": update.seq,
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

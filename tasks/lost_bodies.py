"""Updates whose stored body vanished from Redis before any worker recorded them.

A body is deleted only after its update is recorded, so a missing body with no record was
lost (evicted, deleted by hand). Its task message still names the update's account and
contact: the update is recorded `failed` where its account can read it. No dead letter is
made: without the body there is nothing to replay.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

from sqlalchemy import select

from contactsync import names
from contactsync.batch_apply import record_failures
from contactsync.models import UpdateRecord
from contactsync.timeutil import isoformat, utcnow
from contactsync.updates import AcceptedUpdate
from tasks.runtime import Runtime
from tasks.validation import ACCOUNT_ID, storable

log = logging.getLogger("contactsync.worker")

BODY_MISSING = {
    "code": "BODY_MISSING",
    "message": "The update's stored body was lost before it could be applied.",
}


def owners_of(update_ids: object, owners: object) -> dict[str, tuple[str, str]]:
    """Return update id to (account, contact) from a task's arguments (`owners_argument`),
    for each well-formed entry."""
    if not isinstance(owners, dict) or not isinstance(update_ids, list):
        return {}
    accounts, contacts = owners.get("accounts"), owners.get("contacts")
    if not isinstance(accounts, list) or not isinstance(contacts, list):
        return {}
    if len(contacts) != len(update_ids):
        return {}
    found = {}
    for update_id, entry in zip(update_ids, contacts, strict=True):
        if not (isinstance(update_id, str) and isinstance(entry, list) and len(entry) == 2):
            continue
        index, contact_id = entry
        if type(index) is not int or not 0 <= index < len(accounts):
            continue
        account_id = accounts[index]
        if isinstance(account_id, str) and ACCOUNT_ID.fullmatch(account_id) and isinstance(
            contact_id, str
        ):
            found[update_id] = (account_id, contact_id)
    return found


def lost_updates(
    runtime: Runtime, missing: Sequence[str], owners: dict[str, tuple[str, str]], queue: str
) -> list[AcceptedUpdate]:
    """Return those of the updates without a body that no delivery recorded, as far as the
    message knows them; the rest were finished by an earlier delivery."""
    known = [i for i in missing if i in owners]
    if not known:
        return []
    # Read after the bodies: a delivery that finished one recorded it before dropping its body.
    with runtime.db.reading() as session:
        query = select(UpdateRecord.update_id).where(UpdateRecord.update_id.in_(known))
        recorded = set(session.scalars(query))
    lost = [i for i in known if i not in recorded]
    if not lost:
        return []
    # The pending score is when the gateway accepted it (its sequence, in microseconds).
    scores = runtime.redis.zmscore(names.PENDING_KEY, lost)
    updates = []
    for update_id, score in zip(lost, scores, strict=True):
        when = datetime.fromtimestamp(score / 1e6, UTC) if score else utcnow()
        account_id, contact_id = owners[update_id]
        updates.append(AcceptedUpdate(
            update_id=update_id, account_id=account_id, contact_id=contact_id, seq=0,
            received_at=isoformat(when), patch={}, queue=queue,
        ))
    log.error("updates lost their stored body before they were applied: %s",
              ", ".join(u.update_id for u in updates))
    return updates


def record_lost(runtime: Runtime, updates: Sequence[AcceptedUpdate]) -> None:
    """Record each lost update `failed` (BODY_MISSING)."""
    with runtime.db.unit_of_work() as session:
        record_failures(session, [(storable(u), dict(BODY_MISSING)) for u in updates], utcnow())

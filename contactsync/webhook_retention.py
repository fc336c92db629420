"""How long webhook events and finished deliveries are kept: `webhook_event_retention_days`,
for replay and the deliveries list. Older ones are deleted in batches (a short transaction
each), by whichever relay holds the prune lock."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select, text
from sqlalchemy.orm import Session

from contactsync.db import Database
from contactsync.models import WebhookDelivery, WebhookEvent
from contactsync.settings import Settings
from contactsync.webhook_claims import PENDING

PRUNE_BATCH = 1000  # rows a transaction deletes
# One advisory lock between pruning events and replaying them (an arbitrary constant: the
# ASCII of "whev").
_EVENTS_LOCK = 0x77686576


def hold_events(session: Session, *, exclusive: bool = False) -> None:
    """Hold the kept events until the transaction ends: shared by a replay, which makes
    deliveries of old events pending again; exclusive by pruning, which deletes finished
    deliveries (a replay's upsert locks the same rows in another order: a deadlock) and the
    events no pending delivery waits for. Without it a prune could delete an event that a
    replay committing meanwhile had just made pending (its check of waiting deliveries reads
    a snapshot from before that commit), and that delivery, its contact's head, could never
    be sent. One key, whatever the account: replays are rare, and a prune's transaction takes
    milliseconds. On SQLite, where one transaction writes at a time, nothing to do."""
    if session.get_bind().dialect.name == "postgresql":
        function = "pg_advisory_xact_lock" if exclusive else "pg_advisory_xact_lock_shared"
        session.execute(text(f"SELECT {function}(:key)"), {"key": _EVENTS_LOCK})


def prune(db: Database, settings: Settings, now: datetime, max_batches: int = 20) -> int:
    """Delete finished deliveries (their attempts with them) and events past the retention;
    return how many rows went. An event a delivery still waits to send stays."""
    cutoff = now - timedelta(days=settings.webhook_event_retention_days)
    removed = 0
    for _ in range(max_batches):
        with db.unit_of_work() as session:
            # After a replay in progress, whose upsert locks these rows in another order.
            hold_events(session, exclusive=True)
            ids = finished_before(session, cutoff)
            delete_finished(session, ids, cutoff)
        removed += len(ids)
        if len(ids) < PRUNE_BATCH:
            break
    waiting = select(WebhookDelivery.id).where(
        WebhookDelivery.event_id == WebhookEvent.event_id, WebhookDelivery.status == PENDING
    ).exists()
    for _ in range(max_batches):
        with db.unit_of_work() as session:
            hold_events(session, exclusive=True)
            event_ids = list(session.scalars(
                select(WebhookEvent.event_id)
                .where(WebhookEvent.occurred_at < cutoff, ~waiting).limit(PRUNE_BATCH)
            ))
            if event_ids:
                session.execute(delete(WebhookEvent).where(
                    WebhookEvent.event_id.in_(event_ids), ~waiting))
        removed += len(event_ids)
        if len(event_ids) < PRUNE_BATCH:
            break
    return removed


def finished_before(session: Session, cutoff: datetime) -> list[int]:
    """Return the ids of a batch of finished deliveries made before `cutoff`."""
    return list(session.scalars(
        select(WebhookDelivery.id)
        .where(WebhookDelivery.status != PENDING, WebhookDelivery.created_at < cutoff)
        .limit(PRUNE_BATCH)
    ))


def delete_finished(session: Session, ids: list[int], cutoff: datetime) -> None:
    """Delete the deliveries `ids` that are still finished and made before `cutoff`.

    Checked again in the DELETE, which PostgreSQL re-checks on a row changed since it was
    read: a replay may have made one pending meanwhile, its contact's head, and the next
    delivery parked behind it would then wait for a head that is gone.
    """
    if ids:
        session.execute(delete(WebhookDelivery).where(
            WebhookDelivery.id.in_(ids), WebhookDelivery.status != PENDING,
            WebhookDelivery.created_at < cutoff,
        ))

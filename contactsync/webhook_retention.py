"""How long webhook events and finished deliveries are kept: `webhook_event_retention_days`,
for replay and the deliveries list. Older ones are deleted in batches (a short transaction
each), by whichever relay holds the prune lock."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, select

from contactsync.db import Database
from contactsync.models import WebhookDelivery, WebhookEvent
from contactsync.settings import Settings
from contactsync.webhook_claims import PENDING

PRUNE_BATCH = 1000  # rows a transaction deletes


def prune(db: Database, settings: Settings, now: datetime, max_batches: int = 20) -> int:
    """Delete finished deliveries (their attempts with them) and events past the retention;
    return how many rows went. An event a delivery still waits to send stays."""
    cutoff = now - timedelta(days=settings.webhook_event_retention_days)
    removed = 0
    for _ in range(max_batches):
        with db.unit_of_work() as session:
            ids = list(session.scalars(
                select(WebhookDelivery.id)
                .where(WebhookDelivery.status != PENDING, WebhookDelivery.created_at < cutoff)
                .limit(PRUNE_BATCH)
            ))
            if ids:
                session.execute(delete(WebhookDelivery).where(WebhookDelivery.id.in_(ids)))
        removed += len(ids)
        if len(ids) < PRUNE_BATCH:
            break
    waiting = select(WebhookDelivery.id).where(
        WebhookDelivery.event_id == WebhookEvent.event_id, WebhookDelivery.status == PENDING
    ).exists()
    for _ in range(max_batches):
        with db.unit_of_work() as session:
            event_ids = list(session.scalars(
                select(WebhookEvent.event_id)
                .where(WebhookEvent.occurred_at < cutoff, ~waiting).limit(PRUNE_BATCH)
            ))
            if event_ids:
                session.execute(delete(WebhookEvent).where(WebhookEvent.event_id.in_(event_ids)))
        removed += len(event_ids)
        if len(event_ids) < PRUNE_BATCH:
            break
    return removed

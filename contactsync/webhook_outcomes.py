"""What a delivery attempt leaves behind: the attempt's record, the delivery's state (done,
retried later, or finally failed), and the endpoint's (failing since when, disabled)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Table, select, update
from sqlalchemy.orm import Session

from contactsync.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint
from contactsync.row_batches import RowInsert, RowUpdate
from contactsync.settings import Settings
from contactsync.timeutil import as_utc, isoformat
from contactsync.webhook_claims import (
    FAILED,
    PENDING,
    SUCCEEDED,
    park_followers,
    promote_heads,
)

log = logging.getLogger("contactsync.webhooks")

_ATTEMPTS: Table = WebhookAttempt.__table__  # type: ignore[assignment]
_DELIVERIES: Table = WebhookDelivery.__table__  # type: ignore[assignment]
_INSERT_ATTEMPTS = RowInsert(_ATTEMPTS, [
    "delivery_id", "endpoint_id", "event_id", "attempted_at", "status_code", "duration_ms",
    "error",
])
_UPDATE_DELIVERIES = RowUpdate(_DELIVERIES, "id", "delivery_id", [
    "status", "attempts", "next_attempt_at", "finished_at", "first_attempt_at", "claim_token",
    "claimed_until",
])
ERROR_MAX = 300  # the attempts table's column


@dataclass(frozen=True)
class Result:
    """One attempt: what came back (a status code, or an error in plain words), how long it
    took, and when to try again should it have failed."""

    delivery_id: int
    event_id: str
    attempted_at: datetime
    duration_ms: int
    status_code: int | None
    error: str | None
    retry_at: datetime

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and (
            200 <= self.status_code < 300)


@dataclass
class Recorded:
    """What recording a task's attempts did, for its metrics and log lines."""

    succeeded: list[Result] = field(default_factory=list)
    retried: list[Result] = field(default_factory=list)
    failed: list[Result] = field(default_factory=list)
    disabled_reason: str | None = None


def record_results(
    session: Session, endpoint_id: str, token: str, results: list[Result], settings: Settings,
    now: datetime,
) -> Recorded:
    """Record the attempts of one task's claim and what follows from them."""
    # Exclusive: a finished head promotes the next (`lock_endpoints`).
    endpoint = session.execute(
        select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id).with_for_update()
    ).scalar_one_or_none()
    held = {row.id: row for row in session.execute(
        select(WebhookDelivery.id, WebhookDelivery.contact_id, WebhookDelivery.attempts,
               WebhookDelivery.first_attempt_at)
        .where(WebhookDelivery.id.in_([r.delivery_id for r in results]),
               WebhookDelivery.claim_token == token, WebhookDelivery.status == PENDING)
        .with_for_update()
    )}
    results = [r for r in results if r.delivery_id in held]
    recorded = Recorded()
    if endpoint is None or not results:
        return recorded
    give_up_after = timedelta(seconds=settings.webhook_retry_for_seconds)
    changes: list[dict[str, Any]] = []
    for result in results:
        row = held[result.delivery_id]
        first = as_utc(row.first_attempt_at) if row.first_attempt_at else result.attempted_at
        change = {
            "delivery_id": result.delivery_id, "attempts": row.attempts + 1,
            "first_attempt_at": first, "claim_token": None, "claimed_until": None,
            "status": PENDING, "next_attempt_at": result.retry_at, "finished_at": None,
        }
        if result.ok:
            change.update(status=SUCCEEDED, next_attempt_at=now, finished_at=now)
            recorded.succeeded.append(result)
        elif now - first >= give_up_after:
            change.update(status=FAILED, next_attempt_at=now, finished_at=now)
            recorded.failed.append(result)
        else:
            recorded.retried.append(result)
        changes.append(change)
    connection = session.connection()
    _INSERT_ATTEMPTS.run(connection, [{
        "delivery_id": r.delivery_id, "endpoint_id": endpoint_id, "event_id": r.event_id,
        "attempted_at": r.attempted_at, "status_code": r.status_code,
        "duration_ms": r.duration_ms, "error": r.error[:ERROR_MAX] if r.error else None,
    } for r in results])
    _UPDATE_DELIVERIES.run(connection, changes)
    promote_heads(session, endpoint_id, (
        held[r.delivery_id].contact_id for r in (*recorded.succeeded, *recorded.failed)
    ), now)
    if recorded.retried:  # what waits behind a head that waits for its retry
        park_followers(session, endpoint_id, now,
                       (held[r.delivery_id].contact_id for r in recorded.retried))
    _endpoint_state(session, endpoint, recorded, settings, now)
    return recorded


def _endpoint_state(
    session: Session, endpoint: WebhookEndpoint, recorded: Recorded, settings: Settings,
    now: datetime,
) -> None:
    if recorded.succeeded:
        endpoint.failing_since = None
        return
    if recorded.failed and endpoint.failing_since is None:
        endpoint.failing_since = now
    failing_since = endpoint.failing_since
    if failing_since is None or not endpoint.enabled:
        return
    if now - as_utc(failing_since) < timedelta(seconds=settings.webhook_disable_after_seconds):
        return
    last = (recorded.failed or recorded.retried)[-1]
    what = f"HTTP {last.status_code}" if last.status_code is not None else last.error
    reason = f"every delivery failed since {isoformat(failing_since)} (last: {what})"
    recorded.disabled_reason = reason[:200]
    endpoint.enabled = False
    endpoint.disabled_reason = recorded.disabled_reason
    endpoint.disabled_at = now
    endpoint.updated_at = now
    # What it still had to send is failed, as a delivery out of retries is: replayable.
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.endpoint_id == endpoint.id, WebhookDelivery.status == PENDING)
        .values(status=FAILED, finished_at=now, claim_token=None, claimed_until=None)
    )
    log.warning("webhook.endpoint.disabled", extra={
        "endpoint_id": endpoint.id, "account_id": endpoint.account_id,
        "failing_since": isoformat(failing_since), "reason": recorded.disabled_reason,
    })

"""Which deliveries may be sent now, and handing them out so that each is in flight once.

Order per endpoint and contact: only a contact's head may be sent, its pending delivery of
lowest sequence, and only while no other delivery of that contact to that endpoint is in
flight. A dispatcher claims heads (a token and a lease, under FOR UPDATE SKIP LOCKED on
PostgreSQL, the write lock on SQLite), so any number of dispatchers and delivery workers keep
it. A task sends only what its token still holds: a task message that arrives after its
lease lapsed (its worker died, say) sends nothing, since the deliveries were claimed again.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ARRAY, String, any_, cast, distinct, func, or_, select, tuple_, update
from sqlalchemy.orm import Session, aliased

from contactsync.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from contactsync.settings import Settings

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"


@dataclass(frozen=True)
class Claim:
    """Deliveries of one endpoint (distinct contacts) handed to one task."""

    endpoint_id: str
    token: str
    delivery_ids: list[int]
    event_ids: list[str]  # for the task's Flower row
    attempt: int  # the highest attempt number of the batch, this one counted


@dataclass(frozen=True)
class Outgoing:
    delivery_id: int
    event_id: str
    attempts: int
    occurred_at: datetime
    payload: str


@dataclass(frozen=True)
class Batch:
    """What a task sends: the endpoint and its claimed deliveries still pending."""

    endpoint: WebhookEndpoint
    deliveries: list[Outgoing]


def heads_due(  # type: ignore[no-untyped-def]
    now: datetime, limit: int, endpoint_ids: list[str], dialect: str
):
    """Return the query of the endpoints' due deliveries a claim may take, locked, at most
    `limit`, in the order they are sent."""
    # Due pending rows in the order they are sent, each kept only if it is its contact's head
    # (no pending row of that endpoint and contact comes before it) and none of the contact's
    # rows is in flight: two index probes a row (the partial indexes of migration 0006), and
    # the scan stops at `limit`. Ranking every pending row of the endpoint in a window, as this
    # did, sorted the whole backlog at each claim (docs/benchmarks.md, session 8).
    d = aliased(WebhookDelivery, name="d")
    earlier = aliased(WebhookDelivery, name="earlier")
    busy = aliased(WebhookDelivery, name="busy")
    has_earlier = select(earlier.id).where(
        earlier.endpoint_id == d.endpoint_id, earlier.contact_id == d.contact_id,
        earlier.status == PENDING,
        tuple_(earlier.sequence, earlier.id) < tuple_(d.sequence, d.id),
    ).exists()
    has_busy = select(busy.id).where(
        busy.endpoint_id == d.endpoint_id, busy.contact_id == d.contact_id,
        busy.status == PENDING, busy.claimed_until > now,
    ).exists()
    # On PostgreSQL an array, not `IN`: a list of one became `endpoint_id = constant`, and on a
    # new table's missing statistics the planner then read the endpoint's whole backlog for
    # every row's probe (seconds a claim at 20,000 pending) instead of looking up its contact.
    of_endpoints = (
        d.endpoint_id == any_(cast(endpoint_ids, ARRAY(String))) if dialect == "postgresql"
        else d.endpoint_id.in_(endpoint_ids)
    )
    # A row locked after another dispatcher's claim committed is checked again as it is now
    # (READ COMMITTED), its own lease included, and skipped.
    return (
        select(d.id, d.endpoint_id, d.event_id, d.attempts)
        .join(WebhookEndpoint, WebhookEndpoint.id == d.endpoint_id)
        .where(
            d.status == PENDING, of_endpoints, d.next_attempt_at <= now,
            or_(d.claimed_until.is_(None), d.claimed_until <= now),
            WebhookEndpoint.enabled.is_(True), ~has_earlier, ~has_busy,
        )
        .order_by(d.next_attempt_at, d.id)
        .limit(limit)
        .with_for_update(of=d, skip_locked=True)
    )


def claim_due(session: Session, settings: Settings, now: datetime) -> list[Claim]:
    """Claim the contacts' heads that are due, in tasks of at most `webhook_batch_size`, at
    most `webhook_endpoint_max_tasks` of an endpoint in flight; return the claims."""
    # Tasks, not deliveries, in flight per endpoint: a slow endpoint holds at most that many
    # pool processes, however its deliveries' retries are spread in time. Counted first, so
    # that a pass while every endpoint's tasks are busy (most passes under load: a task goes
    # on with its endpoint's next heads) looks for no heads at all.
    in_flight: dict[str, int] = {row[0]: row[1] for row in session.execute(
        select(WebhookDelivery.endpoint_id, func.count(distinct(WebhookDelivery.claim_token)))
        .where(WebhookDelivery.status == PENDING, WebhookDelivery.claimed_until > now)
        .group_by(WebhookDelivery.endpoint_id)
    )}
    slots = {endpoint_id: settings.webhook_endpoint_max_tasks - in_flight.get(endpoint_id, 0)
             for endpoint_id in session.scalars(
                 select(WebhookEndpoint.id).where(WebhookEndpoint.enabled.is_(True)))}
    free = {endpoint_id: n for endpoint_id, n in slots.items() if n > 0}
    if not free:
        return []
    size = settings.webhook_batch_size
    # The whole dispatch batch, not only what the free slots take: heads come in due order
    # across endpoints, and one endpoint's many old heads would fill a smaller limit alone.
    rows = session.execute(heads_due(
        now, settings.webhook_dispatch_batch, list(free), _dialect(session)
    )).all()
    by_endpoint: dict[str, list[Any]] = {}
    for row in rows:
        by_endpoint.setdefault(row.endpoint_id, []).append(row)
    claims: list[Claim] = []
    for endpoint_id, due in by_endpoint.items():
        for i in range(0, min(len(due), free[endpoint_id] * size), size):
            part = due[i:i + size]
            claims.append(Claim(
                endpoint_id, secrets.token_hex(8), [r.id for r in part],
                [r.event_id for r in part], 1 + max(r.attempts for r in part),
            ))
    until = now + timedelta(seconds=settings.webhook_lease_seconds)
    for claim in claims:
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id.in_(claim.delivery_ids))
            .values(claim_token=claim.token, claimed_until=until)
        )
    return claims


def claim_more(
    session: Session, settings: Settings, endpoint_id: str, token: str, now: datetime
) -> list[int]:
    """Claim the endpoint's next due heads for a task that has sent its batch and has time
    left (the same token: still one task in flight); return their ids."""
    ids = [row.id for row in session.execute(
        heads_due(now, settings.webhook_batch_size, [endpoint_id], _dialect(session))
    )]
    if ids:
        session.execute(
            update(WebhookDelivery).where(WebhookDelivery.id.in_(ids)).values(
                claim_token=token,
                claimed_until=now + timedelta(seconds=settings.webhook_lease_seconds),
            )
        )
    return ids


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def release(session: Session, claim: Claim) -> None:
    """Give a claim back at once (its task could not be queued)."""
    give_back(session, claim.delivery_ids, claim.token)


def give_back(session: Session, delivery_ids: list[int], token: str) -> None:
    """Give back deliveries still held by `token`, unattempted: the next pass hands them out."""
    if not delivery_ids:
        return
    session.execute(
        update(WebhookDelivery)
        .where(WebhookDelivery.id.in_(delivery_ids), WebhookDelivery.claim_token == token)
        .values(claim_token=None, claimed_until=None)
    )


def load_claimed(session: Session, endpoint_id: str, delivery_ids: list[int],
                 token: str) -> Batch | None:
    """Return what this task's claim still holds (None: nothing, or the endpoint is gone)."""
    endpoint = session.get(WebhookEndpoint, endpoint_id)
    if endpoint is None or not endpoint.enabled:
        return None
    rows = session.execute(
        select(WebhookDelivery.id, WebhookDelivery.event_id, WebhookDelivery.attempts,
               WebhookEvent.occurred_at, WebhookEvent.payload)
        .join(WebhookEvent, WebhookEvent.event_id == WebhookDelivery.event_id)
        .where(WebhookDelivery.id.in_(delivery_ids), WebhookDelivery.claim_token == token,
               WebhookDelivery.status == PENDING, WebhookDelivery.endpoint_id == endpoint_id)
        .order_by(WebhookDelivery.id)
    ).all()
    if not rows:
        return None
    return Batch(endpoint, [Outgoing(*row) for row in rows])

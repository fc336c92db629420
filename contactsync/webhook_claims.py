"""Which deliveries may be sent now, and handing them out so that each is in flight once.

Order per endpoint and contact: only a contact's head may be sent, its pending delivery of
lowest sequence, and only while no other delivery of that contact to that endpoint is in
flight. The deliveries behind a head that waits for a retry are parked (`PARKED`), out of
the due scan, until the delivery before them finishes. A dispatcher claims heads (a token
and a lease, under FOR UPDATE SKIP LOCKED on PostgreSQL, the write lock on SQLite), so any
number of dispatchers and delivery workers keep it. A task sends only what its token still
holds: a task message that arrives after its lease lapsed (its worker died, say) sends
nothing, since the deliveries were claimed again.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import (
    ARRAY,
    String,
    any_,
    cast,
    distinct,
    func,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.orm import Session, aliased
from sqlalchemy.sql.expression import Exists

from contactsync.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from contactsync.settings import Settings
from contactsync.timeutil import as_utc

PENDING, SUCCEEDED, FAILED = "pending", "succeeded", "failed"
# The next attempt of a delivery parked behind a head that waits for its retry: later than
# any real one, so the claims' scan of due rows never reaches it. Without parking, a dead
# endpoint's queued deliveries stayed due behind their heads' retries and every claim of every
# endpoint scanned them: 95-136 ms a claim at 40,000 (docs/benchmarks.md, session 9).
PARKED = datetime(9999, 1, 1, tzinfo=UTC)


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


def _earlier_pending(row: Any) -> Exists:
    """Whether a pending delivery of `row`'s endpoint and contact comes before it (by sequence,
    then id): false for its contact's head."""
    earlier = aliased(WebhookDelivery, name="earlier")
    return select(earlier.id).where(
        earlier.endpoint_id == row.endpoint_id, earlier.contact_id == row.contact_id,
        earlier.status == PENDING,
        tuple_(earlier.sequence, earlier.id) < tuple_(row.sequence, row.id),
    ).exists()


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
    busy = aliased(WebhookDelivery, name="busy")
    has_earlier = _earlier_pending(d)
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
    for claim in claims:
        _lease(session, settings, claim.delivery_ids, claim.token, now)
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
        _lease(session, settings, ids, token, now)
    return ids


def _lease(session: Session, settings: Settings, delivery_ids: list[int], token: str,
           now: datetime) -> None:
    """Hand the deliveries to the task holding `token`, for one lease from `now`."""
    session.execute(
        update(WebhookDelivery).where(WebhookDelivery.id.in_(delivery_ids)).values(
            claim_token=token,
            claimed_until=now + timedelta(seconds=settings.webhook_lease_seconds),
        )
    )


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def lock_endpoints(session: Session, endpoint_ids: Iterable[str], *,
                   exclusive: bool = False) -> None:
    """Lock the endpoints' rows, shared or `exclusive`, in id order, until the transaction ends.

    Whatever changes which of an endpoint's deliveries are heads takes the lock exclusive:
    recording an attempt (a head finishes, the next is promoted) and a replay (deliveries
    become pending again). The fan-out, which parks a new delivery behind a head it reads,
    takes it shared in a statement of its own before it reads them, so it reads the heads as
    the last exclusive holder left them: else it could park a delivery behind a head whose
    outcome committed meanwhile and promoted none, parked for good. Claims take no lock: the
    rows a replay makes wait behind an earlier one it parks, so a claim running beside it
    skips them (locked), sees them parked when it rechecks them, or claimed one first, which
    is then in flight and not parked (as if the claim had run before the replay). SQLite
    writes one transaction at a time.
    """
    ids = sorted(set(endpoint_ids))
    if ids:
        session.execute(
            select(WebhookEndpoint.id).where(WebhookEndpoint.id.in_(ids))
            .order_by(WebhookEndpoint.id).with_for_update(read=not exclusive)
        ).all()


# Each (endpoint, contact)'s head, on PostgreSQL: one index probe a pair (the pending rows'
# partial index, in order), where a GROUP BY's min() read every pending row of each pair (a
# contact with 40,000 queued: 12-15 ms a relay pass, growing; review of session 9).
_FIRST_PENDING_PG = text("""
SELECT c.endpoint_id, c.contact_id, h.id, h.sequence, h.next_attempt_at
FROM unnest(CAST(:endpoints AS varchar[]), CAST(:contacts AS varchar[]))
  AS c(endpoint_id, contact_id)
CROSS JOIN LATERAL (
  SELECT d.id, d.sequence, d.next_attempt_at FROM webhook_deliveries d
  WHERE d.endpoint_id = c.endpoint_id AND d.contact_id = c.contact_id AND d.status = 'pending'
  ORDER BY d.sequence, d.id LIMIT 1
) h
""")


def _first_pending(session: Session, pairs: set[tuple[str, str]]) -> dict[tuple[str, str], Any]:
    """Return the head (its id, sequence and next attempt) of each (endpoint, contact) pair
    that has one."""
    if not pairs:
        return {}
    if _dialect(session) == "postgresql":
        endpoints, contacts = zip(*sorted(pairs), strict=True)
        rows = session.execute(_FIRST_PENDING_PG, {
            "endpoints": list(endpoints), "contacts": list(contacts)})
        return {(r.endpoint_id, r.contact_id): r for r in rows}
    d = aliased(WebhookDelivery, name="d")
    rows = session.execute(
        select(d.endpoint_id, d.contact_id, d.id, d.sequence, d.next_attempt_at).where(
            tuple_(d.endpoint_id, d.contact_id).in_(sorted(pairs)), d.status == PENDING,
            ~_earlier_pending(d),
        )
    )
    return {(r.endpoint_id, r.contact_id): r for r in rows}


def park_behind(session: Session, deliveries: list[dict[str, Any]], now: datetime) -> None:
    """Park each new pending delivery (a row to insert, in the order of insertion) that comes
    after its endpoint and contact's head while that head waits for a retry: its
    `next_attempt_at` becomes `PARKED`. The caller holds its endpoints' locks, shared.

    Behind a head that is due or in flight (an endpoint that answers), a delivery stays due:
    it waits a moment, and parking it would cost an update more (its promotion) when the head
    is done, for every delivery of a busy flow. When a head's attempt fails,
    `park_followers` parks what waits behind it.
    """
    heads = _first_pending(session, {(d["endpoint_id"], d["contact_id"]) for d in deliveries})
    # Per pair: the lowest sequence pending, and whether it waits (a retry, or parked itself).
    first = {pair: (head.sequence, as_utc(head.next_attempt_at) > now)
             for pair, head in heads.items()}
    for delivery in deliveries:
        pair = (delivery["endpoint_id"], delivery["contact_id"])
        sequence, waits = first.get(pair, (None, False))
        # An equal sequence stored comes first: its id is lower.
        if sequence is not None and sequence <= delivery["sequence"]:
            if waits:
                delivery["next_attempt_at"] = PARKED
        else:  # the head now, or one before it (which both send in order: `heads_due`)
            first[pair] = (delivery["sequence"], False)


def promote_heads(session: Session, endpoint_id: str, contact_ids: Iterable[str],
                  now: datetime) -> None:
    """Make each contact's head due, if parked: the delivery before it finished. The caller
    holds the endpoint's lock, exclusive."""
    heads = _first_pending(session, {(endpoint_id, c) for c in contact_ids})
    head_ids = [head.id for head in heads.values()]
    if head_ids:
        session.execute(
            update(WebhookDelivery)
            .where(WebhookDelivery.id.in_(head_ids), WebhookDelivery.next_attempt_at == PARKED)
            .values(next_attempt_at=now)
        )


def unpark_stranded(session: Session, now: datetime) -> int:
    """Make due every parked delivery that is its contact's head; return how many.

    None should be: a head that finishes promotes the next. This is the net under what that
    misses, say a worker of the code before parking that recorded an outcome during an
    upgrade (it promotes nothing). Unparking is always safe (claims send heads only); each
    parked row costs one index probe.
    """
    result = session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.status == PENDING, WebhookDelivery.next_attempt_at == PARKED,
            ~_earlier_pending(WebhookDelivery),
        )
        .values(next_attempt_at=now)
        .returning(WebhookDelivery.id)
    )
    return len(result.all())


def park_followers(session: Session, endpoint_id: str, now: datetime,
                   contact_ids: Iterable[str] | None = None) -> None:
    """Park every pending delivery of the endpoint (of `contact_ids`, if given) not in flight
    that comes after a pending one of its contact: a head's attempt failed (it waits for its
    retry), or a replay made them all due. The caller holds the endpoint's lock, exclusive."""
    of_contacts = [] if contact_ids is None else [
        WebhookDelivery.contact_id.in_(sorted(set(contact_ids)))]
    session.execute(
        update(WebhookDelivery)
        .where(
            WebhookDelivery.endpoint_id == endpoint_id, WebhookDelivery.status == PENDING,
            *of_contacts, WebhookDelivery.next_attempt_at != PARKED,
            or_(WebhookDelivery.claimed_until.is_(None), WebhookDelivery.claimed_until <= now),
            _earlier_pending(WebhookDelivery),
        )
        .values(next_attempt_at=PARKED)
    )


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

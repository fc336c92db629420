"""Fan-out at the source: each change event the relay publishes becomes one stored event and
one pending delivery per enabled endpoint of its account subscribed to its type, parked if
its contact's head waits for a retry (contactsync/webhook_claims.py).

In the relay's transaction, the one that deletes the published outbox rows: an event is
handed to webhooks exactly when it leaves the outbox, never twice, never lost. Set-based
inserts (two statements a pass); a pass whose accounts have no endpoint parses nothing.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from redis import Redis, RedisError
from sqlalchemy import Connection, Table, select
from sqlalchemy.orm import Session

from contactsync import names
from contactsync.models import WebhookDelivery, WebhookEndpoint, WebhookEvent
from contactsync.row_batches import RowInsert
from contactsync.timeutil import parse_iso
from contactsync.webhook_claims import lock_endpoints, park_behind

_EVENTS: Table = WebhookEvent.__table__  # type: ignore[assignment]
_DELIVERIES: Table = WebhookDelivery.__table__  # type: ignore[assignment]
_INSERT_EVENTS = RowInsert(_EVENTS, [
    "event_id", "account_id", "contact_id", "type", "sequence", "occurred_at", "payload",
])
_INSERT_DELIVERIES = RowInsert(_DELIVERIES, [
    "endpoint_id", "event_id", "contact_id", "sequence", "status", "attempts",
    "next_attempt_at", "created_at",
])


@dataclass(frozen=True)
class Subscriber:
    endpoint_id: str
    events: frozenset[str]


class EndpointDirectory:
    """Which accounts have enabled endpoints, and which events each wants; one relay's cache.

    Read again when the endpoints' version in Redis (names.WEBHOOK_ENDPOINTS_VERSION_KEY, set
    by the store after each change) is not the one read with the list: a new endpoint gets the
    next event. And at least every `ttl` seconds, whatever the version says: a change whose
    version could not be set (Redis down at the time) is seen within `ttl`. Without `redis`,
    `ttl` alone."""

    def __init__(self, ttl: float, redis: Redis | None = None) -> None:
        self._ttl = ttl
        self._redis = redis
        self._read_at = -float("inf")
        self._version: object = None
        self._by_account: dict[str, list[Subscriber]] = {}

    def get(self, session: Session) -> dict[str, list[Subscriber]]:
        # The version before the list: a change committed before its version was set is in
        # any list read after that version, so the cache never pairs a new version with an
        # old list.
        version = self._current_version()
        if version != self._version or time.monotonic() - self._read_at >= self._ttl:
            rows = session.execute(
                select(WebhookEndpoint.id, WebhookEndpoint.account_id, WebhookEndpoint.events)
                .where(WebhookEndpoint.enabled.is_(True))
            ).all()
            by_account: dict[str, list[Subscriber]] = {}
            for endpoint_id, account_id, events in rows:
                by_account.setdefault(account_id, []).append(
                    Subscriber(endpoint_id, frozenset(events or ()))
                )
            self._by_account, self._version = by_account, version
            self._read_at = time.monotonic()
        return self._by_account

    def _current_version(self) -> object:
        if self._redis is None:
            return None
        try:
            return self._redis.get(names.WEBHOOK_ENDPOINTS_VERSION_KEY)
        except RedisError:
            return object()  # unknown: equal to no version, so the list is read again


def order_key(event: dict[str, Any]) -> int:
    """Return the number that orders an event among its contact's: its update's sequence, or,
    for an event no update made (`POST /contacts`, a deletion), the time it occurred in
    microseconds, the same scale (a sequence is the Redis time an update was accepted at)."""
    sequence = event.get("sequence")
    if isinstance(sequence, int):
        return sequence
    return int(parse_iso(event["occurred_at"]).timestamp() * 1_000_000)


def fan_out(
    session: Session, payloads: Sequence[str], subscribers: dict[str, list[Subscriber]],
    now: datetime,
) -> int:
    """Store the events that some endpoint wants and their pending deliveries; return how many
    deliveries were made."""
    if not subscribers:
        return 0
    events: list[dict[str, Any]] = []
    deliveries: list[dict[str, Any]] = []
    for payload in payloads:
        event = orjson.loads(payload)
        wanted = [s for s in subscribers.get(event.get("account_id", ""), ())
                  if event.get("type") in s.events]
        if not wanted:
            continue
        sequence = order_key(event)
        events.append({
            "event_id": event["id"], "account_id": event["account_id"],
            "contact_id": event["contact_id"], "type": event["type"], "sequence": sequence,
            "occurred_at": parse_iso(event["occurred_at"]), "payload": payload,
        })
        deliveries.extend({
            "endpoint_id": s.endpoint_id, "event_id": event["id"],
            "contact_id": event["contact_id"], "sequence": sequence, "status": "pending",
            "attempts": 0, "next_attempt_at": now, "created_at": now,
        } for s in wanted)
    if not events:
        return 0
    connection: Connection = session.connection()
    _INSERT_EVENTS.run(connection, events)
    lock_endpoints(session, {d["endpoint_id"] for d in deliveries})
    park_behind(session, deliveries, now)
    _INSERT_DELIVERIES.run(connection, deliveries)
    return len(deliveries)

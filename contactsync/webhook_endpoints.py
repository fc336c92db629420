"""Webhook endpoints of an account: register, read, change, remove, rotate, replay.

The rules every caller (the API, the CLI) shares: the URL passes `check_url`, the secret is
shown once and stored sealed, a re-enabled endpoint starts with a clean record, and once a
change is committed, `announce_change` tells the relays (their list of endpoints is cached).
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from redis import Redis, RedisError
from redis.asyncio import Redis as AsyncRedis
from sqlalchemy import and_, delete, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from contactsync import names
from contactsync.ids import new_webhook_id
from contactsync.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from contactsync.settings import Settings
from contactsync.timeutil import isoformat
from contactsync.webhook_claims import lock_endpoints, park_followers
from contactsync.webhook_retention import hold_events
from contactsync.webhook_secrets import ROTATION_OVERLAP, new_secret, seal
from contactsync.webhook_urls import check_url

log = logging.getLogger("contactsync.webhooks")

MANUALLY_DISABLED = "disabled by its account"


@dataclass(frozen=True)
class EndpointChange:
    """What a PATCH changes: None leaves a field as it is."""

    url: str | None = None
    events: list[str] | None = None
    description: str | None = None
    enabled: bool | None = None


def create_endpoint(
    session: Session, settings: Settings, account_id: str, url: str, events: list[str],
    description: str, now: datetime,
) -> tuple[WebhookEndpoint, str]:
    """Register an endpoint; return it and its secret, which is shown once and never again."""
    check_url(url, allow_insecure=settings.webhooks_allow_insecure)
    secret = new_secret()
    endpoint = WebhookEndpoint(
        id=new_webhook_id(), account_id=account_id, url=url, events=sorted(set(events)),
        description=description, enabled=True, secret_ciphertext=seal(secret, settings),
        previous_secret_ciphertext=None, previous_secret_expires_at=None, failing_since=None,
        disabled_reason=None, disabled_at=None, created_at=now, updated_at=now,
    )
    session.add(endpoint)
    session.flush()
    return endpoint, secret


def list_endpoints(session: Session, account_id: str) -> list[WebhookEndpoint]:
    """Return the account's endpoints, oldest first."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.account_id == account_id)
    return list(session.scalars(query.order_by(WebhookEndpoint.created_at, WebhookEndpoint.id)))


def get_endpoint(
    session: Session, account_id: str | None, endpoint_id: str, *, for_update: bool = False
) -> WebhookEndpoint | None:
    """Return the endpoint if it exists and belongs to the account (None: any account, for the
    operator's CLI); another account's endpoint is as absent as one that never existed."""
    query = select(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
    if account_id is not None:
        query = query.where(WebhookEndpoint.account_id == account_id)
    if for_update:
        query = query.with_for_update()
    return session.scalar(query)


def update_endpoint(
    session: Session, settings: Settings, endpoint: WebhookEndpoint, change: EndpointChange,
    now: datetime,
) -> WebhookEndpoint:
    """Apply a change; re-enabling clears why and since when it was failing or disabled."""
    if change.url is not None:
        check_url(change.url, allow_insecure=settings.webhooks_allow_insecure)
        endpoint.url = change.url
    if change.events is not None:
        endpoint.events = sorted(set(change.events))
    if change.description is not None:
        endpoint.description = change.description
    if change.enabled is True and not endpoint.enabled:
        endpoint.enabled = True
        endpoint.disabled_reason = endpoint.disabled_at = endpoint.failing_since = None
    elif change.enabled is False and endpoint.enabled:
        endpoint.enabled = False
        endpoint.disabled_reason, endpoint.disabled_at = MANUALLY_DISABLED, now
    endpoint.updated_at = now
    session.flush()
    return endpoint


def delete_endpoint(session: Session, account_id: str | None, endpoint_id: str) -> bool:
    """Remove an endpoint with its deliveries and their attempts (the foreign keys cascade);
    False if there is none."""
    query = delete(WebhookEndpoint).where(WebhookEndpoint.id == endpoint_id)
    if account_id is not None:
        query = query.where(WebhookEndpoint.account_id == account_id)
    return bool(session.execute(query).rowcount)  # type: ignore[attr-defined]


def rotate_secret(
    session: Session, settings: Settings, endpoint: WebhookEndpoint, now: datetime
) -> str:
    """Give the endpoint a new secret; the current one keeps signing beside it for 24 h."""
    secret = new_secret()
    endpoint.previous_secret_ciphertext = endpoint.secret_ciphertext
    endpoint.previous_secret_expires_at = now + ROTATION_OVERLAP
    endpoint.secret_ciphertext = seal(secret, settings)
    endpoint.updated_at = now
    session.flush()
    return secret


def list_attempts(
    session: Session, endpoint_id: str, *, limit: int, before: int | None = None
) -> tuple[list[tuple[WebhookAttempt, str]], int | None]:
    """Return the endpoint's attempts, newest first, each with its delivery's status, and the
    cursor (an attempt id) of the next page, if there is one."""
    query = (
        select(WebhookAttempt, WebhookDelivery.status)
        .join(WebhookDelivery, WebhookDelivery.id == WebhookAttempt.delivery_id)
        .where(WebhookAttempt.endpoint_id == endpoint_id)
    )
    if before is not None:
        query = query.where(WebhookAttempt.id < before)
    rows = list(session.execute(query.order_by(WebhookAttempt.id.desc()).limit(limit + 1)))
    page = [(attempt, status) for attempt, status in rows[:limit]]
    return page, page[-1][0].id if len(rows) > limit else None


def replay(session: Session, endpoint: WebhookEndpoint, since: datetime, now: datetime) -> int:
    """Make a pending delivery, due now, of each kept event of the endpoint's account since
    `since` of a type it receives; return how many. A delivery the event already had starts
    over (no attempts, made now), so the retry schedule runs in full again; each but its
    contact's first is then parked behind it."""
    lock_endpoints(session, [endpoint.id], exclusive=True)
    hold_events(session)
    events = (
        select(
            literal(endpoint.id), WebhookEvent.event_id, WebhookEvent.contact_id,
            WebhookEvent.sequence, literal("pending"), literal(0), literal(now), literal(now),
        )
        .where(and_(
            WebhookEvent.account_id == endpoint.account_id,
            WebhookEvent.occurred_at >= since,
            WebhookEvent.type.in_(endpoint.events),
        ))
    )
    dialect = postgresql if session.get_bind().dialect.name == "postgresql" else sqlite
    statement = dialect.insert(WebhookDelivery).from_select(
        ["endpoint_id", "event_id", "contact_id", "sequence", "status", "attempts",
         "next_attempt_at", "created_at"],
        events,
    )
    statement = statement.on_conflict_do_update(
        index_elements=["endpoint_id", "event_id"],
        # A claim in flight is dropped: were its task to record its success, the replay
        # would be lost (seen in tests/e2e/test_webhooks.py). That task's answer is then not
        # recorded, and the delivery goes out again; the receiver dedupes by webhook-id. The
        # retry window restarts from the next first attempt.
        set_={"status": "pending", "attempts": 0, "next_attempt_at": now, "created_at": now,
              "finished_at": None, "first_attempt_at": None, "claim_token": None,
              "claimed_until": None},
    )
    # Counted from RETURNING: psycopg's rowcount of an INSERT … SELECT upsert is -1.
    made = len(session.execute(statement.returning(WebhookDelivery.id)).all())
    park_followers(session, endpoint.id, now)
    return made


def announce_change(redis: Redis) -> None:
    """Tell the relays that the endpoints changed; call it once the change is committed."""
    try:
        redis.set(names.WEBHOOK_ENDPOINTS_VERSION_KEY, secrets.token_hex(8))
    except RedisError as exc:
        _not_announced(exc)


async def announce_change_async(redis: AsyncRedis) -> None:
    """Tell the relays that the endpoints changed, from an event loop (the gateway's)."""
    try:
        await redis.set(names.WEBHOOK_ENDPOINTS_VERSION_KEY, secrets.token_hex(8))
    except RedisError as exc:
        _not_announced(exc)


def _not_announced(exc: RedisError) -> None:
    # The change is committed all the same, and not lost: a relay reads the endpoints again
    # at least every CONTACTSYNC_WEBHOOK_ENDPOINTS_CACHE_SECONDS, version or not.
    log.warning("webhook endpoints changed but Redis could not be told (%s): relays see the "
                "change within their cache's seconds", type(exc).__name__)


def endpoint_to_dict(endpoint: WebhookEndpoint) -> dict[str, Any]:
    """Return the endpoint as the API shows it (never its secret)."""
    return {
        "id": endpoint.id, "url": endpoint.url, "events": list(endpoint.events),
        "enabled": endpoint.enabled, "description": endpoint.description,
        "created_at": isoformat(endpoint.created_at), "updated_at": isoformat(endpoint.updated_at),
        "disabled_reason": endpoint.disabled_reason,
    }


def attempt_to_dict(attempt: WebhookAttempt, delivery_status: str) -> dict[str, Any]:
    """Return one delivery attempt as the API shows it."""
    return {
        "event_id": attempt.event_id, "attempted_at": isoformat(attempt.attempted_at),
        "status_code": attempt.status_code, "duration_ms": attempt.duration_ms,
        "error": attempt.error, "delivery_status": delivery_status,
    }

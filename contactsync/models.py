"""SQLAlchemy tables: accounts, API keys, contacts and their identities, update records, the
outbox, dead letters, and webhooks (endpoints, the events they are sent, deliveries and their
attempts)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# A contact's mergeable JSON: JSONB on PostgreSQL (migration 0005), JSON elsewhere.
_MERGEABLE = JSON().with_variant(JSONB(), "postgresql")


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime]


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    prefix: Mapped[str] = mapped_column(String(32), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    permissions: Mapped[list[str]] = mapped_column(JSON)
    rate_limit_per_second: Mapped[int | None] = mapped_column(Integer)
    update_rate_limit_per_second: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    revoked_at: Mapped[datetime | None]


class Contact(Base):
    __tablename__ = "contacts"
    __table_args__ = (Index("ix_contacts_account_updated", "account_id", "updated_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"))
    name: Mapped[str] = mapped_column(String(200))
    email: Mapped[str | None] = mapped_column(String(254))
    phone: Mapped[str | None] = mapped_column(String(32))
    company: Mapped[str | None] = mapped_column(String(200))
    position: Mapped[str | None] = mapped_column(String(200))
    source: Mapped[str] = mapped_column(String(32))
    linkedin_url: Mapped[str | None] = mapped_column(String(2048))
    tags: Mapped[list[str]] = mapped_column(_MERGEABLE)
    custom_fields: Mapped[dict[str, Any]] = mapped_column(_MERGEABLE)
    external_ids: Mapped[dict[str, Any]] = mapped_column(
        _MERGEABLE, default=dict, server_default=text("'{}'")
    )
    # The sequence that last wrote each field: what per-field last-writer-wins compares.
    field_seqs: Mapped[dict[str, Any]] = mapped_column(_MERGEABLE)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ContactIdentity(Base):
    """One identity a contact holds: the primary key makes each unique within an account.

    `key` is `identities.stored_key` of the identity (`field`: `email`, `linkedin_url` or
    `external_ids.<system>`). A contact whose identity another held when it was written (only
    ever by migration 0003, from duplicates already stored) keeps the value without the row.
    """

    __tablename__ = "contact_identities"
    __table_args__ = (Index("ix_contact_identities_contact", "contact_id"),)

    account_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    field: Mapped[str] = mapped_column(String(64))
    contact_id: Mapped[str] = mapped_column(ForeignKey("contacts.id", ondelete="CASCADE"))


class UpdateRecord(Base):
    """A finished update; a queued one lives in Redis until a worker records it here."""

    __tablename__ = "update_records"
    __table_args__ = (Index("ix_update_records_contact", "account_id", "contact_id"),)

    update_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(32))
    contact_id: Mapped[str] = mapped_column(String(64))
    seq: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    received_at: Mapped[datetime]
    applied_at: Mapped[datetime | None]
    changed_fields: Mapped[list[str]] = mapped_column(JSON)
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON)


class OutboxEvent(Base):
    """A change event written with the change; the relay publishes and deletes it."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    event_id: Mapped[str] = mapped_column(String(40), unique=True)
    payload: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class DeadLetter(Base):
    """An update that failed every retry, kept whole so that it can be replayed."""

    __tablename__ = "dead_letters"

    update_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(32))
    contact_id: Mapped[str] = mapped_column(String(64))
    queue: Mapped[str] = mapped_column(String(64))
    body: Mapped[dict[str, Any]] = mapped_column(JSON)
    error: Mapped[dict[str, Any]] = mapped_column(JSON)
    failed_at: Mapped[datetime]
    replayed_at: Mapped[datetime | None]


class WebhookEndpoint(Base):
    """An account's HTTPS endpoint that receives the change events it subscribes to.

    The signing secret is stored encrypted (`secret_ciphertext`); after a rotation the previous
    one keeps signing beside it until `previous_secret_expires_at`.
    """

    __tablename__ = "webhook_endpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    account_id: Mapped[str] = mapped_column(ForeignKey("accounts.id"), index=True)
    url: Mapped[str] = mapped_column(String(2048))
    events: Mapped[list[str]] = mapped_column(JSON)
    description: Mapped[str] = mapped_column(String(500), default="")
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    secret_ciphertext: Mapped[str] = mapped_column(Text)
    previous_secret_ciphertext: Mapped[str | None] = mapped_column(Text)
    previous_secret_expires_at: Mapped[datetime | None]
    # Set by the first delivery that finally failed after the last success: an endpoint failing
    # for three days from then is disabled.
    failing_since: Mapped[datetime | None]
    disabled_reason: Mapped[str | None] = mapped_column(String(200))
    disabled_at: Mapped[datetime | None]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class WebhookEvent(Base):
    """A change event kept for webhook delivery and replay (retention: see README)."""

    __tablename__ = "webhook_events"
    __table_args__ = (Index("ix_webhook_events_account_time", "account_id", "occurred_at"),)

    event_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    account_id: Mapped[str] = mapped_column(String(32))
    contact_id: Mapped[str] = mapped_column(String(64))
    type: Mapped[str] = mapped_column(String(32))
    sequence: Mapped[int] = mapped_column(BigInteger)
    occurred_at: Mapped[datetime]
    payload: Mapped[str] = mapped_column(Text)


_PENDING = "status = 'pending'"
_IN_FLIGHT = "status = 'pending' AND claimed_until IS NOT NULL"


class WebhookDelivery(Base):
    """One event to one endpoint: pending until it succeeds or finally fails.

    Per endpoint and contact, only the pending delivery of lowest sequence may be sent.
    """

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        UniqueConstraint("endpoint_id", "event_id", name="uq_webhook_deliveries_endpoint_event"),
        # Pending rows in the order they are sent; a contact's pending rows in sequence order,
        # and its rows in flight: a claim's scan and its two probes
        # (contactsync/webhook_claims.py). Partial, so finished rows cost them nothing. The
        # first leaves the endpoint out on purpose: with no statistics yet (a new table), the
        # planner took it for the probes and read the endpoint's whole backlog per row.
        Index("ix_webhook_deliveries_due", "next_attempt_at", "id",
              postgresql_where=text(_PENDING), sqlite_where=text(_PENDING)),
        Index("ix_webhook_deliveries_pending", "endpoint_id", "contact_id", "sequence", "id",
              postgresql_where=text(_PENDING), sqlite_where=text(_PENDING)),
        Index("ix_webhook_deliveries_in_flight", "endpoint_id", "contact_id",
              postgresql_where=text(_IN_FLIGHT), sqlite_where=text(_IN_FLIGHT)),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    endpoint_id: Mapped[str] = mapped_column(
        ForeignKey("webhook_endpoints.id", ondelete="CASCADE")
    )
    event_id: Mapped[str] = mapped_column(String(40))
    contact_id: Mapped[str] = mapped_column(String(64))
    sequence: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))  # pending, succeeded, failed
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime]
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    # Retried until `webhook_retry_for_seconds` after this (not after `created_at`: a delivery
    # may wait behind an earlier one of its contact for a long while before its first try).
    first_attempt_at: Mapped[datetime | None]
    # A dispatched delivery: the token its task carries, and when the claim lapses (its worker
    # died). A task whose token no longer matches sends nothing (contactsync/webhook_claims.py).
    claim_token: Mapped[str | None] = mapped_column(String(32))
    claimed_until: Mapped[datetime | None]


class WebhookAttempt(Base):
    """One try of a delivery: when, what came back, how long it took."""

    __tablename__ = "webhook_attempts"
    __table_args__ = (Index("ix_webhook_attempts_delivery", "delivery_id"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"),
                                    primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(
        ForeignKey("webhook_deliveries.id", ondelete="CASCADE")
    )
    endpoint_id: Mapped[str] = mapped_column(String(32), index=True)
    event_id: Mapped[str] = mapped_column(String(40))
    attempted_at: Mapped[datetime]
    status_code: Mapped[int | None] = mapped_column(Integer)
    duration_ms: Mapped[int] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(300))

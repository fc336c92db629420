"""SQLAlchemy tables: accounts, API keys, contacts and their identities, update records, the
outbox, dead letters."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


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
    tags: Mapped[list[str]] = mapped_column(JSON)
    custom_fields: Mapped[dict[str, Any]] = mapped_column(JSON)
    external_ids: Mapped[dict[str, Any]] = mapped_column(
        JSON, default=dict, server_default=text("'{}'")
    )
    # The sequence that last wrote each field: what per-field last-writer-wins compares.
    field_seqs: Mapped[dict[str, Any]] = mapped_column(JSON)
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

"""Listing contacts: filters, offset pages, and a stable cursor for sync jobs.

A filter by identity (`email`, `linkedin_url`, `external_id`) reads the identity index, as
the uniqueness check does: it finds the contact that holds the identity, whatever form of it
was asked for.

The cursor walks (created_at, id), which never change, so a contact updated while a sync job
pages through the list is neither skipped nor seen twice. Other sort orders page by offset.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

import orjson
from sqlalchemy import ColumnElement, Select, and_, cast, exists, func, literal, or_, select
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Session

from contactsync.identities import stored_key
from contactsync.models import Contact, ContactIdentity
from contactsync.schemas import CONTACT_ID_PATTERN
from contactsync.timeutil import as_utc

SortKey = Literal["created_at", "updated_at", "name", "email", "company"]
SORT_COLUMNS = {
    "created_at": Contact.created_at,
    "updated_at": Contact.updated_at,
    "name": Contact.name,
    "email": Contact.email,
    "company": Contact.company,
}


class BadCursor(ValueError):
    """The cursor was not made by this service for this listing."""


@dataclass(frozen=True)
class ContactFilter:
    account_id: str
    search: str | None = None
    company: str | None = None
    email: str | None = None
    source: str | None = None
    tags: tuple[str, ...] = ()
    updated_since: datetime | None = None
    linkedin_url: str | None = None
    external_id: tuple[str, str] | None = None  # (system, id)

    def identities(self) -> list[str]:
        """Return the stored keys of the identities the filter names."""
        named = [("email", self.email), ("linkedin_url", self.linkedin_url)]
        if self.external_id is not None:
            system, external_id = self.external_id
            named.append((f"external_ids.{system}", external_id))
        return [stored_key(name, value) for name, value in named if value]


@dataclass(frozen=True)
class Page:
    contacts: list[Contact]
    total: int
    next_cursor: str | None


def _like(value: str) -> str:
    escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _has_tag(session: Session, tag: str) -> ColumnElement[bool]:
    if session.get_bind().dialect.name == "postgresql":
        contains: ColumnElement[bool] = cast(Contact.tags, JSONB).contains([tag])
        return contains
    each = func.json_each(Contact.tags).table_valued("value")
    return exists(select(literal(1)).select_from(each).where(each.c.value == tag))


def _conditions(session: Session, f: ContactFilter) -> list[ColumnElement[bool]]:
    conditions: list[ColumnElement[bool]] = [Contact.account_id == f.account_id]
    if f.search:
        pattern = _like(f.search)
        conditions.append(or_(
            Contact.name.ilike(pattern, escape="\\"),
            Contact.email.ilike(pattern, escape="\\"),
            Contact.company.ilike(pattern, escape="\\"),
        ))
    if f.company:
        conditions.append(func.lower(Contact.company) == f.company.lower())
    for key in f.identities():
        holder = select(ContactIdentity.contact_id).where(
            ContactIdentity.account_id == f.account_id, ContactIdentity.key == key
        )
        conditions.append(Contact.id.in_(holder.scalar_subquery()))
    if f.source:
        conditions.append(Contact.source == f.source)
    conditions += [_has_tag(session, tag) for tag in f.tags]
    if f.updated_since is not None:
        conditions.append(Contact.updated_at >= f.updated_since)
    return conditions


def encode_cursor(contact: Contact, descending: bool) -> str:
    """Return the opaque cursor that continues after `contact`."""
    raw = orjson.dumps(
        {"c": as_utc(contact.created_at).isoformat(), "i": contact.id, "d": descending}
    )
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str, bool]:
    """Return (created_at, id, descending) from a cursor, or raise `BadCursor`.

    A cursor is client input like any other: each piece is checked for what `encode_cursor`
    puts there before it reaches the database (a NUL in the id was a 500 on PostgreSQL).
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data: dict[str, Any] = orjson.loads(raw)
        created_at, last_id, descending = data["c"], data["i"], data["d"]
        if set(data) != {"c", "i", "d"} or not isinstance(descending, bool):
            raise ValueError("not a cursor")
        if not isinstance(last_id, str) or not CONTACT_ID_PATTERN.fullmatch(last_id):
            raise ValueError("not a contact id")
        instant = datetime.fromisoformat(created_at)
        # fromisoformat is lenient (it took a NUL before the offset): only the form written
        # by encode_cursor, with its offset, is one.
        if instant.tzinfo is None or instant.isoformat() != created_at:
            raise ValueError("not a time as the service writes it")
        return instant.astimezone(UTC), last_id, descending
    except (binascii.Error, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise BadCursor("not a cursor this service returned") from exc


def list_contacts(
    session: Session, f: ContactFilter, *, limit: int, page: int = 1,
    sort_by: SortKey = "created_at", descending: bool = True, cursor: str | None = None,
) -> Page:
    """Return one page of an account's contacts matching `f`."""
    conditions = _conditions(session, f)
    total = session.scalar(select(func.count()).select_from(Contact).where(*conditions)) or 0
    query: Select[Contact] = select(Contact).where(*conditions)
    stable = sort_by == "created_at"
    if cursor is not None:
        if not stable:
            raise BadCursor("a cursor pages by created_at only")
        created_at, last_id, descending = decode_cursor(cursor)
        after = (
            or_(Contact.created_at < created_at,
                and_(Contact.created_at == created_at, Contact.id < last_id))
            if descending else
            or_(Contact.created_at > created_at,
                and_(Contact.created_at == created_at, Contact.id > last_id))
        )
        query = query.where(after)
    column = SORT_COLUMNS[sort_by]
    order = (column.desc(), Contact.id.desc()) if descending else (column.asc(), Contact.id.asc())
    query = query.order_by(*order).limit(limit + 1)
    if cursor is None:
        query = query.offset((page - 1) * limit)
    rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    next_cursor = encode_cursor(rows[-1], descending) if stable and more and rows else None
    return Page(rows, total, next_cursor)

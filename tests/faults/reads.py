"""Small steps the fault tests share: send one update, read records and contacts back."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
from sqlalchemy import select

from contactsync.db import Database
from contactsync.models import Contact, UpdateRecord
from tests.support import wait_until


def put_async(base_url: str, key: str, contact_id: str, body: dict[str, Any]) -> str:
    """Send one async update through a gateway; return its update id."""
    response = httpx.put(
        f"{base_url}/external/v1/contacts/{contact_id}", json=body, timeout=10,
        headers={"X-API-Key": key, "Prefer": "respond-async"},
    )
    assert response.status_code == 202, response.text
    update_id: str = response.json()["data"]["update_id"]
    return update_id


def record_of(db: Database, update_id: str) -> UpdateRecord | None:
    with db.reading() as session:
        return session.get(UpdateRecord, update_id)


def status_of(db: Database, update_id: str) -> str | None:
    record = record_of(db, update_id)
    return None if record is None else record.status


def wait_status(
    db: Database, update_id: str, *statuses: str, timeout: float = 30
) -> UpdateRecord:
    """Wait until the update's record has one of `statuses`; return the record."""

    def probe() -> UpdateRecord | None:
        record = record_of(db, update_id)
        return record if record is not None and record.status in statuses else None

    return wait_until(probe, timeout=timeout, interval=0.1)


def contact_row(db: Database, contact_id: str) -> Contact:
    with db.reading() as session:
        row = session.get(Contact, contact_id)
        assert row is not None
        return row


@contextmanager
def row_locked(db: Database, contact_id: str) -> Iterator[None]:
    """Hold the contact's row lock: an apply of it waits (then times out, a transient error)."""
    with db.unit_of_work() as holder:
        holder.execute(select(Contact).where(Contact.id == contact_id).with_for_update())
        yield

"""Migration 0003 on a database that already holds contacts, duplicates included: the oldest
holder keeps each identity, every contact keeps its values, nothing is lost."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest
from alembic import command
from sqlalchemy import create_engine, select, text

from contactsync.contact_query import ContactFilter, list_contacts
from contactsync.contacts import create_contact
from contactsync.db import Database
from contactsync.errors import Conflict
from contactsync.identities import stored_key
from contactsync.migrate import alembic_config
from contactsync.models import Contact, ContactIdentity
from contactsync.settings import Settings
from tests.conftest import PG_ADMIN_URL
from tests.support import require_service

_PG_DB = f"contactsync_migration_{os.getpid()}"


@pytest.fixture
def empty_url(backend: str, tmp_path: Path) -> Iterator[str]:
    """A database of its own, with no schema yet."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'migrate.db'}"
        return
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=2) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{_PG_DB}" WITH (FORCE)')
            conn.execute(f'CREATE DATABASE "{_PG_DB}"')
    except psycopg.Error:
        require_service("PostgreSQL", False)
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    yield f"{base}/{_PG_DB}"
    with contextlib.suppress(Exception), psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{_PG_DB}" WITH (FORCE)')


def _contact(contact_id: str, account: str, age: int, **fields: Any) -> dict[str, Any]:
    at = datetime(2026, 1, 1, tzinfo=UTC) + timedelta(days=age)
    return {
        "id": contact_id, "account_id": account, "name": contact_id, "email": None,
        "phone": None, "company": None, "position": None, "source": "other",
        "linkedin_url": None, "tags": "[]", "custom_fields": "{}", "field_seqs": "{}",
        "created_at": at, "updated_at": at, **fields,
    }


def test_upgrade_fills_identities_and_the_oldest_keeps_a_shared_one(empty_url: str) -> None:
    command.upgrade(alembic_config(empty_url), "0002_update_rate_limit")
    rows = [
        # Created later, yet listed first: the oldest by created_at must win, not the first read.
        _contact("cnt_newer0000001", "acc_a", 5, email="Jane@Example.com"),
        _contact("cnt_older0000001", "acc_a", 1, email="jane@example.com",
                 linkedin_url="https://www.linkedin.com/in/jane"),
        _contact("cnt_third0000001", "acc_a", 9, linkedin_url="http://linkedin.com/in/Jane/"),
        _contact("cnt_otheracc0001", "acc_b", 7, email="JANE@example.com"),
    ]
    engine = create_engine(empty_url.replace("postgresql://", "postgresql+psycopg://"))
    with engine.begin() as connection:
        for account in ("acc_a", "acc_b"):
            connection.execute(
                text("INSERT INTO accounts (id, name, created_at) VALUES (:id, :id, :at)"),
                {"id": account, "at": datetime(2026, 1, 1, tzinfo=UTC)},
            )
        connection.execute(text(
            "INSERT INTO contacts (id, account_id, name, email, phone, company, position, "
            "source, linkedin_url, tags, custom_fields, field_seqs, created_at, updated_at) "
            "VALUES (:id, :account_id, :name, :email, :phone, :company, :position, :source, "
            ":linkedin_url, :tags, :custom_fields, :field_seqs, :created_at, :updated_at)"
        ), rows)
    engine.dispose()

    command.upgrade(alembic_config(empty_url), "head")

    db = Database(Settings(database_url=empty_url))
    try:
        with db.reading() as session:
            held = {
                (r.account_id, r.field, r.contact_id)
                for r in session.scalars(select(ContactIdentity))
            }
            contacts = {c.id: c for c in session.scalars(select(Contact))}
            found = list_contacts(
                session, ContactFilter("acc_a", email="JANE@EXAMPLE.COM"), limit=10
            ).contacts
        assert held == {
            ("acc_a", "email", "cnt_older0000001"),
            ("acc_a", "linkedin_url", "cnt_older0000001"),
            ("acc_b", "email", "cnt_otheracc0001"),
        }
        # Nothing lost: every contact keeps its values as stored, with no external ids.
        assert contacts["cnt_newer0000001"].email == "Jane@Example.com"
        assert contacts["cnt_third0000001"].linkedin_url == "http://linkedin.com/in/Jane/"
        assert all(c.external_ids == {} for c in contacts.values())
        assert [c.id for c in found] == ["cnt_older0000001"]
        # The index holds from now on: a new contact with the identity is refused.
        with pytest.raises(Conflict) as refused, db.unit_of_work() as session:
            create_contact(session, "acc_a", {"name": "Again", "email": "jane@EXAMPLE.com"})
        assert refused.value.details == {"field": "email", "contact_id": "cnt_older0000001"}
        assert stored_key("email", " JANE@example.com") == stored_key("email", "jane@example.com")
    finally:
        db.dispose()

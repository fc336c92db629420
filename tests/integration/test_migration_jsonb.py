"""Migration 0005 on PostgreSQL: a contact's mergeable columns become JSONB, values kept, and
back to JSON on downgrade; on SQLite it changes nothing."""

from __future__ import annotations

import json
from datetime import UTC, datetime

from alembic import command
from sqlalchemy import create_engine, text

from contactsync.migrate import alembic_config
from tests.integration.test_migration_identities import empty_url  # noqa: F401 (fixture)

_COLUMNS = ("tags", "custom_fields", "external_ids", "field_seqs")


def _types(url: str) -> dict[str, str]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(text(
                "SELECT column_name, data_type FROM information_schema.columns "
                "WHERE table_name = 'contacts'"
            ))
            return {name: kind for name, kind in rows if name in _COLUMNS}
    finally:
        engine.dispose()


def _values(url: str) -> tuple[object, ...]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            row = connection.execute(text(
                "SELECT tags, custom_fields, external_ids, field_seqs FROM contacts"
            )).one()
            # SQLite (text() knows no column types) answers the JSON text: decoded here.
            return tuple(json.loads(v) if isinstance(v, str) else v for v in row)
    finally:
        engine.dispose()


def test_mergeable_columns_become_jsonb_and_back(empty_url: str) -> None:  # noqa: F811
    command.upgrade(alembic_config(empty_url), "0004_webhooks")
    at = datetime(2026, 1, 1, tzinfo=UTC)
    engine = create_engine(empty_url)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO accounts (id, name, created_at) VALUES ('acc_a', 'a', :at)"
        ), {"at": at})
        connection.execute(text(
            "INSERT INTO contacts (id, account_id, name, source, tags, custom_fields, "
            "field_seqs, created_at, updated_at) VALUES ('cnt_a', 'acc_a', 'A', 'other', "
            "'[\"b\", \"a\"]', '{\"plan\": \"pro\", \"n\": 1.5}', "
            "'{\"tags\": 3, \"custom_fields.plan\": 4}', :at, :at)"
        ), {"at": at})
    engine.dispose()
    before = _values(empty_url)
    pg = empty_url.startswith("postgresql")

    command.upgrade(alembic_config(empty_url), "head")
    if pg:
        assert set(_types(empty_url).values()) == {"jsonb"}
    assert _values(empty_url) == before
    assert before == (["b", "a"], {"plan": "pro", "n": 1.5}, {},
                      {"tags": 3, "custom_fields.plan": 4})

    command.downgrade(alembic_config(empty_url), "0004_webhooks")
    if pg:
        assert set(_types(empty_url).values()) == {"json"}
    assert _values(empty_url) == before

"""Migration 0006: the claim's partial indexes on pending deliveries replace the indexes on
every delivery, and come back off on downgrade; on both databases."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, inspect, text

from contactsync.migrate import alembic_config
from tests.integration.test_migration_identities import empty_url  # noqa: F401 (fixture)


def _indexes(url: str) -> dict[str, list[str | None]]:
    engine = create_engine(url)
    try:
        return {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes(
            "webhook_deliveries") if (ix["name"] or "").startswith("ix_")}
    finally:
        engine.dispose()


def _partial(url: str) -> dict[str, str]:
    """Each index's condition (lower case, spaces folded), as the database stores it."""
    engine = create_engine(url)
    sql = ("SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'webhook_deliveries'"
           if url.startswith("postgresql") else
           "SELECT name, sql FROM sqlite_master WHERE type = 'index' "
           "AND tbl_name = 'webhook_deliveries' AND sql IS NOT NULL")
    try:
        with engine.connect() as connection:
            definitions = {name: definition for name, definition in connection.execute(text(sql))}
    finally:
        engine.dispose()
    return {name: " ".join(d.lower().split(" where ", 1)[1].replace("(", "").replace(")", "")
                           .replace("::text", "").split())
            for name, d in definitions.items() if " where " in d.lower()}


def test_claim_indexes_come_and_go(empty_url: str) -> None:  # noqa: F811
    command.upgrade(alembic_config(empty_url), "0005_jsonb")
    before = _indexes(empty_url)
    assert before == {"ix_webhook_deliveries_order": ["endpoint_id", "contact_id", "sequence"],
                      "ix_webhook_deliveries_due": ["status", "next_attempt_at"]}

    command.upgrade(alembic_config(empty_url), "0006_webhook_claim_indexes")
    assert _indexes(empty_url) == {
        "ix_webhook_deliveries_due": ["next_attempt_at", "id"],
        "ix_webhook_deliveries_pending": ["endpoint_id", "contact_id", "sequence", "id"],
        "ix_webhook_deliveries_in_flight": ["endpoint_id", "contact_id"],
    }

    assert _partial(empty_url) == {
        "ix_webhook_deliveries_due": "status = 'pending'",
        "ix_webhook_deliveries_pending": "status = 'pending'",
        "ix_webhook_deliveries_in_flight": "status = 'pending' and claimed_until is not null",
    }

    command.downgrade(alembic_config(empty_url), "0005_jsonb")
    assert _partial(empty_url) == {}
    assert _indexes(empty_url) == before

"""Migration 0006: the claim's partial indexes on pending deliveries replace the indexes on
every delivery, and come back off on downgrade; on both databases."""

from __future__ import annotations

from alembic import command
from sqlalchemy import create_engine, inspect

from contactsync.migrate import alembic_config
from tests.integration.test_migration_identities import empty_url  # noqa: F401 (fixture)


def _indexes(url: str) -> dict[str, list[str | None]]:
    engine = create_engine(url)
    try:
        return {ix["name"]: ix["column_names"] for ix in inspect(engine).get_indexes(
            "webhook_deliveries") if (ix["name"] or "").startswith("ix_")}
    finally:
        engine.dispose()


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

    command.downgrade(alembic_config(empty_url), "0005_jsonb")
    assert _indexes(empty_url) == before

"""Migration 0007: deliveries already queued behind a pending one of their contact are parked,
and every parked one is due again on downgrade; on both databases."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from alembic import command
from sqlalchemy import Engine, create_engine, text

from contactsync.migrate import alembic_config
from contactsync.timeutil import as_utc
from contactsync.webhook_claims import PARKED
from tests.integration.test_migration_identities import empty_url  # noqa: F401 (fixture)

_NOW = datetime(2026, 12, 5, tzinfo=UTC)


def _insert(engine: Engine) -> None:
    with engine.begin() as connection:
        connection.execute(text("INSERT INTO accounts (id, name, created_at) "
                                "VALUES ('acc_1', 'a', :now)"), {"now": _NOW})
        connection.execute(text(
            "INSERT INTO webhook_endpoints (id, account_id, url, events, description, enabled, "
            "secret_ciphertext, created_at, updated_at) VALUES ('whk_1', 'acc_1', "
            "'https://a.example/h', '[]', '', true, 'c', :now, :now)"), {"now": _NOW})
        # (contact, sequence, status, in flight until): cnt_1's head, three behind it, one of
        # them in flight, one whose lease lapsed; cnt_2's only one; cnt_3's finished one and
        # its pending next.
        for n, (contact, sequence, status, lease) in enumerate((
            ("cnt_1", 1, "pending", None), ("cnt_1", 2, "pending", None),
            ("cnt_1", 3, "pending", _NOW + timedelta(days=3650)),
            ("cnt_1", 4, "pending", _NOW - timedelta(days=1)),
            ("cnt_2", 1, "pending", None),
            ("cnt_3", 1, "succeeded", None), ("cnt_3", 2, "pending", None),
        )):
            connection.execute(text(
                "INSERT INTO webhook_deliveries (endpoint_id, event_id, contact_id, sequence, "
                "status, attempts, next_attempt_at, created_at, claimed_until) VALUES ('whk_1', "
                ":event, :contact, :sequence, :status, 0, :now, :now, :lease)"),
                {"event": f"evt_{n}", "contact": contact, "sequence": sequence,
                 "status": status, "now": _NOW, "lease": lease})


def _parked(engine: Engine) -> list[tuple[str, int]]:
    with engine.connect() as connection:
        rows = connection.execute(text(
            "SELECT contact_id, sequence, next_attempt_at FROM webhook_deliveries "
            "ORDER BY contact_id, sequence"))
        # SQLite gives the time back as text, in UTC without its zone
        return [(c, s) for c, s, at in rows
                if (as_utc(at) if isinstance(at, datetime) else
                    datetime.fromisoformat(at).replace(tzinfo=UTC)) == PARKED]


def test_queued_deliveries_are_parked_and_unparked(empty_url: str) -> None:  # noqa: F811
    command.upgrade(alembic_config(empty_url), "0006_webhook_claim_indexes")
    engine = create_engine(empty_url)
    try:
        _insert(engine)
        command.upgrade(alembic_config(empty_url), "0007_park_queued_deliveries")
        assert _parked(engine) == [("cnt_1", 2), ("cnt_1", 4)]  # in flight or a head: due
        command.downgrade(alembic_config(empty_url), "0006_webhook_claim_indexes")
        assert _parked(engine) == []
    finally:
        engine.dispose()

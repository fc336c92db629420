"""webhook claim indexes: pending deliveries by endpoint and due time, by contact, in flight

A claim scans an endpoint's due deliveries in the order they are sent and keeps each whose
contact has no earlier one pending and none in flight (contactsync/webhook_claims.py): an
ordered index scan and two index probes a row, on partial indexes that hold only pending rows.
They replace the indexes on every delivery's (endpoint, contact, sequence) and (status, due).

Revision ID: 0006_webhook_claim_indexes
Revises: 0005_jsonb
Create Date: 2026-12-04 22:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006_webhook_claim_indexes"
down_revision = "0005_jsonb"
branch_labels = None
depends_on = None

_PENDING = sa.text("status = 'pending'")
_IN_FLIGHT = sa.text("status = 'pending' AND claimed_until IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries",
                    ["next_attempt_at", "id"],
                    postgresql_where=_PENDING, sqlite_where=_PENDING)
    op.create_index("ix_webhook_deliveries_pending", "webhook_deliveries",
                    ["endpoint_id", "contact_id", "sequence", "id"],
                    postgresql_where=_PENDING, sqlite_where=_PENDING)
    op.create_index("ix_webhook_deliveries_in_flight", "webhook_deliveries",
                    ["endpoint_id", "contact_id"],
                    postgresql_where=_IN_FLIGHT, sqlite_where=_IN_FLIGHT)
    op.drop_index("ix_webhook_deliveries_order", table_name="webhook_deliveries")


def downgrade() -> None:
    op.create_index("ix_webhook_deliveries_order", "webhook_deliveries",
                    ["endpoint_id", "contact_id", "sequence"])
    op.drop_index("ix_webhook_deliveries_in_flight", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_pending", table_name="webhook_deliveries")
    op.drop_index("ix_webhook_deliveries_due", table_name="webhook_deliveries")
    op.create_index("ix_webhook_deliveries_due", "webhook_deliveries",
                    ["status", "next_attempt_at"])

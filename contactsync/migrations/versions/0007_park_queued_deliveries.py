"""park queued deliveries: those behind a pending one of their contact wait out of the scan

From this revision the deliveries behind a head that waits for its retry are parked
(`next_attempt_at` far in the future), and each is made due when the one before it finishes
(contactsync/webhook_claims.py). Upgrade parks every delivery already queued behind an
earlier pending one (behind a head that is due too: harmless, it is made due in turn);
downgrade makes every parked one due again, since the code before never would.

Revision ID: 0007_park_queued_deliveries
Revises: 0006_webhook_claim_indexes
Create Date: 2026-12-05 01:00:00
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision = "0007_park_queued_deliveries"
down_revision = "0006_webhook_claim_indexes"
branch_labels = None
depends_on = None

# contactsync.webhook_claims.PARKED as this revision knows it.
PARKED = datetime(9999, 1, 1, tzinfo=UTC)

_deliveries = sa.table(
    "webhook_deliveries", sa.column("id", sa.BigInteger), sa.column("endpoint_id", sa.String),
    sa.column("contact_id", sa.String), sa.column("sequence", sa.BigInteger),
    sa.column("status", sa.String), sa.column("next_attempt_at", sa.DateTime(timezone=True)),
    sa.column("claimed_until", sa.DateTime(timezone=True)),
)


def upgrade() -> None:
    d = _deliveries
    earlier = _deliveries.alias("earlier")
    now = datetime.now(UTC)
    op.execute(
        sa.update(d)
        .where(
            d.c.status == "pending",
            sa.or_(d.c.claimed_until.is_(None), d.c.claimed_until <= now),
            sa.select(earlier.c.id).where(
                earlier.c.endpoint_id == d.c.endpoint_id,
                earlier.c.contact_id == d.c.contact_id, earlier.c.status == "pending",
                sa.tuple_(earlier.c.sequence, earlier.c.id) < sa.tuple_(d.c.sequence, d.c.id),
            ).exists(),
        )
        .values(next_attempt_at=PARKED)
    )


def downgrade() -> None:
    d = _deliveries
    op.execute(
        sa.update(d).where(d.c.status == "pending", d.c.next_attempt_at == PARKED)
        .values(next_attempt_at=datetime.now(UTC))
    )

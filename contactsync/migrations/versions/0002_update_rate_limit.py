"""api key update rate limit: the bucket a batch's items spend from

Revision ID: 0002_update_rate_limit
Revises: 0001
Create Date: 2026-12-04 13:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_update_rate_limit"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.add_column(sa.Column("update_rate_limit_per_second", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_keys") as batch:
        batch.drop_column("update_rate_limit_per_second")

"""identities: external_ids on contacts, and contact_identities, unique within an account

Revision ID: 0003_identities
Revises: 0002_update_rate_limit
Create Date: 2026-12-04 14:05:00

Existing contacts get their identities. Where two contacts of an account already share one
(an email in two cases, say), the oldest (by created_at, then id) holds it; the others keep
their value, unchanged, but are not found by it, and a write that gives it to them again is a
conflict naming the holder. Nothing is deleted or changed.
"""

from __future__ import annotations

import logging
from typing import Any

import sqlalchemy as sa
from alembic import op

from contactsync.identities import identities_of

revision = "0003_identities"
down_revision = "0002_update_rate_limit"
branch_labels = None
depends_on = None

log = logging.getLogger("alembic.runtime.migration")
_CHUNK = 1000


def upgrade() -> None:
    with op.batch_alter_table("contacts") as batch:
        batch.add_column(
            sa.Column("external_ids", sa.JSON(), nullable=False, server_default=sa.text("'{}'"))
        )
    identities = op.create_table(
        "contact_identities",
        sa.Column("account_id", sa.String(length=32), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("field", sa.String(length=64), nullable=False),
        sa.Column("contact_id", sa.String(length=32), nullable=False),
        sa.ForeignKeyConstraint(["contact_id"], ["contacts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("account_id", "key"),
    )
    op.create_index("ix_contact_identities_contact", "contact_identities", ["contact_id"])
    _fill(identities)


def _fill(identities: sa.Table) -> None:
    contacts = sa.table(
        "contacts", sa.column("id"), sa.column("account_id"), sa.column("email"),
        sa.column("linkedin_url"), sa.column("created_at"),
    )
    connection = op.get_bind()
    held: set[tuple[str, str]] = set()
    rows: list[dict[str, Any]] = []
    unindexed = 0
    query = sa.select(contacts).order_by(contacts.c.created_at, contacts.c.id)
    for contact in connection.execute(query):
        fields = {"email": contact.email, "linkedin_url": contact.linkedin_url}
        for field, key in identities_of(fields, {}).items():
            if (contact.account_id, key) in held:
                unindexed += 1
                continue
            held.add((contact.account_id, key))
            rows.append({"account_id": contact.account_id, "key": key, "field": field,
                         "contact_id": contact.id})
    for start in range(0, len(rows), _CHUNK):
        connection.execute(sa.insert(identities), rows[start:start + _CHUNK])
    if unindexed:
        log.warning(
            "%d identities already held by an older contact of the same account were left "
            "unindexed (the contacts keep their values; see README, Identities)", unindexed
        )


def downgrade() -> None:
    op.drop_index("ix_contact_identities_contact", table_name="contact_identities")
    op.drop_table("contact_identities")
    with op.batch_alter_table("contacts") as batch:
        batch.drop_column("external_ids")

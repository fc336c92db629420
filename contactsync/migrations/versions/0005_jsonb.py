"""jsonb: a contact's tags, custom fields, external ids and field sequences as JSONB on PostgreSQL

The worker's write path reads these columns back on the server (`jsonb_to_recordset`), and
JSONB is parsed once when written, not at every read. SQLite keeps JSON: nothing to do there.

Revision ID: 0005_jsonb
Revises: 0004_webhooks
Create Date: 2026-12-04 16:30:00
"""

from __future__ import annotations

from alembic import op

revision = "0005_jsonb"
down_revision = "0004_webhooks"
branch_labels = None
depends_on = None

_COLUMNS = ("tags", "custom_fields", "external_ids", "field_seqs")


def _convert(to: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    # One ALTER TABLE: the table is rewritten once, not once per column.
    op.execute("ALTER TABLE contacts " + ", ".join(
        f"ALTER COLUMN {column} TYPE {to} USING {column}::{to}" for column in _COLUMNS
    ))
    # external_ids' default was the text '{}', typed json; it is jsonb now.
    op.execute(f"ALTER TABLE contacts ALTER COLUMN external_ids SET DEFAULT '{{}}'::{to}")


def upgrade() -> None:
    _convert("jsonb")


def downgrade() -> None:
    _convert("json")

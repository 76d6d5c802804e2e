"""Schema compatibility: each migration records the oldest release that runs on its schema.

A release refuses a database only when the schema is older than its own newest revision, or
newer and declared incompatible with it: after an additive `outbox migrate`, the processes of the
release before keep serving, restart, and can be rolled back to. From this revision on, every
migration calls `declare_compatibility` (README, "Upgrading").

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from outbox.db.migrate import declare_compatibility

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None
# Additive (one new table): the release before runs on it unchanged.
compatible_with = "0008"


def upgrade() -> None:
    op.create_table(
        "schema_compat",
        sa.Column("revision", sa.Text),
        sa.Column("down_revision", sa.Text),
        sa.Column("compatible_with", sa.Text, nullable=False),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("revision", name="pk_schema_compat"),
        schema="outbox",
    )
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    op.drop_table("schema_compat", schema="outbox")

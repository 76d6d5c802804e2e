"""Webhook origin: whether a stored webhook body came with checked credentials, and its size.

A channel may take webhooks without authentication (`webhook_auth = "none"`); the statuses of such
bodies must not find rows by the guessable outbox id, so the reconciler has to know, per row, how
the body came in. The receiver records it; rows stored before this revision, by an older replica
during a rolling update, or written into the table by another service keep the default (true):
they are trusted as they always were, like the database role that wrote them.

The size of the body as received (`body_bytes`) bounds the reconciler's work per transaction
by bytes, not rows: the stored jsonb size cannot, because PostgreSQL compresses it, and a body of
28,000 identical small statuses compresses very well. NULL for rows written by other means: the
reconciler measures those when it takes them.

Adding columns with a constant default (or none) does not rewrite the table.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "webhook_events",
        sa.Column("authenticated", sa.Boolean(), nullable=False, server_default=sa.true()),
        schema="outbox",
    )
    op.add_column("webhook_events", sa.Column("body_bytes", sa.Integer()), schema="outbox")


def downgrade() -> None:
    op.drop_column("webhook_events", "body_bytes", schema="outbox")
    op.drop_column("webhook_events", "authenticated", schema="outbox")

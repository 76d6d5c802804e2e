"""Shared rate limit: a token bucket and a throttle hold per channel, in `channel_state`.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "channel_state",
        sa.Column("tokens", sa.Float, nullable=False, server_default=sa.text("0")),
        schema="outbox",
    )
    op.add_column(
        "channel_state",
        sa.Column(
            "refilled_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        schema="outbox",
    )
    # The effective rate after throttling; NULL while it is the configured rate.
    op.add_column("channel_state", sa.Column("rate", sa.Float), schema="outbox")
    op.add_column(
        "channel_state", sa.Column("hold_until", sa.DateTime(timezone=True)), schema="outbox"
    )


def downgrade() -> None:
    for column in ("hold_until", "rate", "refilled_at", "tokens"):
        op.drop_column("channel_state", column, schema="outbox")

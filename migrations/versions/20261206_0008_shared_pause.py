"""Shared pause and throttle: one truth per channel across replicas, in `channel_state`.

`slowed_at` is when the shared rate was last cut (one cut per throttling event, whichever replica
saw it). `pause_epoch` counts the pauses a success (or a new key) ended: a failure may extend only
a pause of the epoch it was sent in, so no failure re-pauses a channel that recovered after its
request left. `pause_key` is the fingerprint (never the key) of the API key whose answers caused a
credential pause, so that a new key lifts it in every replica.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Additive, with constant defaults: no table rewrite, and the old release's statements
    # (which never name these columns) keep working on the new schema.
    op.add_column(
        "channel_state", sa.Column("slowed_at", sa.DateTime(timezone=True)), schema="outbox"
    )
    op.add_column(
        "channel_state",
        sa.Column("pause_epoch", sa.BigInteger, nullable=False, server_default=sa.text("0")),
        schema="outbox",
    )
    op.add_column("channel_state", sa.Column("pause_key", sa.Text), schema="outbox")


def downgrade() -> None:
    for column in ("pause_key", "pause_epoch", "slowed_at"):
        op.drop_column("channel_state", column, schema="outbox")

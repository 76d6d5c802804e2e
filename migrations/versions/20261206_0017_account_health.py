"""Account health and the log of WABA-level events (issue 18 §5).

`account_health`: per channel, what number-quality and capability webhooks last said: the
quality event (FLAGGED, THROUGHPUT_UPGRADE, ...), the messaging-limit fields (`current_limit`,
`old_limit`, `max_daily_conversations_per_business`, `max_phone_numbers_per_waba`) and when the
throughput was last upgraded; a later messaging-limit budget reads it, `outbox stats` shows it.

`account_events`: every template, quality, account, capability and preference event a
reconciler read, with what it did (a pause, a lift, a template change, ignored because its body
was not authenticated ...): the operator's trail for alerts such as a scheduled disable.

Additive: two new tables, nothing else changes. The release before runs on it.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None
# Additive: the release before still runs on this schema.
compatible_with = "0016"


def upgrade() -> None:
    op.create_table(
        "account_health",
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("waba_id", sa.Text),
        sa.Column("display_phone_number", sa.Text),
        sa.Column("quality_event", sa.Text),
        sa.Column("current_limit", sa.Text),
        sa.Column("old_limit", sa.Text),
        sa.Column("max_daily_conversations", sa.Text),
        sa.Column("max_phone_numbers", sa.Integer),
        sa.Column("throughput_upgraded_at", sa.DateTime(timezone=True)),
        sa.Column("event_at", sa.DateTime(timezone=True)),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("channel"),
        schema="outbox",
    )
    op.create_table(
        "account_events",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False)),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("waba_id", sa.Text),
        sa.Column("kind", sa.Text, nullable=False),
        sa.Column("event", sa.Text, nullable=False),
        sa.Column("effect", sa.Text, nullable=False),
        sa.Column("detail", sa.Text),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("webhook_event_id", sa.BigInteger),
        sa.Column(
            "recorded_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("id"),
        schema="outbox",
    )
    op.create_index(
        "ix_account_events_channel_at", "account_events", ["channel", "at"], schema="outbox"
    )
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    op.drop_table("account_events", schema="outbox")
    op.drop_table("account_health", schema="outbox")

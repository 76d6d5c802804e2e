"""Reconciliation: status history, parked statuses, and a wake-up for new webhook rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _ts(name: str, **kwargs: object) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), **kwargs)  # type: ignore[arg-type]


def upgrade() -> None:
    op.create_table(
        "status_history",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("message_id", sa.BigInteger, nullable=False),
        sa.Column("wamid", sa.Text, nullable=False),
        sa.Column("status", sa.Text, nullable=False),
        _ts("at", nullable=False),
        _ts("recorded_at", nullable=False, server_default=sa.func.now()),
        sa.Column("verdict", sa.Text, nullable=False),
        sa.Column("error_code", sa.Text),
        sa.Column("error_title", sa.Text),
        sa.Column("error_detail", sa.Text),
        sa.Column("webhook_event_id", sa.BigInteger),
        sa.PrimaryKeyConstraint("id", name="pk_status_history"),
        schema="outbox",
    )
    # The same notification delivered twice is one history entry.
    op.create_index(
        "ix_status_history_message_id",
        "status_history",
        ["message_id", "wamid", "status", "at"],
        unique=True,
        schema="outbox",
    )
    op.create_table(
        "parked_statuses",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("status", postgresql.JSONB, nullable=False),
        sa.Column("webhook_event_id", sa.BigInteger),
        _ts("parked_at", nullable=False, server_default=sa.func.now()),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        _ts("next_attempt_at", nullable=False, server_default=sa.func.now()),
        _ts("orphaned_at"),
        sa.PrimaryKeyConstraint("id", name="pk_parked_statuses"),
        schema="outbox",
    )
    op.create_index(
        "ix_parked_statuses_next_attempt_at",
        "parked_statuses",
        ["next_attempt_at"],
        schema="outbox",
        postgresql_where=sa.text("orphaned_at IS NULL"),
    )
    op.execute(
        """
        CREATE FUNCTION outbox.notify_webhook_stored() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('outbox_webhooks', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER webhook_events_inserted_notify
        AFTER INSERT ON outbox.webhook_events
        FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_webhook_stored()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS webhook_events_inserted_notify ON outbox.webhook_events")
    op.execute("DROP FUNCTION IF EXISTS outbox.notify_webhook_stored()")
    op.drop_table("parked_statuses", schema="outbox")
    op.drop_table("status_history", schema="outbox")

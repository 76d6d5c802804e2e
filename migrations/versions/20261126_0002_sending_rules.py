"""Sending rules: per-recipient order, retry and schedule index, pacing, channel pauses.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Must agree with outbox.domain.request.normalise_recipient for every valid recipient.
WA_ID = r"regexp_replace(recipient, '[[:space:]().+-]', '', 'g')"


def upgrade() -> None:
    op.add_column(
        "messages",
        sa.Column("wa_id", sa.Text, sa.Computed(WA_ID, persisted=True), nullable=False),
        schema="outbox",
    )
    op.add_column(
        "messages",
        sa.Column("unknown_resends", sa.SmallInteger, nullable=False, server_default="0"),
        schema="outbox",
    )
    op.drop_index("ix_messages_claim", "messages", schema="outbox")
    # Rows ready now, best first. Rows waiting for a retry or a future send_after carry a
    # next_attempt_at and live in ix_messages_due instead, so however many rows back off,
    # a claim never walks past them.
    op.create_index(
        "ix_messages_ready",
        "messages",
        ["channel", sa.text("priority DESC"), "id"],
        schema="outbox",
        postgresql_where=sa.text("state = 'queued' AND next_attempt_at IS NULL"),
    )
    op.create_index(
        "ix_messages_due",
        "messages",
        ["channel", "next_attempt_at"],
        schema="outbox",
        postgresql_where=sa.text("state = 'queued' AND next_attempt_at IS NOT NULL"),
    )
    # The open rows of one recipient, oldest first: the claim sends only the oldest.
    op.create_index(
        "ix_messages_recipient",
        "messages",
        ["channel", "wa_id", "id"],
        schema="outbox",
        postgresql_where=sa.text("state IN ('queued', 'sending', 'unknown')"),
    )
    op.create_index(
        "ix_messages_expiry",
        "messages",
        ["expires_at"],
        schema="outbox",
        postgresql_where=sa.text("state = 'queued' AND expires_at IS NOT NULL"),
    )
    op.create_index(
        "ix_messages_unknown",
        "messages",
        ["updated_at"],
        schema="outbox",
        postgresql_where=sa.text("state = 'unknown'"),
    )
    op.execute(
        """
        CREATE FUNCTION outbox.schedule_inserted_message() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            NEW.next_attempt_at := NEW.send_after;
            RETURN NEW;
        END
        $$
        """
    )
    # WHEN keeps the common case (send now) free of any trigger call.
    op.execute(
        """
        CREATE TRIGGER messages_scheduled BEFORE INSERT ON outbox.messages
        FOR EACH ROW WHEN (NEW.send_after > now() AND NEW.next_attempt_at IS NULL)
        EXECUTE FUNCTION outbox.schedule_inserted_message()
        """
    )
    op.execute(
        "UPDATE outbox.messages SET next_attempt_at = send_after"
        " WHERE state = 'queued' AND send_after > now() AND next_attempt_at IS NULL"
    )
    op.create_table(
        "recipient_pace",
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("wa_id", sa.Text, nullable=False),
        sa.Column("not_before", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("channel", "wa_id", name="pk_recipient_pace"),
        schema="outbox",
    )
    op.create_table(
        "channel_state",
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("paused_until", sa.DateTime(timezone=True)),
        sa.Column("pause_reason", sa.Text),
        sa.Column("paused_by", sa.Text),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("channel", name="pk_channel_state"),
        schema="outbox",
    )


def downgrade() -> None:
    op.drop_table("channel_state", schema="outbox")
    op.drop_table("recipient_pace", schema="outbox")
    op.execute("DROP TRIGGER IF EXISTS messages_scheduled ON outbox.messages")
    op.execute("DROP FUNCTION IF EXISTS outbox.schedule_inserted_message()")
    for name in (
        "ix_messages_unknown",
        "ix_messages_expiry",
        "ix_messages_recipient",
        "ix_messages_due",
        "ix_messages_ready",
    ):
        op.drop_index(name, "messages", schema="outbox")
    op.create_index(
        "ix_messages_claim",
        "messages",
        ["channel", sa.text("priority DESC"), "id"],
        schema="outbox",
        postgresql_where=sa.text("state = 'queued'"),
    )
    op.drop_column("messages", "unknown_resends", schema="outbox")
    op.drop_column("messages", "wa_id", schema="outbox")

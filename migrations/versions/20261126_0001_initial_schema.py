"""Initial schema: messages, contacts, webhook_events, and the insert NOTIFY trigger.

Revision ID: 0001
Revises:
Create Date: 2026-11-26
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from outbox.db.migrate import ENSURE_SCHEMA

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

STATES = (
    "queued",
    "sending",
    "unknown",
    "accepted",
    "sent",
    "delivered",
    "read",
    "failed",
    "expired",
    "cancelled",
)
SENT_AS = ("freeform", "template", "fallback_template")


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _ts(name: str, **kwargs: object) -> sa.Column:  # type: ignore[type-arg]
    return sa.Column(name, sa.DateTime(timezone=True), **kwargs)  # type: ignore[arg-type]


def upgrade() -> None:
    op.execute(ENSURE_SCHEMA)  # owned by the migrator role (README, "Database roles")
    op.create_table(
        "messages",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("recipient", sa.Text, nullable=False),
        sa.Column("payload", postgresql.JSONB, nullable=False),
        sa.Column("fallback_template", postgresql.JSONB),
        sa.Column("idempotency_key", sa.Text),
        sa.Column("priority", sa.SmallInteger, nullable=False, server_default=sa.text("0")),
        _ts("send_after", nullable=False, server_default=sa.func.now()),
        _ts("expires_at"),
        sa.Column("metadata", postgresql.JSONB),
        sa.Column("state", sa.Text, nullable=False, server_default=sa.text("'queued'")),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        _ts("next_attempt_at"),
        sa.Column("claimed_by", sa.Text),
        _ts("lease_until"),
        sa.Column("wamid", sa.Text),
        sa.Column("sent_as", sa.Text),
        sa.Column("error_code", sa.Text),
        sa.Column("error_title", sa.Text),
        sa.Column("error_detail", sa.Text),
        _ts("created_at", nullable=False, server_default=sa.func.now()),
        _ts("updated_at", nullable=False, server_default=sa.func.now()),
        _ts("accepted_at"),
        _ts("sent_at"),
        _ts("delivered_at"),
        _ts("read_at"),
        _ts("failed_at"),
        sa.PrimaryKeyConstraint("id", name="pk_messages"),
        sa.UniqueConstraint(
            "channel", "idempotency_key", name="uq_messages_channel_idempotency_key"
        ),
        sa.CheckConstraint(_in("state", STATES), name="ck_messages_state"),
        sa.CheckConstraint(
            f"sent_as IS NULL OR {_in('sent_as', SENT_AS)}", name="ck_messages_sent_as"
        ),
        sa.CheckConstraint("jsonb_typeof(payload) = 'object'", name="ck_messages_payload_object"),
        schema="outbox",
    )
    op.create_index(
        "ix_messages_claim",
        "messages",
        ["channel", sa.text("priority DESC"), "id"],
        schema="outbox",
        postgresql_where=sa.text("state = 'queued'"),
    )
    op.create_index(
        "ix_messages_lease",
        "messages",
        ["lease_until"],
        schema="outbox",
        postgresql_where=sa.text("state = 'sending'"),
    )
    op.create_index(
        "ix_messages_wamid",
        "messages",
        ["wamid"],
        unique=True,
        schema="outbox",
        postgresql_where=sa.text("wamid IS NOT NULL"),
    )
    op.create_table(
        "contacts",
        sa.Column("channel", sa.Text, nullable=False),
        sa.Column("wa_id", sa.Text, nullable=False),
        _ts("last_inbound_at"),
        _ts("updated_at", nullable=False, server_default=sa.func.now()),
        sa.PrimaryKeyConstraint("channel", "wa_id", name="pk_contacts"),
        schema="outbox",
    )
    op.create_table(
        "webhook_events",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False), nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        _ts("received_at", nullable=False, server_default=sa.func.now()),
        sa.Column("payload", postgresql.JSONB, nullable=False),
        _ts("processed_at"),
        sa.Column("error", sa.Text),
        sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")),
        sa.PrimaryKeyConstraint("id", name="pk_webhook_events"),
        schema="outbox",
    )
    op.create_index(
        "ix_webhook_events_pending",
        "webhook_events",
        ["id"],
        schema="outbox",
        postgresql_where=sa.text("processed_at IS NULL"),
    )
    # One NOTIFY per inserting statement (not per row): a 10,000-row INSERT wakes the daemon once.
    op.execute(
        """
        CREATE FUNCTION outbox.notify_messages_inserted() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('outbox_messages', '');
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        """
        CREATE TRIGGER messages_inserted_notify
        AFTER INSERT ON outbox.messages
        FOR EACH STATEMENT EXECUTE FUNCTION outbox.notify_messages_inserted()
        """
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS messages_inserted_notify ON outbox.messages")
    op.execute("DROP FUNCTION IF EXISTS outbox.notify_messages_inserted()")
    op.drop_table("webhook_events", schema="outbox")
    op.drop_table("contacts", schema="outbox")
    op.drop_table("messages", schema="outbox")

"""Operations: replay lane and lineage, operator actions, an index for missing delivery reports.

The indexes are created with IF NOT EXISTS so that on a large table an operator can build them
beforehand with CREATE INDEX CONCURRENTLY (same names and definitions; see the README's
"Upgrading" section) and this revision then only swaps the ready index.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_READY = "state = 'queued' AND next_attempt_at IS NULL"


def upgrade() -> None:
    # When an operator last replayed the row; while it is set and the row is ready, the row
    # waits in the replay lane, which gets only a share of the channel's rate.
    op.add_column("messages", sa.Column("replayed_at", sa.DateTime(timezone=True)), schema="outbox")
    op.add_column(
        "messages",
        sa.Column("replays", sa.SmallInteger, nullable=False, server_default="0"),
        schema="outbox",
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_messages_replay ON outbox.messages "
        f"(channel, priority DESC, id) WHERE {_READY} AND replayed_at IS NOT NULL"
    )
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_messages_live ON outbox.messages "
        f"(channel, priority DESC, id) WHERE {_READY} AND replayed_at IS NULL"
    )
    op.drop_index("ix_messages_ready", "messages", schema="outbox")
    # Accepted rows still waiting for a delivery report, for the "DLR missing" gauge.
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_messages_undelivered ON outbox.messages "
        "(channel, accepted_at) WHERE state IN ('accepted', 'sent')"
    )
    op.create_table(
        "operator_actions",
        sa.Column("id", sa.BigInteger, sa.Identity(always=False)),
        sa.Column("message_id", sa.BigInteger, nullable=False),
        sa.Column("action", sa.Text, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()),
        sa.Column("actor", sa.Text, nullable=False),
        sa.Column("forced", sa.Boolean, nullable=False, server_default=sa.false()),
        # The row as it was before the action, so a replay never erases what happened.
        sa.Column("from_state", sa.Text, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("wamid", sa.Text),
        sa.Column("error_code", sa.Text),
        sa.Column("error_title", sa.Text),
        sa.Column("note", sa.Text),
        sa.PrimaryKeyConstraint("id", name="pk_operator_actions"),
        sa.CheckConstraint("action IN ('replay', 'cancel')", name="ck_operator_actions_action"),
        schema="outbox",
    )
    op.create_index(
        "ix_operator_actions_message_id", "operator_actions", ["message_id"], schema="outbox"
    )


def downgrade() -> None:
    op.drop_table("operator_actions", schema="outbox")
    op.drop_index("ix_messages_undelivered", "messages", schema="outbox")
    op.create_index(
        "ix_messages_ready",
        "messages",
        ["channel", sa.text("priority DESC"), "id"],
        schema="outbox",
        postgresql_where=sa.text(_READY),
    )
    op.drop_index("ix_messages_live", "messages", schema="outbox")
    op.drop_index("ix_messages_replay", "messages", schema="outbox")
    op.drop_column("messages", "replays", schema="outbox")
    op.drop_column("messages", "replayed_at", schema="outbox")

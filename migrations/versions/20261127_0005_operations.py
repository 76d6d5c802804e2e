"""Operations: replay lane and lineage, operator actions, an index for missing delivery reports.

The new indexes are built CONCURRENTLY, so producers keep inserting while a large table is
indexed. A run that was interrupted can simply be repeated.

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
_BEST_FIRST = "(channel, priority DESC, id)"
_INDEXES = {
    "ix_messages_replay": f"{_BEST_FIRST} WHERE {_READY} AND replayed_at IS NOT NULL",
    "ix_messages_live": f"{_BEST_FIRST} WHERE {_READY} AND replayed_at IS NULL",
    # Accepted rows still waiting for a delivery report, for the "DLR missing" gauge.
    "ix_messages_undelivered": "(channel, accepted_at) WHERE state IN ('accepted', 'sent')",
}


def upgrade() -> None:
    # When an operator last replayed the row; while it is set and the row is ready, the row
    # waits in the replay lane, which gets only a share of the channel's rate.
    # IF NOT EXISTS: the index builds below commit this part on its own, so a run interrupted
    # after it must be able to start again.
    op.execute(
        "ALTER TABLE outbox.messages ADD COLUMN IF NOT EXISTS replayed_at timestamptz, "
        "ADD COLUMN IF NOT EXISTS replays smallint NOT NULL DEFAULT 0"
    )
    # Built without blocking producers' inserts: CONCURRENTLY cannot run in a transaction.
    with op.get_context().autocommit_block():
        for name, definition in _INDEXES.items():
            # An interrupted build leaves an INVALID index of that name: start it afresh.
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS outbox.{name}")
            op.execute(f"CREATE INDEX CONCURRENTLY {name} ON outbox.messages {definition}")
    op.drop_index("ix_messages_ready", "messages", schema="outbox")
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

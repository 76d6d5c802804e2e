"""Which channels have rows due, and when the next comes due, in one cheap statement.

The sender no longer asks every configured channel in turn: it asks the database which
channels have claimable heads (a skip scan over the live and replay indexes) and which have
retries due (`ix_messages_due_at`, over every channel by time), and when the next retry or paced
recipient comes due (`ix_messages_due_at`, `ix_recipient_pace_not_before`).

Additive: two indexes, the one on `messages` built CONCURRENTLY. The release before runs on it
(it does not read them; it pays their small write cost).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None
# Additive: the release before still runs on this schema.
compatible_with = "0012"

_DUE_AT = "(next_attempt_at) WHERE state = 'queued' AND next_attempt_at IS NOT NULL AND head"


def upgrade() -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS outbox.ix_messages_due_at")
        op.execute(f"CREATE INDEX CONCURRENTLY ix_messages_due_at ON outbox.messages {_DUE_AT}")
    op.execute(
        "CREATE INDEX IF NOT EXISTS ix_recipient_pace_not_before "
        "ON outbox.recipient_pace (not_before)"
    )
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    op.execute("DROP INDEX IF EXISTS outbox.ix_recipient_pace_not_before")
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS outbox.ix_messages_due_at")

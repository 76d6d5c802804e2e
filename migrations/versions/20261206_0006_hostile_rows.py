"""Hostile rows: one recipient normalisation in SQL and Python; replicas' channels.

`wa_id` becomes every character of `recipient` but the ASCII digits removed. Python accepts a
recipient only if it is digits once its Unicode spaces (`str.isspace`, which covers the Zs
category), dashes, dots, parentheses and one leading `+` are removed, so for every valid
recipient the two agree by construction. The old expression kept the spaces PostgreSQL's
`[[:space:]]` does not match (U+00A0, U+001C-U+001F, ...), so such a row missed its window
and its place in line.

Changing a generated column's expression rewrites the table under an ACCESS EXCLUSIVE lock:
producers' INSERTs wait while it runs (about a second per million rows here).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

WA_ID = r"regexp_replace(recipient, '[^0-9]', '', 'g')"
OLD_WA_ID = r"regexp_replace(recipient, '[[:space:]().+-]', '', 'g')"
_OPEN = "state IN ('queued', 'sending', 'unknown')"


def _wa_id(expression: str) -> None:
    # Portable to every supported PostgreSQL (SET EXPRESSION needs 17): the column and the one
    # index on it are made again; the table is rewritten either way.
    op.drop_index("ix_messages_recipient", "messages", schema="outbox")
    op.drop_column("messages", "wa_id", schema="outbox")
    op.add_column(
        "messages",
        sa.Column("wa_id", sa.Text, sa.Computed(expression, persisted=True), nullable=False),
        schema="outbox",
    )
    op.create_index(
        "ix_messages_recipient",
        "messages",
        ["channel", "wa_id", "id"],
        schema="outbox",
        postgresql_where=sa.text(_OPEN),
    )


def upgrade() -> None:
    _wa_id(WA_ID)
    # The channels each replica knows, with its last heartbeat: during a rolling update that
    # adds a channel, old replicas fail its rows only once no live replica knows it.
    op.create_table(
        "replicas",
        sa.Column("worker_id", sa.Text, nullable=False),
        sa.Column("channels", postgresql.ARRAY(sa.Text), nullable=False),
        sa.Column(
            "seen_at", sa.DateTime(timezone=True), nullable=False, server_default=sa.func.now()
        ),
        sa.PrimaryKeyConstraint("worker_id", name="pk_replicas"),
        schema="outbox",
    )


def downgrade() -> None:
    op.drop_table("replicas", schema="outbox")
    _wa_id(OLD_WA_ID)

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


_HEADS = (
    f"""
-- A row is its recipient's head when no older row to the same recipient on the channel is open.
-- wa_id is not computed yet in a BEFORE trigger: the expression is the column's own.
CREATE FUNCTION outbox.message_is_head(channel text, recipient text, id bigint) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT NOT EXISTS (
        SELECT 1 FROM outbox.messages AS e
        WHERE e.channel = $1 AND e.wa_id = {WA_ID.replace("recipient", "$2")} AND e.id < $3
          AND e.{_OPEN})
$$
    """,
    f"""
CREATE FUNCTION outbox.mark_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Written out rather than calling message_is_head: a function call per inserted row
    -- costs as much as the probe itself.
    NEW.head := NOT EXISTS (
        SELECT 1 FROM outbox.messages AS e
        WHERE e.channel = NEW.channel AND e.wa_id = {WA_ID.replace("recipient", "NEW.recipient")}
          AND e.id < NEW.id AND e.{_OPEN});
    RETURN NEW;
END
$$
    """,
    f"""
-- A head that ends hands the line to the recipient's oldest open row.
CREATE FUNCTION outbox.promote_next() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE outbox.messages SET head = true, updated_at = now()
    WHERE id = (SELECT e.id FROM outbox.messages AS e
                WHERE e.channel = NEW.channel AND e.wa_id = NEW.wa_id AND e.{_OPEN}
                ORDER BY e.id LIMIT 1)
      AND NOT head;
    RETURN NULL;
END
$$
    """,
    """
CREATE TRIGGER messages_head BEFORE INSERT ON outbox.messages
FOR EACH ROW EXECUTE FUNCTION outbox.mark_head()
    """,
    f"""
-- A row that opens again (an operator's replay, a late window refusal) takes its place in line.
CREATE TRIGGER messages_reopened BEFORE UPDATE OF state ON outbox.messages
FOR EACH ROW WHEN (OLD.{_OPEN.replace("state", "state NOT")} AND NEW.{_OPEN})
EXECUTE FUNCTION outbox.mark_head()
    """,
    f"""
CREATE TRIGGER messages_head_ended AFTER UPDATE OF state ON outbox.messages
FOR EACH ROW WHEN (OLD.{_OPEN} AND NEW.{_OPEN.replace("state", "state NOT")})
EXECUTE FUNCTION outbox.promote_next()
    """,
)

_READY = "state = 'queued' AND next_attempt_at IS NULL AND head"
_BEST_FIRST = "(channel, priority DESC, id)"
# Only recipients' heads where the claim looks: a backlog to one recipient is not walked.
_INDEXES = {
    "ix_messages_replay": f"{_BEST_FIRST} WHERE {_READY} AND replayed_at IS NOT NULL",
    "ix_messages_live": f"{_BEST_FIRST} WHERE {_READY} AND replayed_at IS NULL",
    "ix_messages_due": "(channel, next_attempt_at) "
    "WHERE state = 'queued' AND next_attempt_at IS NOT NULL AND head",
    # The rows waiting behind a head, for the sweep that repairs a missed hand-over.
    "ix_messages_waiting": "(channel, wa_id, id) WHERE state = 'queued' AND NOT head",
}
_OLD_INDEXES = {
    "ix_messages_replay": f"{_BEST_FIRST} WHERE state = 'queued' AND next_attempt_at IS NULL "
    "AND replayed_at IS NOT NULL",
    "ix_messages_live": f"{_BEST_FIRST} WHERE state = 'queued' AND next_attempt_at IS NULL "
    "AND replayed_at IS NULL",
    "ix_messages_due": "(channel, next_attempt_at) "
    "WHERE state = 'queued' AND next_attempt_at IS NOT NULL",
}


def _build(indexes: dict[str, str]) -> None:
    # Built without blocking producers' inserts; an interrupted run can be repeated.
    with op.get_context().autocommit_block():
        for name, definition in indexes.items():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS outbox.{name}")
            op.execute(f"CREATE INDEX CONCURRENTLY {name} ON outbox.messages {definition}")


def upgrade() -> None:
    _wa_id(WA_ID)
    op.add_column(
        "messages",
        sa.Column("head", sa.Boolean, nullable=False, server_default=sa.true()),
        schema="outbox",
    )
    for statement in _HEADS:
        op.execute(statement)
    op.execute(
        f"UPDATE outbox.messages AS m SET head = false WHERE m.{_OPEN}"
        " AND NOT outbox.message_is_head(m.channel, m.recipient, m.id)"
    )
    _build(_INDEXES)
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
    op.drop_index("ix_messages_waiting", "messages", schema="outbox")
    for name in ("messages_head_ended", "messages_reopened", "messages_head"):
        op.execute(f"DROP TRIGGER {name} ON outbox.messages")
    for function in ("promote_next()", "mark_head()", "message_is_head(text, text, bigint)"):
        op.execute(f"DROP FUNCTION outbox.{function}")
    _build(_OLD_INDEXES)
    op.drop_column("messages", "head", schema="outbox")
    _wa_id(OLD_WA_ID)

"""Order per recipient, scoped and released: `messages.ordering_key`; no borrowed holds.

A line (rows sent one at a time, in insertion order) is a channel, a recipient and the
producer's `ordering_key`: empty by default (NULL is read as empty), so strict order per
recipient stays the default, and rows with different keys to one recipient no longer wait for
each other (a one-time password beside an order notice that backs off). Pair pacing stays per
recipient. The head triggers of 0006 now keep one head per line.

A head that backs off no longer lends its retry time to the rows behind it (they are not heads,
so no claim index holds them anyway): when it ends, by a result, an expiry, a cancel or a
status, the next row goes at once. A row that becomes head keeps only its own `send_after`,
which also releases the times that releases before this one lent, in the database now and
from old replicas during the rollout.

Additive: a new column with a constant default (no rewrite), new indexes built CONCURRENTLY,
replaced trigger functions. The release before runs on it (its order checks, per recipient,
are stricter than the lines).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None
# Additive: the release before still runs on this schema.
compatible_with = "0010"

_OPEN = "state IN ('queued', 'sending', 'unknown')"
_DIGITS = "regexp_replace({}, '[^0-9]', '', 'g')"
# The time a row that becomes head may go: its own schedule, never a time another row lent.
_OWN_TIME = "CASE WHEN send_after > now() THEN send_after END"


def _functions(line: str, wa_id_line: str) -> list[str]:
    """The 0006 head functions over lines; `line` matches `e` to NEW, `wa_id_line` does so
    before NEW.wa_id is computed (a BEFORE trigger)."""
    return [
        f"""
CREATE OR REPLACE FUNCTION outbox.mark_head() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    {"NEW.ordering_key := coalesce(NEW.ordering_key, '');" if "ordering_key" in line else ""}
    -- Written out rather than calling a function: a call per inserted row costs as much as
    -- the probe itself.
    NEW.head := NOT EXISTS (
        SELECT 1 FROM outbox.messages AS e
        WHERE {wa_id_line} AND e.id < NEW.id AND e.{_OPEN});
    RETURN NEW;
END
$$
        """,
        f"""
CREATE OR REPLACE FUNCTION outbox.promote_next() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE outbox.messages SET head = true, next_attempt_at = {_OWN_TIME}, updated_at = now()
    WHERE id = (SELECT e.id FROM outbox.messages AS e
                WHERE {line} AND e.{_OPEN}
                ORDER BY e.id LIMIT 1)
      AND NOT head;
    RETURN NULL;
END
$$
        """,
    ]


_LINE = "e.channel = NEW.channel AND e.wa_id = NEW.wa_id AND e.ordering_key = NEW.ordering_key"
_NEW_LINE = (
    f"e.channel = NEW.channel AND e.wa_id = {_DIGITS.format('NEW.recipient')}"
    " AND e.ordering_key = NEW.ordering_key"
)
_OLD_LINE = "e.channel = NEW.channel AND e.wa_id = NEW.wa_id"
_OLD_NEW_LINE = f"e.channel = NEW.channel AND e.wa_id = {_DIGITS.format('NEW.recipient')}"

# New indexes first, old ones dropped after: the order probes never go without one.
_INDEXES = {
    # The order probe, the head triggers and the repair: one line's open rows.
    "ix_messages_line": f"(channel, wa_id, ordering_key, id) WHERE {_OPEN}",
    # The rows waiting behind a head, for the sweep that repairs a missed hand-over.
    "ix_messages_line_waiting": "(channel, wa_id, ordering_key, id) "
    "WHERE state = 'queued' AND NOT head",
    # Rows in flight (a few hundred at most): a newer row in flight holds an older one opened
    # again, and pair pacing holds a recipient while any of its rows is in flight.
    "ix_messages_in_flight": "(channel, wa_id, ordering_key, id) WHERE state = 'sending'",
}
_OLD_INDEXES = {
    "ix_messages_recipient": f"(channel, wa_id, id) WHERE {_OPEN}",
    "ix_messages_waiting": "(channel, wa_id, id) WHERE state = 'queued' AND NOT head",
}


def _build(create: dict[str, str], drop: dict[str, str]) -> None:
    # Without blocking producers' inserts; an interrupted run can be repeated.
    with op.get_context().autocommit_block():
        for name, definition in create.items():
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS outbox.{name}")
            op.execute(f"CREATE INDEX CONCURRENTLY {name} ON outbox.messages {definition}")
        for name in drop:
            op.execute(f"DROP INDEX CONCURRENTLY IF EXISTS outbox.{name}")


def upgrade() -> None:
    op.add_column(
        "messages",
        sa.Column("ordering_key", sa.Text, nullable=False, server_default=""),
        schema="outbox",
    )
    # Checked without holding producers off: NOT VALID, then validated under a light lock.
    op.execute(
        "ALTER TABLE outbox.messages ADD CONSTRAINT ck_messages_ordering_key"
        " CHECK (octet_length(ordering_key) <= 200) NOT VALID"
    )
    op.execute("ALTER TABLE outbox.messages VALIDATE CONSTRAINT ck_messages_ordering_key")
    _build(_INDEXES, _OLD_INDEXES)
    for statement in _functions(_LINE, _NEW_LINE):
        op.execute(statement)
    # Times lent by a backing-off head to the rows behind it: released (non-heads carry no
    # retry time of their own; only the claim gives one, and only heads are claimed).
    op.execute(
        f"UPDATE outbox.messages SET next_attempt_at = {_OWN_TIME}"
        f" WHERE state = 'queued' AND NOT head AND next_attempt_at IS DISTINCT FROM {_OWN_TIME}"
    )
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    # 0006's functions, which read no ordering_key.
    for statement in _functions(_OLD_LINE, _OLD_NEW_LINE):
        op.execute(statement.replace(f"next_attempt_at = {_OWN_TIME}, ", ""))
    _build(_OLD_INDEXES, _INDEXES)
    op.drop_constraint("ck_messages_ordering_key", "messages", schema="outbox")
    op.drop_column("messages", "ordering_key", schema="outbox")

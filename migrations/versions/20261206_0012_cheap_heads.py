"""Cheap head maintenance for bulk inserts: one probe per line a statement inserts, not per row.

0006/0011 decided `head` in a BEFORE INSERT row trigger that probed the line's index for every
inserted row: a 101,000-row INSERT took 7.6 to 10.1 s against 2.65 s without it. Now:

- a row trigger with no query decides the rows whose previous row in the same statement is of
  the same line and open (a backlog to one recipient): not heads; every other row stays a head
  (the column's default) and remembers its line in a transaction-local setting, reset by a
  BEFORE statement trigger;
- an AFTER statement trigger over the inserted rows (a transition table) settles the rest in
  two set-based updates: a row left a head that has an older open row in its line stops
  being one (a campaign's rows, each in its own line, cost one index probe each inside one
  plan); and in each line, the first row the row trigger made a non-head becomes a head again
  if no older open row exists (its predecessor was never inserted: ON CONFLICT DO NOTHING, or
  explicit ids out of order). Both read only lines, ids and states, so `head` ends exactly as
  0011 defined it: no older open row in the line (channel, wa_id, ordering_key).

A row opened again (replay) keeps 0011's row trigger, and a head that ends still promotes the
next one row by row: those are updates of single rows.

Additive (new functions and triggers, the insert trigger of 0006 replaced in one transaction):
the release before runs on it, as it never inserts messages itself.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None
# Additive: the release before still runs on this schema.
compatible_with = "0011"

_OPEN = "state IN ('queued', 'sending', 'unknown')"
_LINE = "e.channel = n.channel AND e.wa_id = n.wa_id AND e.ordering_key = n.ordering_key"
_OLDER_OPEN = f"SELECT 1 FROM outbox.messages AS e WHERE {_LINE} AND e.id < n.id AND e.{_OPEN}"

_UPGRADE = (
    """
CREATE FUNCTION outbox.start_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('outbox.insert_line', '', true);
    RETURN NULL;
END
$$
    """,
    f"""
-- The same line as the previous row of this statement, both open: not a head, no query needed.
-- The raw recipient stands for wa_id (not computed yet in a BEFORE trigger): two spellings of
-- one number only miss this shortcut, and the statement trigger decides those rows.
CREATE FUNCTION outbox.mark_run() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    line text;
BEGIN
    NEW.ordering_key := coalesce(NEW.ordering_key, '');
    IF NEW.{_OPEN.replace("state", "state NOT")} THEN
        PERFORM set_config('outbox.insert_line', '', true);
        RETURN NEW;
    END IF;
    line := NEW.channel || chr(31) || NEW.recipient || chr(31) || NEW.ordering_key;
    NEW.head := current_setting('outbox.insert_line', true) IS DISTINCT FROM line;
    IF NEW.head THEN
        PERFORM set_config('outbox.insert_line', line, true);
    END IF;
    RETURN NEW;
END
$$
    """,
    f"""
CREATE FUNCTION outbox.settle_heads() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE outbox.messages AS m SET head = false
    FROM inserted AS n
    WHERE m.id = n.id AND n.head AND EXISTS ({_OLDER_OPEN});
    UPDATE outbox.messages AS m SET head = true
    FROM (SELECT min(id) AS id, channel, wa_id, ordering_key FROM inserted
          WHERE NOT head GROUP BY channel, wa_id, ordering_key) AS n
    WHERE m.id = n.id AND NOT EXISTS ({_OLDER_OPEN});
    RETURN NULL;
END
$$
    """,
    "DROP TRIGGER messages_head ON outbox.messages",
    """
CREATE TRIGGER messages_insert_started BEFORE INSERT ON outbox.messages
FOR EACH STATEMENT EXECUTE FUNCTION outbox.start_insert()
    """,
    """
CREATE TRIGGER messages_head BEFORE INSERT ON outbox.messages
FOR EACH ROW EXECUTE FUNCTION outbox.mark_run()
    """,
    """
CREATE TRIGGER messages_heads_settled AFTER INSERT ON outbox.messages
REFERENCING NEW TABLE AS inserted
FOR EACH STATEMENT EXECUTE FUNCTION outbox.settle_heads()
    """,
)


def upgrade() -> None:
    for statement in _UPGRADE:
        op.execute(statement)
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    op.execute("DROP TRIGGER messages_heads_settled ON outbox.messages")
    op.execute("DROP TRIGGER messages_head ON outbox.messages")
    op.execute("DROP TRIGGER messages_insert_started ON outbox.messages")
    op.execute(
        "CREATE TRIGGER messages_head BEFORE INSERT ON outbox.messages"
        " FOR EACH ROW EXECUTE FUNCTION outbox.mark_head()"
    )
    for function in ("settle_heads()", "mark_run()", "start_insert()"):
        op.execute(f"DROP FUNCTION outbox.{function}")

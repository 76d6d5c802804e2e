"""Hand a line over to its next row once per statement, not once per ended row.

0006's `messages_head_ended` ran a PL/pgSQL function for every row that left the open states
(queued, sending, unknown), each probing its line for the next open row: with a batch of 200
send answers, half the result write's time (13.5 of 27 ms in the issue 16 profile) went to 200
trigger calls that almost always found no row waiting. The same hand-over now runs once per
UPDATE statement over its transition tables: the lines some row of the statement left, each
probed once (`ix_messages_line`), the first open row made head on its own schedule, exactly
as before. The trigger sees every UPDATE of the table (a statement trigger with transition
tables cannot name columns); one that ends no row costs a join of its own rows and nothing
else.

Additive (a trigger and a function replaced, same results): the release before runs on it.

Revision ID: 0022
Revises: 0021
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = "0022"
down_revision = "0021"
branch_labels = None
depends_on = None
# Additive: the release before still runs on this schema.
compatible_with = "0021"

_OPEN = "state IN ('queued', 'sending', 'unknown')"

_HANDOVER = f"""
CREATE FUNCTION outbox.hand_over_lines() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- Asked first: the hand-over's own UPDATE fires this trigger again (a statement trigger
    -- fires even for no rows), and it ends no row, so the recursion stops there.
    IF NOT EXISTS (SELECT 1 FROM ended_old AS o JOIN ended_new AS n ON n.id = o.id
                   WHERE o.{_OPEN} AND NOT n.{_OPEN}) THEN
        RETURN NULL;
    END IF;
    UPDATE outbox.messages AS m
    SET head = true,
        -- its own schedule: never a time another row lent
        next_attempt_at = CASE WHEN m.send_after > now() THEN m.send_after END,
        updated_at = now()
    FROM (SELECT DISTINCT n.channel, n.wa_id, n.ordering_key
          FROM ended_old AS o JOIN ended_new AS n ON n.id = o.id
          WHERE o.{_OPEN} AND NOT n.{_OPEN}) AS line
    CROSS JOIN LATERAL (
        SELECT e.id FROM outbox.messages AS e
        WHERE e.channel = line.channel AND e.wa_id = line.wa_id
          AND e.ordering_key = line.ordering_key AND e.{_OPEN}
        ORDER BY e.id LIMIT 1) AS next
    WHERE m.id = next.id AND NOT m.head;
    RETURN NULL;
END
$$
"""

_ROW_TRIGGER = f"""
CREATE TRIGGER messages_head_ended AFTER UPDATE OF state ON outbox.messages
FOR EACH ROW WHEN (OLD.{_OPEN} AND NEW.{_OPEN.replace("state", "state NOT")})
EXECUTE FUNCTION outbox.promote_next()
"""

_STATEMENT_TRIGGER = """
CREATE TRIGGER messages_head_ended AFTER UPDATE ON outbox.messages
REFERENCING OLD TABLE AS ended_old NEW TABLE AS ended_new
FOR EACH STATEMENT EXECUTE FUNCTION outbox.hand_over_lines()
"""


def upgrade() -> None:
    op.execute(_HANDOVER)
    op.execute("DROP TRIGGER messages_head_ended ON outbox.messages")
    op.execute(_STATEMENT_TRIGGER)
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    op.execute("DROP TRIGGER messages_head_ended ON outbox.messages")
    op.execute(_ROW_TRIGGER)
    op.execute("DROP FUNCTION outbox.hand_over_lines()")

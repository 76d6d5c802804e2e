"""The head triggers update the rows they picked by id: no join the statistics can turn quadratic.

`settle_heads` (after an INSERT) and `hand_over_lines` (after an UPDATE that ends rows) joined
`messages` to their transition table. Statistics taken while another transaction's rows were
still being inserted (autovacuum's ANALYZE does that: pages full, no visible row) say the table
is empty, and the planner then walked `messages` as the outer side of a nested loop and probed
every inserted row once per row of the table: 2,000 rows inserted after such an ANALYZE took
13.3 s, 4,000,000 probes (issue 16; the scale benchmark's 20,000-row INSERT ran for minutes).
Now each statement first picks the ids (one probe per inserted or ended row, in an array) and
then updates `messages` through its primary key (`id = ANY(...)`), with sequential and bitmap
scans priced out: the update cannot become a scan of the table per id, and each probe stays on
`ix_messages_line` (the same statistics at 1,000,000 rows made it a bitmap scan of every older
row through the primary key, `id < n.id`: the scale benchmark's fairness INSERT never ended).
The guard that stops the hand-over's own recursion is planned per statement too, with the
transition tables' real sizes.

Additive (function bodies and settings; same results): the release before runs on it, and so
does the one before 0024 (0023), the last one released: `compatible_with` names it, or its
replicas would refuse the schema during a rolling update to this release.

Revision ID: 0025
Revises: 0024
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

from outbox.db.migrate import declare_compatibility, earlier_revision, forget_compatibility

revision = "0025"
down_revision = "0024"
branch_labels = None
depends_on = None
# Additive, like 0024: the release at 0023 still runs on this schema.
compatible_with = "0023"

_OPEN = "state IN ('queued', 'sending', 'unknown')"
_OLDER_OPEN = (
    "coalesce((SELECT true FROM outbox.messages AS e"
    " WHERE e.channel = n.channel AND e.wa_id = n.wa_id AND e.ordering_key = n.ordering_key"
    f" AND e.id < n.id AND e.{_OPEN} LIMIT 1), false)"
)

_SETTLE = f"""
CREATE OR REPLACE FUNCTION outbox.settle_heads() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    EXECUTE $probe$ UPDATE outbox.messages AS m SET head = false
    WHERE m.id = ANY(ARRAY(SELECT n.id FROM inserted AS n WHERE n.head AND {_OLDER_OPEN}))
    $probe$;
    EXECUTE $probe$ UPDATE outbox.messages AS m SET head = true
    WHERE m.id = ANY(ARRAY(
        SELECT n.id FROM (SELECT min(id) AS id, channel, wa_id, ordering_key FROM inserted
                          WHERE NOT head GROUP BY channel, wa_id, ordering_key) AS n
        WHERE NOT {_OLDER_OPEN}))
    $probe$;
    RETURN NULL;
END
$$
"""

_ENDED = f"FROM ended_old AS o JOIN ended_new AS n ON n.id = o.id WHERE o.{_OPEN} AND NOT n.{_OPEN}"

_HANDOVER = f"""
CREATE OR REPLACE FUNCTION outbox.hand_over_lines() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    ended boolean;
BEGIN
    -- Asked first: the hand-over's own UPDATE fires this trigger again (a statement trigger
    -- fires even for no rows), and it ends no row, so the recursion stops there.
    EXECUTE $probe$ SELECT EXISTS (SELECT 1 {_ENDED}) $probe$ INTO ended;
    IF NOT ended THEN
        RETURN NULL;
    END IF;
    EXECUTE $probe$ UPDATE outbox.messages AS m
    SET head = true,
        -- its own schedule: never a time another row lent
        next_attempt_at = CASE WHEN m.send_after > now() THEN m.send_after END,
        updated_at = now()
    WHERE m.id = ANY(ARRAY(
        SELECT next.id FROM (SELECT DISTINCT n.channel, n.wa_id, n.ordering_key {_ENDED}) AS line
        CROSS JOIN LATERAL (
            SELECT e.id FROM outbox.messages AS e
            WHERE e.channel = line.channel AND e.wa_id = line.wa_id
              AND e.ordering_key = line.ordering_key AND e.{_OPEN}
            ORDER BY e.id LIMIT 1) AS next))
      AND NOT m.head
    $probe$;
    RETURN NULL;
END
$$
"""

_FUNCTIONS = ("settle_heads()", "hand_over_lines()")
_SWITCHES = ("enable_seqscan", "enable_bitmapscan")


def _previous() -> tuple[str, str]:
    """0023's bodies, which the downgrade restores."""
    _, settle, _, handover = earlier_revision(__file__, "20261206_0023_probe_plans.py")._bodies()
    return settle, handover


def upgrade() -> None:
    op.execute(_SETTLE)
    op.execute(_HANDOVER)
    for function in _FUNCTIONS:  # CREATE OR REPLACE dropped any; every access goes by index
        for switch in _SWITCHES:
            op.execute(f"ALTER FUNCTION outbox.{function} SET {switch} = off")
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    for body in _previous():
        op.execute(body)
    for function in _FUNCTIONS:
        for switch in _SWITCHES:
            op.execute(f"ALTER FUNCTION outbox.{function} RESET {switch}")

"""Settle `head` with one index probe per inserted row, a plan no statistics can turn quadratic.

0012's statement trigger asked "is there an older open row in this line?" as EXISTS / NOT
EXISTS, which the planner turns into a semi or anti join between the inserted rows and the
open rows. Statistics taken while every row was finished say "about one open row", and then a
nested loop over the materialised open rows is the cheapest-looking plan: every inserted row
compared with every open row. A 1,000,000-row INSERT of the scale benchmark spent more than 25
minutes there. Written as a scalar subquery with LIMIT 1, the question stays a correlated probe
of `ix_messages_line` per row (the trick the claim's order check uses for the same reason).
Same definition of `head`, same results. CREATE OR REPLACE resets a function's properties, so
the body comes with 0018's: it runs as the schema owner (a producer may not update `head`).

Additive (a function body replaced): the release before runs on it.

Revision ID: 0021
Revises: 0020
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = "0021"
down_revision = "0020"
branch_labels = None
depends_on = None
# Additive: the release before still runs on this schema.
compatible_with = "0020"

_OLDER_OPEN = (
    "SELECT {what} FROM outbox.messages AS e"
    " WHERE e.channel = n.channel AND e.wa_id = n.wa_id AND e.ordering_key = n.ordering_key"
    " AND e.id < n.id AND e.state IN ('queued', 'sending', 'unknown')"
)
_PROBE = f"coalesce(({_OLDER_OPEN.format(what='true')} LIMIT 1), false)"
_JOIN = f"EXISTS ({_OLDER_OPEN.format(what='1')})"  # 0012's form

_SETTLE = """
CREATE OR REPLACE FUNCTION outbox.settle_heads() RETURNS trigger LANGUAGE plpgsql
SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE outbox.messages AS m SET head = false
    FROM inserted AS n
    WHERE m.id = n.id AND n.head AND {older};
    UPDATE outbox.messages AS m SET head = true
    FROM (SELECT min(id) AS id, channel, wa_id, ordering_key FROM inserted
          WHERE NOT head GROUP BY channel, wa_id, ordering_key) AS n
    WHERE m.id = n.id AND NOT {older};
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.execute(_SETTLE.format(older=_PROBE))
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    op.execute(_SETTLE.format(older=_JOIN))

"""The head and key triggers probe their indexes whatever the statistics said when their plan
was made.

PL/pgSQL (and, since PostgreSQL 18, SQL functions) keep a statement's plan for the session. A
plan made while a table was small prefers a sequential scan, and a later bulk statement in the
same session uses it once per row: the scale benchmark's 1,000,000-row INSERT ran for minutes in
`settle_heads`, each inserted row scanning the table (a backtrace showed its subplan comparing
text in a sequential scan; `tests/integration/test_heads_plan.py` reproduces it with 3,000 rows:
1.9 s, 3,000 rows read per row). Each function below asks one index probe per row it looks at;
with sequential scans priced out (`enable_seqscan = off`, for the function's own statements
only) the planner takes the index from the start.

Additive (function settings): the release before runs on it.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None
# Additive: the release before still runs on this schema.
compatible_with = "0022"

# The functions that probe per row (or per line) from a trigger.
_PROBING = (
    "settle_heads()",  # after an INSERT: an older open row of each inserted head's line?
    "hand_over_lines()",  # after an UPDATE: the next open row of each line a row left
    "mark_head()",  # a row opened again: an older open row of its line?
    "idempotency_key_purged(text, text)",  # an INSERT with a key: was the key purged?
)


def upgrade() -> None:
    for function in _PROBING:
        op.execute(f"ALTER FUNCTION outbox.{function} SET enable_seqscan = off")
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    for function in _PROBING:
        op.execute(f"ALTER FUNCTION outbox.{function} RESET enable_seqscan")

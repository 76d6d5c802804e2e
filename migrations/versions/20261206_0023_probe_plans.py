"""The head and key triggers probe their indexes whatever the statistics said when a plan was
kept.

PL/pgSQL (and, since PostgreSQL 18, SQL functions) keep a statement's plan for the session. A
plan made while the table was small chose a sequential scan (or, with that priced out, a bitmap
scan of the channel's rows through the idempotency-key index), and a later bulk statement in the
same session used it once per row: the scale benchmark's 1,000,000-row INSERT ran for many
minutes in `settle_heads`, each inserted row reading the table (seen with gdb and perf;
`tests/integration/test_heads_plan.py` reproduces it with 3,000 rows: 1.9 s, 3,000 rows read per
inserted row).

- The statement triggers (`settle_heads` after an INSERT, `hand_over_lines` after an UPDATE that
  ends rows) run their probing statements with EXECUTE: planned afresh once per statement, when
  the planner sees the table's current size, for a fraction of a millisecond.
- The row triggers (`mark_head` when a row opens again, `idempotency_key_purged` per keyed
  INSERT) keep their plans, with sequential and bitmap scans priced out for their own
  statements, which leaves the one index that answers their probe.

Additive (function bodies and settings; same results): the release before runs on it.

Revision ID: 0023
Revises: 0022
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

from outbox.db.migrate import declare_compatibility, earlier_revision, forget_compatibility

revision = "0023"
down_revision = "0022"
branch_labels = None
depends_on = None
# Additive: the release before still runs on this schema.
compatible_with = "0022"

_ROW_PROBES = ("mark_head()", "idempotency_key_purged(text, text)")


def _dynamic(body: str, statement: str) -> str:
    """`statement` (a complete SQL statement in `body`) run by EXECUTE instead."""
    plain = statement.strip().rstrip(";")
    assert plain in body, plain[:60]
    return body.replace(plain, f"EXECUTE $probe$ {plain} $probe$")


def _bodies() -> tuple[str, str, str, str]:
    settle, handover = (
        earlier_revision(__file__, "20261206_0021_settle_probes.py"),
        earlier_revision(__file__, "20261206_0022_statement_handover.py"),
    )
    old_settle = settle._SETTLE.format(older=settle._PROBE)
    new_settle = old_settle
    for update in old_settle.split("BEGIN", 1)[1].split("RETURN NULL;")[0].split(";"):
        if update.strip():
            new_settle = _dynamic(new_settle, update)
    old_handover = handover._HANDOVER.replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION")
    update = "UPDATE" + old_handover.split("    UPDATE", 1)[1].split(";", 1)[0]
    return old_settle, new_settle, old_handover, _dynamic(old_handover, update)


def _apply(settle: str, handover: str, setting: str) -> None:
    """The two statement triggers' bodies, and `setting` ("SET x = off" / "RESET x") of the
    planner switches on the row triggers' probes."""
    op.execute(settle)
    op.execute(handover)
    for function in _ROW_PROBES:
        for switch in ("enable_seqscan", "enable_bitmapscan"):
            op.execute(f"ALTER FUNCTION outbox.{function} {setting.format(switch)}")


def upgrade() -> None:
    _, settle, _, handover = _bodies()
    _apply(settle, handover, "SET {} = off")
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    settle, _, handover, _ = _bodies()
    _apply(settle, handover, "RESET {}")

"""Least-privilege database roles (issue 19 §1): what the README's role snippets rely on.

Two things the roles need from the schema, and no role name (those are the operator's choice,
so the snippets in the README's "Database roles" create the roles, their grants and the
row-level policies):

- `outbox.producer_channels` (`producer`, `channel`): which producer role may write and read
  which channels' rows; the producers' row-level policy on `outbox.messages` reads it.
- The insert triggers that touch other tables run as the schema owner (SECURITY DEFINER, with
  a fixed search_path): `mark_run` reads `outbox.identity_pairs` for a BSUID recipient and
  `settle_heads` updates `messages.head` of the rows just inserted. Without it a producer with
  only INSERT on its columns cannot insert at all ("permission denied for table messages"),
  and granting it UPDATE or `identity_pairs` would give it far more than its rows.

Additive (a table, function attributes): the release before runs on it unchanged. Enabling
row-level security is left to the README's snippet, so that upgrading alone never hides rows
from a producer that still has the old grants.

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None
# Additive: the release before still runs on this schema.
compatible_with = "0017"

# pg_temp last: a caller's temporary objects must never stand in for the owner's.
_DEFINER = ("mark_run()", "settle_heads()")


def upgrade() -> None:
    op.create_table(
        "producer_channels",
        sa.Column("producer", sa.Text, nullable=False),
        sa.Column("channel", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("producer", "channel", name="pk_producer_channels"),
        schema="outbox",
    )
    for function in _DEFINER:
        op.execute(
            f"ALTER FUNCTION outbox.{function} SECURITY DEFINER"
            " SET search_path = pg_catalog, pg_temp"
        )
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    for function in _DEFINER:
        op.execute(f"ALTER FUNCTION outbox.{function} SECURITY INVOKER RESET search_path")
    op.drop_table("producer_channels", schema="outbox")

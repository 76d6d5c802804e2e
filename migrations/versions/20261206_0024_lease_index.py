"""The lease index no longer answers the claim's in-flight probe.

`ix_messages_lease` (lease_until, of `sending` rows) exists for the lease rescue. Its predicate
was `state = 'sending'` alone, so the claim's probe "is a newer row of this line in flight?"
(`state = 'sending'` and the line) could use it too: with statistics from a moment when no row
was in flight both partial indexes look empty, the smaller lease index won, and each probe read
every row in flight instead of the line's few entries of `ix_messages_in_flight` (issue 16: 300
rows in flight, 100 channels, 19,700 probes a claim). With `lease_until IS NOT NULL` added, the
probe (which says nothing of leases) cannot use it; the rescue's `lease_until < now()` implies it
and still does. A row in flight always has a lease (the claim sets it), so the rows indexed are
the same.

Built CONCURRENTLY under a new name, then swapped in, so writers are never blocked and there is
always one lease index. Additive: the release before runs on it.

Revision ID: 0024
Revises: 0023
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = "0024"
down_revision = "0023"
branch_labels = None
depends_on = None
# Additive: the release before still runs on this schema.
compatible_with = "0023"

_NEW = "lease_until IS NOT NULL AND state = 'sending'"
_OLD = "state = 'sending'"


def _swap(predicate: str) -> None:
    with op.get_context().autocommit_block():
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS outbox.ix_messages_lease_next")
        op.execute(
            "CREATE INDEX CONCURRENTLY ix_messages_lease_next ON outbox.messages (lease_until)"
            f" WHERE {predicate}"
        )
        op.execute("DROP INDEX CONCURRENTLY IF EXISTS outbox.ix_messages_lease")
        op.execute("ALTER INDEX outbox.ix_messages_lease_next RENAME TO ix_messages_lease")


def upgrade() -> None:
    _swap(_NEW)
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    _swap(_OLD)

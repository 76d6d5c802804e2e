"""A function the daemon calls to refresh statistics that call `outbox.messages` empty.

An ANALYZE while another transaction's bulk INSERT is uncommitted (autovacuum's, at any moment)
records pages full of rows it cannot see: `reltuples = 0`. Until the next ANALYZE (autovacuum
comes back within `autovacuum_naptime`, a minute by default, when a worker is free) every plan
believes the table empty and picks its indexes blind: after 100,000 rows inserted so, each
claim's line probe walked a channel's every row through another index (5.4 s a claim) and the
hand-over trigger did the same per row written (issue 16). `outbox.refresh_statistics()`
compares the statistics with the live row count the cumulative statistics keep and, only when
they are off by more than ten times (and the table holds at least 10,000 rows), analyzes the
table. SECURITY DEFINER: ANALYZE needs the table's owner (the migrator), and the daemon role gets
EXECUTE on this function alone (README "Database roles"). A lock it cannot have at once (another
ANALYZE, a VACUUM) makes it give up rather than wait: the next call tries again.

Additive: the release before never calls it, and neither does the one at 0023, the last one
released (`compatible_with`).

Revision ID: 0026
Revises: 0025
Create Date: 2026-12-06
"""

from __future__ import annotations

from alembic import op

from outbox.db.migrate import declare_compatibility, forget_compatibility

revision = "0026"
down_revision = "0025"
branch_labels = None
depends_on = None
compatible_with = "0023"

_FUNCTION = """
CREATE FUNCTION outbox.refresh_statistics() RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET lock_timeout = '100ms'
AS $$
DECLARE
    believed double precision;
    live bigint;
BEGIN
    SELECT c.reltuples, s.n_live_tup INTO believed, live
    FROM pg_class AS c JOIN pg_stat_all_tables AS s ON s.relid = c.oid
    WHERE c.oid = 'outbox.messages'::regclass;
    IF live IS NULL OR live < 10000 OR live <= 10 * greatest(believed, 0) THEN
        RETURN NULL;
    END IF;
    ANALYZE outbox.messages;
    RETURN live;
EXCEPTION WHEN lock_not_available THEN
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.execute(_FUNCTION)
    op.execute("REVOKE ALL ON FUNCTION outbox.refresh_statistics() FROM PUBLIC")
    declare_compatibility(revision, down_revision, compatible_with)


def downgrade() -> None:
    forget_compatibility(revision)
    op.execute("DROP FUNCTION outbox.refresh_statistics()")

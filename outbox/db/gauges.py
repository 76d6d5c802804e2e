"""Reads behind the gauges on /metrics: backlog, waiting times, lag, database health.

Run on an interval by every process that serves /metrics, never per scrape, and each query
walks a partial index or a statistics view, so a large table costs no more than its backlog.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.errors import RUNTIME_HINT, privileges, translated
from outbox.db.sql import OPEN_STATES
from outbox.ports import Sample

# How long the oldest due row of each channel has waited: ready rows since they last became
# ready (inserted, replayed, requeued as a fallback: updated_at), retries and scheduled rows
# since their next_attempt_at.
OLDEST_DUE = """
    SELECT channel, min(due) AS oldest FROM (
        SELECT channel, min(greatest(send_after, updated_at)) AS due FROM outbox.messages
        WHERE state = 'queued' AND next_attempt_at IS NULL AND head GROUP BY channel
        UNION ALL
        SELECT channel, min(next_attempt_at) FROM outbox.messages
        WHERE state = 'queued' AND next_attempt_at <= now() AND head GROUP BY channel
    ) AS d GROUP BY channel
"""

_BACKLOG = text(
    f"""
    SELECT channel, state, count(*) AS n FROM outbox.messages
    WHERE state IN ({OPEN_STATES})
    GROUP BY channel, state
    """
)

_OLDEST_DUE = text(
    f"SELECT channel, extract(epoch FROM now() - oldest) AS seconds FROM ({OLDEST_DUE}) AS o"
)

_DLR_MISSING = text(
    """
    SELECT channel, count(*) AS n FROM outbox.messages
    WHERE state IN ('accepted', 'sent')
      AND accepted_at < now() - make_interval(secs => :after_seconds)
      AND accepted_at >= now() - make_interval(secs => :lookback_seconds)
    GROUP BY channel
    """
)

_WEBHOOKS = text(
    """
    SELECT (SELECT count(*) FROM outbox.webhook_events WHERE processed_at IS NULL) AS pending,
           (SELECT extract(epoch FROM now() - received_at) FROM outbox.webhook_events
            WHERE processed_at IS NULL ORDER BY id LIMIT 1) AS lag,
           (SELECT count(*) FROM outbox.parked_statuses WHERE orphaned_at IS NULL) AS parked
    """
)

_PAUSED = text("SELECT channel FROM outbox.channel_state WHERE paused_until > now()")

_DEAD_TUPLES = text(
    "SELECT relname, n_dead_tup FROM pg_stat_user_tables WHERE schemaname = 'outbox'"
)

# An open transaction in this database holds back vacuum of our tables. Only client sessions
# count (autovacuum's own long runs are not the problem), and this one is left out. Other roles'
# sessions are visible only with pg_read_all_stats (pg_monitor): see the README.
_OLDEST_TRANSACTION = text(
    """
    SELECT coalesce(max(extract(epoch FROM clock_timestamp() - xact_start)), 0)
    FROM pg_stat_activity
    WHERE xact_start IS NOT NULL AND pid <> pg_backend_pid()
      AND datname = current_database() AND backend_type = 'client backend'
    """
)


class GaugeStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @translated
    async def sample(self, dlr_missing_after: timedelta, dlr_lookback: timedelta) -> Sample:
        """Raises `PrivilegeMissing` when the role may not read what is sampled (a receiver's
        `outbox_web`, README "Database roles" 2b): no later sample would fare better."""
        with privileges(RUNTIME_HINT):
            return await self._sample(dlr_missing_after, dlr_lookback)

    async def _sample(self, dlr_missing_after: timedelta, dlr_lookback: timedelta) -> Sample:
        dlr = {
            "after_seconds": dlr_missing_after.total_seconds(),
            "lookback_seconds": dlr_lookback.total_seconds(),
        }
        async with self._engine.connect() as connection:
            backlog = (await connection.execute(_BACKLOG)).all()
            oldest = (await connection.execute(_OLDEST_DUE)).all()
            missing = (await connection.execute(_DLR_MISSING, dlr)).all()
            webhooks = (await connection.execute(_WEBHOOKS)).one()
            dead = (await connection.execute(_DEAD_TUPLES)).all()
            transaction = (await connection.execute(_OLDEST_TRANSACTION)).scalar_one()
            paused = (await connection.execute(_PAUSED)).scalars().all()
        return Sample(
            backlog={(r.channel, r.state): int(r.n) for r in backlog},
            oldest_due_seconds={r.channel: max(0.0, float(r.seconds)) for r in oldest},
            dlr_missing={r.channel: int(r.n) for r in missing},
            unprocessed_webhooks=int(webhooks.pending),
            reconciler_lag_seconds=max(0.0, float(webhooks.lag or 0)),
            parked_statuses=int(webhooks.parked),
            dead_tuples={r.relname: int(r.n_dead_tup) for r in dead},
            oldest_transaction_seconds=max(0.0, float(transaction)),
            paused_channels=frozenset(paused),
        )

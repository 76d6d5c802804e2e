"""The `channel_state` row every replica shares: the channel's token bucket, holds and pauses."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from outbox.db.errors import translated
from outbox.domain import ratelimit
from outbox.domain.ratelimit import Limits

# The channel's bucket, locked until the claim commits: claims on one channel take turns, in
# every replica, so together they never grant more than the bucket holds. The database's clock
# is the one clock all replicas share; clock_timestamp() (not the statement's start) because a
# claim that waited for the lock must count from when it got it, and the row lock's recheck
# evaluates it again after the wait.
LOCK_BUCKET = text(
    """
    SELECT tokens, refilled_at, rate, greatest(hold_until, paused_until) AS blocked_until,
           clock_timestamp() AS now
    FROM outbox.channel_state WHERE channel = :channel
    FOR UPDATE
    """
)

ENSURE_BUCKET = text(
    """
    INSERT INTO outbox.channel_state (channel, tokens, refilled_at)
    VALUES (:channel, :burst, now())
    ON CONFLICT (channel) DO NOTHING
    """
)

SLOW_DOWN_CHANNEL = text(
    """
    UPDATE outbox.channel_state
    SET tokens = CAST(:tokens AS double precision), rate = CAST(:rate AS double precision),
        refilled_at = :refilled_at,
        hold_until = greatest(
            hold_until, CAST(:now AS timestamptz) + make_interval(secs => :hold_seconds)
        ),
        updated_at = now()
    WHERE channel = :channel
    """
)

SET_PAUSE = text(
    """
    INSERT INTO outbox.channel_state AS s (channel, paused_until, pause_reason, paused_by)
    VALUES (:channel, :until, :reason, :worker)
    ON CONFLICT (channel) DO UPDATE
    SET paused_until = excluded.paused_until, pause_reason = excluded.pause_reason,
        paused_by = excluded.paused_by, updated_at = now()
    """
)


async def lock_bucket(
    connection: AsyncConnection, channel: str, limits: Limits
) -> tuple[ratelimit.Bucket, datetime, datetime | None]:
    """The channel's bucket, refilled up to now, locked for this transaction; the database's
    time; and until when the channel is held or paused."""
    row = (await connection.execute(LOCK_BUCKET, {"channel": channel})).one_or_none()
    if row is None:
        await connection.execute(ENSURE_BUCKET, {"channel": channel, "burst": limits.burst})
        row = (await connection.execute(LOCK_BUCKET, {"channel": channel})).one()
    stored = ratelimit.Bucket(row.tokens, row.refilled_at, row.rate)
    return ratelimit.refill(stored, row.now, limits), row.now, row.blocked_until


class ChannelStateStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @translated
    async def slow_down(
        self, channel: str, limits: Limits, hold: timedelta
    ) -> tuple[float, datetime]:
        """A throttling answer: lower the channel's effective rate and hold its claims for
        `hold`, in every replica. Returns the new rate and when the hold ends."""
        async with self._engine.begin() as connection:
            bucket, now, _ = await lock_bucket(connection, channel, limits)
            slowed = ratelimit.slow_down(bucket, limits)
            await connection.execute(
                SLOW_DOWN_CHANNEL,
                {
                    "channel": channel,
                    "tokens": slowed.tokens,
                    "rate": slowed.rate,
                    "refilled_at": slowed.refilled_at,
                    "now": now,
                    "hold_seconds": hold.total_seconds(),
                },
            )
        return slowed.effective_rate(limits), now + hold

    @translated
    async def set_pause(
        self, channel: str, until: datetime | None, reason: str | None, worker: str
    ) -> None:
        """Record a channel's pause (or its end, with `until` None) where operators can see it."""
        params = {"channel": channel, "until": until, "reason": reason, "worker": worker}
        async with self._engine.begin() as connection:
            await connection.execute(SET_PAUSE, params)

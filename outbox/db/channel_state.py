"""The `channel_state` row every replica shares: the channel's token bucket, holds and pauses."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import Text

from outbox.db.arrays import ArrayColumns
from outbox.db.buckets import lock_bucket
from outbox.db.errors import translated
from outbox.domain import ratelimit
from outbox.domain.ratelimit import Limits

SLOW_DOWN_CHANNEL = text(
    """
    UPDATE outbox.channel_state
    SET tokens = CAST(:tokens AS double precision), rate = CAST(:rate AS double precision),
        refilled_at = :refilled_at, slowed_at = :slowed_at,
        hold_until = greatest(
            hold_until, CAST(:now AS timestamptz) + make_interval(secs => :hold_seconds)
        ),
        updated_at = now()
    WHERE channel = :channel
    """
)

# A pause row for a channel no claim has touched yet (its bucket starts empty).
ENSURE_PAUSE_ROW = text(
    "INSERT INTO outbox.channel_state (channel) VALUES (:channel) ON CONFLICT (channel) DO NOTHING"
)

# A failure pauses (or extends the pause of) only the epoch it was sent in: once any replica
# recorded a success (or a new key) the epoch moved on, and a failure from before it says nothing
# about the channel now. The pause only ever grows, and its end comes from the database's clock.
# A server-error extension keeps the key mark of a live credential pause.
PAUSE_CHANNEL = text(
    """
    UPDATE outbox.channel_state
    SET paused_until = greatest(
            paused_until, clock_timestamp() + make_interval(secs => :seconds)),
        pause_key = CASE WHEN CAST(:key AS text) IS NOT NULL THEN :key
                         WHEN paused_until > clock_timestamp() THEN pause_key END,
        pause_reason = :reason, paused_by = :worker, updated_at = now()
    WHERE channel = :channel AND pause_epoch = :epoch
    RETURNING paused_until
    """
)

_END_PAUSE = """
    paused_until = NULL, pause_reason = NULL, pause_key = NULL, paused_by = :worker,
    pause_epoch = pause_epoch + 1, updated_at = now()
"""
# A success wins for everyone: it ends the pause whoever wrote it, and moves the epoch on.
RESUME_CHANNEL = text(
    f"""
    UPDATE outbox.channel_state SET {_END_PAUSE}
    WHERE channel = :channel
    RETURNING pause_epoch
    """
)
# A new key ends a pause that another key's answers caused; for many channels at once (each
# with the fingerprint of its key in use), in channel order as the claim locks them.
KEYS = ArrayColumns((("channel", Text()), ("key", Text())))
LIFT_CREDENTIAL_PAUSES = KEYS.statement(
    f"""
    WITH lifted AS (
        SELECT s.channel FROM outbox.channel_state AS s JOIN {KEYS.unnest("k")}
            ON k.channel = s.channel
        WHERE s.pause_key IS NOT NULL AND s.pause_key <> k.key AND s.paused_until IS NOT NULL
        ORDER BY s.channel
        FOR UPDATE OF s
    )
    UPDATE outbox.channel_state AS s SET {_END_PAUSE}
    FROM lifted WHERE s.channel = lifted.channel
    RETURNING s.channel
    """
)

PAUSE_EPOCH = text("SELECT pause_epoch FROM outbox.channel_state WHERE channel = :channel")

# Issue 18: a spam-rate limit (131048) holds the channel's marketing traffic, in every replica;
# the hold only grows, and its end comes from the database's clock.
HOLD_MARKETING = text(
    """
    UPDATE outbox.channel_state
    SET marketing_hold_until = greatest(
            marketing_hold_until, clock_timestamp() + make_interval(secs => :seconds)),
        updated_at = now()
    WHERE channel = :channel
    RETURNING marketing_hold_until
    """
)
MARKETING_HOLD = text(
    """
    SELECT marketing_hold_until FROM outbox.channel_state
    WHERE channel = :channel AND marketing_hold_until > clock_timestamp()
    """
)


class ChannelStateStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @translated
    async def slow_down(
        self, channel: str, limits: Limits, hold: timedelta
    ) -> tuple[float, datetime]:
        """A throttling answer: lower the channel's effective rate, once per throttling event
        whichever replica saw it, and hold its claims for `hold`, in every replica. Returns the
        rate and when the hold ends."""
        async with self._engine.begin() as connection:
            locked = await lock_bucket(connection, channel, limits)
            bucket, now, slowed_at = locked.bucket, locked.now, locked.slowed_at
            if not ratelimit.same_throttle(now, slowed_at, locked.hold_until):
                bucket, slowed_at = ratelimit.slow_down(bucket, limits), now
            await connection.execute(
                SLOW_DOWN_CHANNEL,
                {
                    "channel": channel,
                    "tokens": bucket.tokens,
                    "rate": bucket.rate,
                    "refilled_at": bucket.refilled_at,
                    "slowed_at": slowed_at,
                    "now": now,
                    "hold_seconds": hold.total_seconds(),
                },
            )
        return bucket.effective_rate(limits), max(now + hold, locked.hold_until or now)

    @translated
    async def pause(
        self, channel: str, *, epoch: int, seconds: float, reason: str, worker: str, key: str | None
    ) -> bool:
        """Pause the channel for `seconds` from now (database time) in every replica, unless a
        success was recorded since `epoch`: then False, and nothing is written."""
        params = {
            "channel": channel,
            "epoch": epoch,
            "seconds": seconds,
            "reason": reason,
            "worker": worker,
            "key": key,
        }
        async with self._engine.begin() as connection:
            await connection.execute(ENSURE_PAUSE_ROW, {"channel": channel})
            return (await connection.execute(PAUSE_CHANNEL, params)).one_or_none() is not None

    @translated
    async def resume(self, channel: str, worker: str) -> int:
        """A probe succeeded: end the pause for every replica; returns the new epoch."""
        async with self._engine.begin() as connection:
            await connection.execute(ENSURE_PAUSE_ROW, {"channel": channel})
            epoch: int = (
                await connection.execute(RESUME_CHANNEL, {"channel": channel, "worker": worker})
            ).scalar_one()
        return epoch

    async def lift_credential_pause(self, channel: str, key: str, worker: str) -> bool:
        """The key changed (to the one `key` fingerprints): end a pause another key caused."""
        return bool(await self.lift_credential_pauses({channel: key}, worker))

    @translated
    async def lift_credential_pauses(self, keys: Mapping[str, str], worker: str) -> list[str]:
        """`lift_credential_pause` for many channels in one statement (each with the fingerprint
        of its key in use); returns the channels whose pause ended."""
        if not keys:
            return []
        params = {**KEYS.params(sorted(keys.items())), "worker": worker}
        async with self._engine.begin() as connection:
            rows = (await connection.execute(LIFT_CREDENTIAL_PAUSES, params)).all()
        return sorted(row.channel for row in rows)

    @translated
    async def hold_marketing(self, channel: str, seconds: float) -> datetime:
        """Hold the channel's marketing traffic for `seconds` from now (database time), in
        every replica; returns when the hold ends."""
        async with self._engine.begin() as connection:
            await connection.execute(ENSURE_PAUSE_ROW, {"channel": channel})
            until: datetime = (
                await connection.execute(HOLD_MARKETING, {"channel": channel, "seconds": seconds})
            ).scalar_one()
        return until

    @translated
    async def marketing_hold(self, channel: str) -> datetime | None:
        """When the channel's marketing hold ends; None when it has none."""
        async with self._engine.connect() as connection:
            until: datetime | None = (
                await connection.execute(MARKETING_HOLD, {"channel": channel})
            ).scalar()
        return until

    @translated
    async def pause_epoch(self, channel: str) -> int:
        """How many pauses a success or a new key has ended on the channel so far."""
        async with self._engine.connect() as connection:
            epoch = (await connection.execute(PAUSE_EPOCH, {"channel": channel})).scalar()
        return int(epoch or 0)

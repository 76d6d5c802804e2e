"""The channels' shared token buckets in `channel_state`: locked for a claim's transaction,
refilled up to the database's time, created full on a channel's first claim."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, NamedTuple

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Result
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import Float, Text

from outbox.db.arrays import ArrayColumns
from outbox.db.tuples import as_tuples
from outbox.domain import ratelimit
from outbox.domain.ratelimit import Limits

BUCKETS = ArrayColumns((("channel", Text()), ("burst", Float())))

# The channels' buckets, locked until the claim commits: claims on a channel take turns, in
# every replica, so together they never grant more than the bucket holds; locked in channel
# order, so two claims over overlapping channels cannot deadlock. The database's clock is the
# one clock all replicas share; clock_timestamp() (not the statement's start) because a claim
# that waited for a lock must count from when it got it, and the row lock's recheck evaluates it
# again after the wait.
LOCK_BUCKETS = text(
    """
    SELECT channel, tokens, refilled_at, rate,
           greatest(hold_until, paused_until) AS blocked_until,
           hold_until, slowed_at, pause_epoch, marketing_hold_until, clock_timestamp() AS now
    FROM outbox.channel_state WHERE channel = ANY(:channels)
    ORDER BY channel
    FOR UPDATE
    """
).bindparams(bindparam("channels", type_=ARRAY(Text())))

ENSURE_BUCKETS = BUCKETS.statement(
    f"""
    INSERT INTO outbox.channel_state (channel, tokens, refilled_at)
    SELECT channel, burst, now() FROM {BUCKETS.unnest("b")} ORDER BY channel
    ON CONFLICT (channel) DO NOTHING
    """
)

REANCHOR_BUCKET = text(
    "UPDATE outbox.channel_state SET refilled_at = :at, updated_at = now() WHERE channel = :channel"
)


class BucketRow(NamedTuple):
    """A row of LOCK_BUCKETS (`outbox.db.tuples`)."""

    channel: str
    tokens: float
    refilled_at: datetime
    rate: float | None
    blocked_until: datetime | None
    hold_until: datetime | None
    slowed_at: datetime | None
    pause_epoch: int
    marketing_hold_until: datetime | None
    now: datetime


class Locked(NamedTuple):
    bucket: ratelimit.Bucket  # refilled up to `now`
    now: datetime  # the database's time
    blocked_until: datetime | None  # until when the channel is held or paused
    hold_until: datetime | None
    slowed_at: datetime | None
    pause_epoch: int
    marketing_hold_until: datetime | None = None  # 131048 holds the channel's marketing


async def lock_bucket(connection: AsyncConnection, channel: str, limits: Limits) -> Locked:
    """The channel's row, its bucket refilled up to now, locked for this transaction."""
    return (await lock_buckets(connection, {channel: limits}))[channel]


async def lock_buckets(
    connection: AsyncConnection, limits: Mapping[str, Limits]
) -> dict[str, Locked]:
    """The channels' rows, their buckets refilled up to now, locked for this transaction."""
    channels = sorted(limits)
    params = {"channels": channels}
    rows = _locked(await connection.execute(LOCK_BUCKETS, params))
    if len(rows) < len(channels):  # a channel's first claim: its bucket starts full
        found = {row.channel for row in rows}
        await ensure_buckets(connection, {c: limits[c] for c in channels if c not in found})
        rows = _locked(await connection.execute(LOCK_BUCKETS, params))
    return {row.channel: await _refilled(connection, row, limits[row.channel]) for row in rows}


def _locked(result: Result[Any]) -> list[BucketRow]:
    return as_tuples(result, BucketRow._make, BucketRow._fields)


async def ensure_buckets(connection: AsyncConnection, limits: Mapping[str, Limits]) -> None:
    """A full bucket row for each channel that has none yet."""
    rows = [(channel, limits[channel].burst) for channel in sorted(limits)]
    await connection.execute(ENSURE_BUCKETS, BUCKETS.params(rows))


async def _refilled(connection: AsyncConnection, row: BucketRow, limits: Limits) -> Locked:
    stored = ratelimit.Bucket(row.tokens, row.refilled_at, row.rate)
    bucket = ratelimit.refill(stored, row.now, limits, row.hold_until)
    if bucket.refilled_at < stored.refilled_at:
        # The clock stepped back and the bucket re-anchored: keep the anchor even if this
        # transaction writes nothing else (a claim that got no token), or every claim would
        # re-anchor again and none would ever earn one.
        await connection.execute(
            REANCHOR_BUCKET, {"channel": row.channel, "at": bucket.refilled_at}
        )
    return Locked(
        bucket,
        row.now,
        row.blocked_until,
        row.hold_until,
        row.slowed_at,
        row.pause_epoch,
        row.marketing_hold_until,
    )

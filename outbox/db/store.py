"""The message store: claims under a lease, batched result writes, lease hand-back and rescue.

Every transaction here is short and none is open while a request is in flight: a claim commits
before the first byte goes to the API. Every state change is guarded by the state it expects and
by the worker that holds the lease, so a row that changed hands is never overwritten.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import TextClause, bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import BigInteger, DateTime, Integer, Text

from outbox.db.arrays import ArrayColumns
from outbox.db.tables import NOTIFY_CHANNEL
from outbox.domain import ratelimit
from outbox.domain.models import Claim, ClaimedMessage, SendResult, SentAs, State
from outbox.domain.outcome import EXPIRED_TITLE
from outbox.domain.ratelimit import Limits

# A row is claimable only if no older row to the same recipient on the channel is still open
# (queued, sending or unknown): one message per recipient at a time, in insertion order, and a
# head that ends (sent, failed, expired, cancelled) releases the next. Ready rows and due
# retries come from two indexes, so rows waiting for later are never walked past.
# The checks are scalar subqueries with LIMIT 1, not NOT EXISTS: the planner cannot turn them
# into an anti-join, which it would plan as a scan of every open row of the channel per
# candidate whenever the statistics predate a burst (about 1,000,000 rows read per claim of
# 100 from a fresh 20,000-row backlog). Each is one probe of ix_messages_recipient.
_CLAIMABLE = """
    SELECT m.id, m.priority, m.wa_id FROM outbox.messages AS m
    WHERE m.state = 'queued' AND m.channel = :channel AND {when}
      AND (SELECT 1 FROM outbox.messages AS e
           WHERE e.channel = m.channel AND e.wa_id = m.wa_id AND e.id < m.id
             AND e.state IN ('queued', 'sending', 'unknown')
           LIMIT 1) IS NULL
      AND (SELECT 1 FROM outbox.recipient_pace AS p
           WHERE p.channel = m.channel AND p.wa_id = m.wa_id AND p.not_before > now()
           LIMIT 1) IS NULL
    ORDER BY {order}
    LIMIT :limit
    FOR UPDATE OF m SKIP LOCKED
"""

_READY = "m.next_attempt_at IS NULL AND m.send_after <= now() AND m.replayed_at IS {} NULL"
_BEST_FIRST = "m.priority DESC, m.id"
_LIVE = _CLAIMABLE.format(when=_READY.format(""), order=_BEST_FIRST)
_REPLAYED = _CLAIMABLE.format(when=_READY.format("NOT"), order=_BEST_FIRST)
_DUE = _CLAIMABLE.format(when="m.next_attempt_at <= now()", order="m.next_attempt_at")
# Replayed rows (an operator's replay lane) go first up to :replay_quota, then live rows and
# due retries, then replayed rows again: each lane gets its share and takes what the other
# leaves, so a large replay never starves live traffic nor idles on a quiet channel.
_CLAIM = text(
    f"""
    WITH live AS ({_LIVE}), due AS ({_DUE}), replayed AS ({_REPLAYED}),
    picked AS (
        SELECT id, wa_id FROM (
            SELECT id, wa_id, priority, 1 AS lane FROM live
            UNION ALL SELECT id, wa_id, priority, 1 FROM due
            UNION ALL SELECT id, wa_id, priority,
                CASE WHEN row_number() OVER (ORDER BY priority DESC, id) <= :replay_quota
                     THEN 0 ELSE 2 END
            FROM replayed
        ) AS u
        ORDER BY lane, priority DESC, id
        LIMIT :limit
    ), claimed AS (
        UPDATE outbox.messages AS m
        SET state = 'sending', claimed_by = :worker, attempts = m.attempts + 1,
            lease_until = now() + make_interval(secs => :lease_seconds), updated_at = now()
        FROM picked LEFT JOIN outbox.contacts AS c
            ON c.channel = :channel AND c.wa_id = picked.wa_id
        WHERE m.id = picked.id
        RETURNING m.id, m.channel, m.recipient, m.payload, m.fallback_template, m.attempts,
                  m.created_at, m.expires_at, m.priority, m.sent_as, c.last_inbound_at
    ), spent AS (
        -- Tokens granted but not used (fewer rows were ready) go back into the bucket.
        UPDATE outbox.channel_state
        -- Casts: left to infer, the parameters would take count(*)'s bigint and lose the
        -- fraction of a token on every claim.
        SET tokens = least(
                CAST(:burst AS double precision),
                CAST(:tokens AS double precision) + :limit - (SELECT count(*) FROM claimed)),
            rate = CAST(:rate AS double precision), refilled_at = :refilled_at
        -- Nothing claimed: the bucket is as it was (a refill depends on time alone), and an
        -- idle channel's claims write nothing.
        WHERE channel = :channel AND EXISTS (SELECT 1 FROM claimed)
    )
    SELECT * FROM claimed
    """
).columns(payload=JSONB, fallback_template=JSONB)

# The channel's bucket, locked until the claim commits: claims on one channel take turns, in
# every replica, so together they never grant more than the bucket holds. The database's clock
# is the one clock all replicas share; clock_timestamp() (not the statement's start) because a
# claim that waited for the lock must count from when it got it, and the row lock's recheck
# evaluates it again after the wait.
_BUCKET = text(
    """
    SELECT tokens, refilled_at, rate, greatest(hold_until, paused_until) AS blocked_until,
           clock_timestamp() AS now
    FROM outbox.channel_state WHERE channel = :channel
    FOR UPDATE
    """
)

_ENSURE_BUCKET = text(
    """
    INSERT INTO outbox.channel_state (channel, tokens, refilled_at)
    VALUES (:channel, :burst, now())
    ON CONFLICT (channel) DO NOTHING
    """
)

_SLOW_DOWN = text(
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

_TIMESTAMP = DateTime(timezone=True)
_RESULTS = ArrayColumns(
    (
        ("id", BigInteger()),
        ("state", Text()),
        ("at", _TIMESTAMP),
        ("wamid", Text()),
        ("sent_as", Text()),
        ("error_code", Text()),
        ("error_title", Text()),
        ("error_detail", Text()),
        ("next_attempt_at", _TIMESTAMP),
        ("attempts_delta", Integer()),
        ("pace_until", _TIMESTAMP),
    )
)

# One statement per batch: write the outcomes; a row that backs off takes its recipient's later
# rows out of the ready index with it (they could not be sent before it anyway); a row sent to
# a paced recipient records when the next one may go.
_COMPLETE = _RESULTS.statement(
    f"""
    WITH r AS (SELECT * FROM {_RESULTS.unnest("r")}), done AS (
        UPDATE outbox.messages AS m SET
            state = r.state,
            attempts = m.attempts + r.attempts_delta,
            wamid = coalesce(r.wamid, m.wamid),
            sent_as = coalesce(r.sent_as, m.sent_as),
            error_code = r.error_code,
            error_title = r.error_title,
            error_detail = r.error_detail,
            next_attempt_at = r.next_attempt_at,
            accepted_at = CASE WHEN r.state = 'accepted' THEN r.at ELSE m.accepted_at END,
            failed_at = CASE WHEN r.state = 'failed' THEN r.at ELSE m.failed_at END,
            claimed_by = NULL, lease_until = NULL, updated_at = now()
        FROM r
        WHERE m.id = r.id AND m.state = 'sending' AND m.claimed_by = :worker
        RETURNING m.id, m.channel, m.wa_id, m.state, m.next_attempt_at, r.pace_until
    ), held AS (
        UPDATE outbox.messages AS f SET next_attempt_at = d.next_attempt_at, updated_at = now()
        FROM done AS d
        WHERE d.state = 'queued' AND d.next_attempt_at IS NOT NULL
          AND f.channel = d.channel AND f.wa_id = d.wa_id AND f.id > d.id AND f.state = 'queued'
          AND (f.next_attempt_at IS NULL OR f.next_attempt_at < d.next_attempt_at)
    ), paced AS (
        INSERT INTO outbox.recipient_pace AS p (channel, wa_id, not_before)
        SELECT channel, wa_id, max(pace_until) FROM done
        WHERE pace_until IS NOT NULL
        GROUP BY channel, wa_id
        ON CONFLICT (channel, wa_id)
            DO UPDATE SET not_before = greatest(p.not_before, excluded.not_before)
    )
    SELECT count(*) FROM done
    """
)

_RELEASE = text(
    """
    UPDATE outbox.messages
    SET state = 'queued', attempts = attempts - 1, claimed_by = NULL, lease_until = NULL,
        updated_at = now()
    WHERE id = ANY(:ids) AND state = 'sending' AND claimed_by = :worker
    """
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())))

# A lease that ran out while `sending` means its holder died mid-send: the request may have
# reached the API, so the row is not resent blindly but parked as `unknown` (or `expired`, if
# it may no longer be sent at all).
_RESCUE = text(
    """
    WITH lost AS (
        SELECT id FROM outbox.messages
        WHERE state = 'sending' AND lease_until < now()
        ORDER BY lease_until
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox.messages AS m
    SET state = CASE WHEN m.expires_at <= now() THEN 'expired' ELSE 'unknown' END,
        error_code = CASE WHEN m.expires_at <= now() THEN 'expired' ELSE 'lease_expired' END,
        error_title = 'the sending process stopped before recording an outcome',
        error_detail = 'lease held by ' || coalesce(m.claimed_by, '?') || ' expired',
        claimed_by = NULL, lease_until = NULL, updated_at = now()
    FROM lost WHERE m.id = lost.id
    RETURNING m.id, m.channel, m.state
    """
)

_EXPIRE = text(
    """
    WITH gone AS (
        SELECT id FROM outbox.messages
        WHERE state = 'queued' AND expires_at <= now()
        ORDER BY expires_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox.messages AS m
    SET state = 'expired', error_code = 'expired', error_title = :title,
        next_attempt_at = NULL, updated_at = now()
    FROM gone WHERE m.id = gone.id
    RETURNING m.id, m.channel, m.state
    """
)

# After the quiet period an `unknown` row with no evidence is sent once more (channels whose
# policy is "resend"); a row that went `unknown` again after that stays for an operator.
_RESEND_UNKNOWN = text(
    """
    WITH quiet AS (
        SELECT id FROM outbox.messages
        WHERE state = 'unknown' AND updated_at < now() - make_interval(secs => :quiet_seconds)
          AND unknown_resends < 1 AND channel = ANY(:channels)
        ORDER BY updated_at
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox.messages AS m
    SET state = CASE WHEN m.expires_at <= now() THEN 'expired' ELSE 'queued' END,
        unknown_resends = m.unknown_resends + 1,
        error_title = CASE WHEN m.expires_at <= now()
            THEN 'expires_at passed while the outcome was unknown'
            ELSE 'no status arrived for the unknown outcome: sending once more' END,
        error_code = CASE WHEN m.expires_at <= now() THEN 'expired' ELSE m.error_code END,
        next_attempt_at = NULL, updated_at = now()
    FROM quiet WHERE m.id = quiet.id
    """
).bindparams(bindparam("channels", type_=ARRAY(Text())))

# Distinct channels of open rows by skipping through an index, not by reading every row.
_OPEN_CHANNELS = text(
    """
    WITH RECURSIVE ch(channel) AS (
        (SELECT channel FROM outbox.messages
         WHERE state IN ('queued', 'sending', 'unknown') ORDER BY channel LIMIT 1)
        UNION ALL
        SELECT (SELECT m.channel FROM outbox.messages AS m
                WHERE m.state IN ('queued', 'sending', 'unknown') AND m.channel > ch.channel
                ORDER BY m.channel LIMIT 1)
        FROM ch WHERE ch.channel IS NOT NULL
    )
    SELECT channel FROM ch WHERE channel IS NOT NULL
    """
)

_FAIL_CHANNEL = text(
    """
    WITH bad AS (
        SELECT id FROM outbox.messages
        WHERE channel = :channel AND state = 'queued'
          AND created_at < now() - make_interval(secs => :grace_seconds)
        LIMIT :limit
        FOR UPDATE SKIP LOCKED
    )
    UPDATE outbox.messages AS m
    SET state = 'failed', error_code = 'unknown_channel',
        error_title = 'no channel with this id is configured',
        error_detail = :detail, failed_at = now(), next_attempt_at = NULL, updated_at = now()
    FROM bad WHERE m.id = bad.id
    RETURNING m.id, m.channel, m.state
    """
)

# Rows put back in the queue by an UPDATE fire no insert trigger: tell the senders directly.
WAKE_SENDERS = text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', '')")

_NEXT_DUE = text(
    """
    SELECT least(
        (SELECT min(next_attempt_at) FROM outbox.messages
         WHERE state = 'queued' AND channel = :channel AND next_attempt_at > now()),
        (SELECT min(not_before) FROM outbox.recipient_pace
         WHERE channel = :channel AND not_before > now()))
    """
)

_FORGET_PACE = text("DELETE FROM outbox.recipient_pace WHERE not_before < now()")

_SET_PAUSE = text(
    """
    INSERT INTO outbox.channel_state AS s (channel, paused_until, pause_reason, paused_by)
    VALUES (:channel, :until, :reason, :worker)
    ON CONFLICT (channel) DO UPDATE
    SET paused_until = excluded.paused_until, pause_reason = excluded.pause_reason,
        paused_by = excluded.paused_by, updated_at = now()
    """
)

_STATE_COUNTS = text(
    "SELECT channel, state, count(*) AS n FROM outbox.messages GROUP BY channel, state"
)


def _result_row(r: SendResult) -> tuple[object, ...]:
    return (
        r.message_id,
        r.state.value,
        r.at,
        r.wamid,
        r.sent_as.value if r.sent_as else None,
        r.error_code,
        r.error_title,
        r.error_detail,
        r.next_attempt_at,
        r.attempts_delta,
        r.pace_until,
    )


@dataclass(frozen=True, slots=True)
class Settled:
    """A row the maintenance loop moved on, for its log line."""

    id: int
    channel: str
    state: State


class MessageStore:
    def __init__(self, engine: AsyncEngine, rand: Callable[[], float] = random.random) -> None:
        self._engine = engine
        self._rand = rand

    async def claim(
        self, channel: str, limit: int, worker: str, lease: timedelta, limits: Limits
    ) -> Claim:
        """Lease up to `limit` due queued rows of `channel`, best priority first, as far as the
        channel's shared bucket allows."""
        async with self._engine.begin() as connection:
            bucket, now, blocked_until = await self._bucket(connection, channel, limits)
            rate = bucket.effective_rate(limits)
            if blocked_until is not None and blocked_until > now:
                return Claim([], (blocked_until - now).total_seconds(), rate)
            granted, after = ratelimit.take(bucket, limit)
            if granted == 0:
                return Claim([], ratelimit.wait_time(bucket, limits), rate)
            params = {
                "channel": channel,
                "limit": granted,
                "replay_quota": ratelimit.replay_quota(granted, limits, self._rand()),
                "worker": worker,
                "lease_seconds": lease.total_seconds(),
                "burst": limits.burst,
                "tokens": after.tokens,
                "rate": after.rate,
                "refilled_at": after.refilled_at,
            }
            rows = (await connection.execute(_CLAIM, params)).all()
        spent = ratelimit.give_back(after, granted - len(rows), limits)
        wait = ratelimit.wait_time(spent, limits) if len(rows) == granted else None
        return Claim(self._messages(rows), wait, rate)

    async def slow_down(
        self, channel: str, limits: Limits, hold: timedelta
    ) -> tuple[float, datetime]:
        """A throttling answer: lower the channel's effective rate and hold its claims for
        `hold`, in every replica. Returns the new rate and when the hold ends."""
        async with self._engine.begin() as connection:
            bucket, now, _ = await self._bucket(connection, channel, limits)
            slowed = ratelimit.slow_down(bucket, limits)
            await connection.execute(
                _SLOW_DOWN,
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

    async def _bucket(
        self, connection: AsyncConnection, channel: str, limits: Limits
    ) -> tuple[ratelimit.Bucket, datetime, datetime | None]:
        """The channel's bucket, refilled up to now, locked for this transaction."""
        row = (await connection.execute(_BUCKET, {"channel": channel})).one_or_none()
        if row is None:
            await connection.execute(_ENSURE_BUCKET, {"channel": channel, "burst": limits.burst})
            row = (await connection.execute(_BUCKET, {"channel": channel})).one()
        stored = ratelimit.Bucket(row.tokens, row.refilled_at, row.rate)
        return ratelimit.refill(stored, row.now, limits), row.now, row.blocked_until

    @staticmethod
    def _messages(rows: Sequence[Any]) -> list[ClaimedMessage]:
        rows = sorted(rows, key=lambda row: (-row.priority, row.id))
        return [
            ClaimedMessage(
                id=row.id,
                channel=row.channel,
                recipient=row.recipient,
                payload=row.payload,
                fallback_template=row.fallback_template,
                attempts=row.attempts,
                created_at=row.created_at,
                expires_at=row.expires_at,
                planned=SentAs(row.sent_as) if row.sent_as else None,
                last_inbound_at=row.last_inbound_at,
            )
            for row in rows
        ]

    async def complete(self, results: Sequence[SendResult], worker: str) -> int:
        """Write outcomes in one statement; returns how many rows were still ours."""
        if not results:
            return 0
        params: dict[str, object] = {**_RESULTS.params([_result_row(r) for r in results])}
        params["worker"] = worker
        async with self._engine.begin() as connection:
            return int((await connection.execute(_COMPLETE, params)).scalar_one())

    async def release(self, ids: Sequence[int], worker: str) -> int:
        """Give unsent leased rows back to the queue, with their attempt."""
        if not ids:
            return 0
        async with self._engine.begin() as connection:
            result = await connection.execute(_RELEASE, {"ids": list(ids), "worker": worker})
        return result.rowcount

    async def rescue_expired_leases(self, limit: int = 1000) -> list[Settled]:
        """Rows whose lease ran out become `unknown` (or `expired`)."""
        return await self._settle(_RESCUE, {"limit": limit})

    async def expire_due(self, limit: int = 1000) -> list[Settled]:
        """Queued rows past `expires_at` become `expired` without waiting for a claim."""
        return await self._settle(_EXPIRE, {"limit": limit, "title": EXPIRED_TITLE})

    async def resend_unknown(
        self, channels: Sequence[str], quiet: timedelta, limit: int = 1000
    ) -> int:
        if not channels:
            return 0
        params: dict[str, Any] = {
            "channels": list(channels),
            "quiet_seconds": quiet.total_seconds(),
        }
        async with self._engine.begin() as connection:
            resent = (
                await connection.execute(_RESEND_UNKNOWN, {**params, "limit": limit})
            ).rowcount
            if resent:
                await connection.execute(WAKE_SENDERS)
        return resent

    async def fail_unknown_channels(
        self, known: Collection[str], grace: timedelta, limit: int = 1000
    ) -> list[Settled]:
        """Fail queued rows of channels not in `known` once they are `grace` old."""
        async with self._engine.connect() as connection:
            open_channels = (await connection.execute(_OPEN_CHANNELS)).scalars().all()
        failed: list[Settled] = []
        for channel in open_channels:
            if channel in known:
                continue
            detail = f"channel {channel!r} is not one of: {', '.join(sorted(known))}"
            params = {
                "channel": channel,
                "grace_seconds": grace.total_seconds(),
                "limit": limit,
                "detail": detail,
            }
            failed += await self._settle(_FAIL_CHANNEL, params)
        return failed

    async def next_due(self, channel: str) -> datetime | None:
        """When the channel's next retry, scheduled row or paced recipient comes due."""
        async with self._engine.connect() as connection:
            due: datetime | None = (
                await connection.execute(_NEXT_DUE, {"channel": channel})
            ).scalar_one()
        return due

    async def forget_pace(self) -> int:
        return await self._update(_FORGET_PACE, {})

    async def set_pause(
        self, channel: str, until: datetime | None, reason: str | None, worker: str
    ) -> None:
        """Record a channel's pause (or its end, with `until` None) where operators can see it."""
        params = {"channel": channel, "until": until, "reason": reason, "worker": worker}
        await self._update(_SET_PAUSE, params)

    async def _update(self, statement: TextClause, params: dict[str, Any]) -> int:
        async with self._engine.begin() as connection:
            return (await connection.execute(statement, params)).rowcount

    async def _settle(self, statement: TextClause, params: dict[str, Any]) -> list[Settled]:
        async with self._engine.begin() as connection:
            rows = (await connection.execute(statement, params)).all()
        return [Settled(row.id, row.channel, State(row.state)) for row in rows]

    async def state_counts(self) -> dict[tuple[str, State], int]:
        async with self._engine.connect() as connection:
            rows = (await connection.execute(_STATE_COUNTS)).all()
        return {(row.channel, State(row.state)): row.n for row in rows}

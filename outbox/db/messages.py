"""The lease lifecycle of `outbox.messages`: claims under a lease, batched result writes, hand-back.

Every transaction here is short and none is open while a request is in flight: a claim commits
before the first byte goes to the API. Every state change is guarded by the state it expects and
by the worker that holds the lease, so a row that changed hands is never overwritten; a live
holder renews its leases, and keeps a row rescued from it until the row is resent.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import BigInteger, DateTime, Integer, Text

from outbox.db.arrays import ArrayColumns
from outbox.db.channel_state import lock_bucket
from outbox.db.claimed import read_claimed
from outbox.db.errors import translated
from outbox.db.leases import HELD_BY_WORKER, RENEW_LEASES
from outbox.db.sql import OPEN_STATES
from outbox.domain import ratelimit, window
from outbox.domain.models import Claim, SendResult, State
from outbox.domain.ratelimit import Limits
from outbox.ports import Renewed

# A row is claimable only if no older row to the same recipient on the channel is still open
# (queued, sending or unknown): one message per recipient at a time, in insertion order, and a
# head that ends (sent, failed, expired, cancelled) releases the next. Ready rows and due
# retries come from two indexes, so rows waiting for later are never walked past; both hold
# only heads (`head`, kept by triggers), so a backlog to one recipient is not walked either.
# The probe stays: `head` may be stale the other way (an older row opened again).
# The checks are scalar subqueries with LIMIT 1, not NOT EXISTS: the planner cannot turn them
# into an anti-join, which it would plan as a scan of every open row of the channel per
# candidate whenever the statistics predate a burst (about 1,000,000 rows read per claim of
# 100 from a fresh 20,000-row backlog). Each is one probe of ix_messages_recipient.
_CLAIMABLE = f"""
    SELECT m.id, m.priority, m.wa_id FROM outbox.messages AS m
    WHERE m.state = 'queued' AND m.channel = :channel AND {{when}}
      AND (SELECT 1 FROM outbox.messages AS e
           WHERE e.channel = m.channel AND e.wa_id = m.wa_id AND e.id < m.id
             AND e.state IN ({OPEN_STATES})
           LIMIT 1) IS NULL
      AND (SELECT 1 FROM outbox.recipient_pace AS p
           WHERE p.channel = m.channel AND p.wa_id = m.wa_id AND p.not_before > now()
           LIMIT 1) IS NULL
    ORDER BY {{order}}
    LIMIT :limit
    FOR UPDATE OF m SKIP LOCKED
"""

_READY = (
    "m.head AND m.next_attempt_at IS NULL AND m.send_after <= now() AND m.replayed_at IS {} NULL"
)
_BEST_FIRST = "m.priority DESC, m.id"
_LIVE = _CLAIMABLE.format(when=_READY.format(""), order=_BEST_FIRST)
_REPLAYED = _CLAIMABLE.format(when=_READY.format("NOT"), order=_BEST_FIRST)
_DUE = _CLAIMABLE.format(when="m.head AND m.next_attempt_at <= now()", order="m.next_attempt_at")
# Replayed rows (an operator's replay lane) go first up to :replay_quota, then live rows and
# due retries, then replayed rows again: each lane gets its share and takes what the other
# leaves, so a large replay never starves live traffic nor idles on a quiet channel.
CLAIM_MESSAGES = text(
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

_TIMESTAMP = DateTime(timezone=True)
SEND_RESULT_COLUMNS = ArrayColumns(
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
COMPLETE_SENDS = SEND_RESULT_COLUMNS.statement(
    f"""
    WITH r AS (SELECT * FROM {SEND_RESULT_COLUMNS.unnest("r")}), done AS (
        UPDATE outbox.messages AS m SET
            state = r.state,
            attempts = m.attempts + r.attempts_delta,
            -- m.wamid is this send's or NULL: the claim moved an earlier one to message_sends.
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
        WHERE m.id = r.id AND {HELD_BY_WORKER}
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

RELEASE_MESSAGES = text(
    """
    UPDATE outbox.messages
    SET state = 'queued', attempts = attempts - 1, claimed_by = NULL, lease_until = NULL,
        updated_at = now()
    WHERE id = ANY(:ids) AND state = 'sending' AND claimed_by = :worker
    """
).bindparams(bindparam("ids", type_=ARRAY(BigInteger())))

NEXT_DUE = text(
    """
    SELECT least(
        (SELECT min(next_attempt_at) FROM outbox.messages
         WHERE state = 'queued' AND channel = :channel AND next_attempt_at > now() AND head),
        (SELECT min(not_before) FROM outbox.recipient_pace
         WHERE channel = :channel AND not_before > now()))
    """
)

COUNT_STATES = text(
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


class MessageStore:
    def __init__(self, engine: AsyncEngine, rand: Callable[[], float] = random.random) -> None:
        self._engine = engine
        self._rand = rand

    @translated
    async def claim(
        self,
        channel: str,
        limit: int,
        worker: str,
        lease: timedelta,
        limits: Limits,
        *,
        window_margin: timedelta = window.DEFAULT_MARGIN,
    ) -> Claim:
        """Lease up to `limit` due queued rows of `channel`, best priority first, as far as the
        channel's shared bucket allows, and record what each is about to be sent as."""
        async with self._engine.begin() as connection:
            locked = await lock_bucket(connection, channel, limits)
            bucket, now, blocked_until, epoch = (
                locked.bucket,
                locked.now,
                locked.blocked_until,
                locked.pause_epoch,
            )
            rate = bucket.effective_rate(limits)
            if blocked_until is not None and blocked_until > now:
                return Claim([], (blocked_until - now).total_seconds(), rate, epoch)
            granted, after = ratelimit.take(bucket, limit)
            if granted == 0:
                return Claim([], ratelimit.wait_time(bucket, limits), rate, epoch)
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
            rows = (await connection.execute(CLAIM_MESSAGES, params)).all()
            # Read (and planned) inside the transaction: see outbox.db.claimed.
            messages = await read_claimed(connection, rows, now, window_margin)
        spent = ratelimit.give_back(after, granted - len(rows), limits)
        wait = ratelimit.wait_time(spent, limits) if len(rows) == granted else None
        return Claim(messages, wait, rate, epoch)

    @translated
    async def complete(self, results: Sequence[SendResult], worker: str) -> int:
        """Write outcomes in one statement; returns how many rows were still ours."""
        if not results:
            return 0
        params: dict[str, object] = {
            **SEND_RESULT_COLUMNS.params([_result_row(r) for r in results])
        }
        params["worker"] = worker
        async with self._engine.begin() as connection:
            return int((await connection.execute(COMPLETE_SENDS, params)).scalar_one())

    @translated
    async def renew(self, ids: Sequence[int], worker: str, lease: timedelta) -> Renewed:
        """Extend the leases of `ids` this worker holds; take back those rescued from it."""
        if not ids:
            return Renewed([], [])
        params = {"ids": sorted(ids), "worker": worker, "lease_seconds": lease.total_seconds()}
        async with self._engine.begin() as connection:
            rows = (await connection.execute(RENEW_LEASES, params)).all()
        return Renewed(
            sorted(r.id for r in rows if not r.taken_back),
            sorted(r.id for r in rows if r.taken_back),
        )

    @translated
    async def release(self, ids: Sequence[int], worker: str) -> int:
        """Give unsent leased rows back to the queue, with their attempt."""
        if not ids:
            return 0
        async with self._engine.begin() as connection:
            result = await connection.execute(
                RELEASE_MESSAGES, {"ids": list(ids), "worker": worker}
            )
        return result.rowcount

    @translated
    async def next_due(self, channel: str) -> datetime | None:
        """When the channel's next retry, scheduled row or paced recipient comes due."""
        async with self._engine.connect() as connection:
            due: datetime | None = (
                await connection.execute(NEXT_DUE, {"channel": channel})
            ).scalar_one()
        return due

    @translated
    async def state_counts(self) -> dict[tuple[str, State], int]:
        async with self._engine.connect() as connection:
            rows = (await connection.execute(COUNT_STATES)).all()
        return {(row.channel, State(row.state)): row.n for row in rows}

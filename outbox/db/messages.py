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
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.types import BigInteger, DateTime, Integer, Text

from outbox.db import claims
from outbox.db.arrays import ArrayColumns
from outbox.db.channel_state import ensure_buckets
from outbox.db.due import DUE_CHANNELS
from outbox.db.errors import translated
from outbox.db.identities import UPSERT_PAIR
from outbox.db.leases import HELD_BY_WORKER, RENEW_LEASES
from outbox.domain import window
from outbox.domain.identity import SQL_BSUID_PREFIX
from outbox.domain.models import Claim, SendResult, State
from outbox.domain.ratelimit import Limits
from outbox.ports import ClaimRequest, Due, Renewed

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
        ("answer_wa_id", Text()),
        ("answer_bsuid", Text()),
    )
)

# One statement per batch: write the outcomes; a row sent to a paced recipient records when the
# next one may go. The rows are locked in id order first, as the reconciler locks them: in the
# order the answers came, two such statements could deadlock. A row that backs off lends its
# retry time to nobody: the rows behind it are not heads, so no claim looks at them, and when
# it ends, however it ends, the next row goes on its own schedule (the hand-over trigger).
COMPLETE_SENDS = SEND_RESULT_COLUMNS.statement(
    f"""
    WITH r AS (SELECT * FROM {SEND_RESULT_COLUMNS.unnest("r")}), locked AS MATERIALIZED (
        SELECT m.id FROM outbox.messages AS m
        WHERE m.id IN (SELECT id FROM r) AND {HELD_BY_WORKER}
        ORDER BY m.id
        FOR UPDATE OF m
    ), done AS (
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
        FROM r JOIN locked ON locked.id = r.id
        WHERE m.id = r.id AND {HELD_BY_WORKER}
        RETURNING m.channel, m.wa_id, r.pace_until, r.answer_wa_id, r.answer_bsuid
    ), paired AS (
        -- A send answer that names the user's BSUID pairs it with their number (issue 18).
        INSERT INTO outbox.identity_pairs AS p (channel, bsuid, wa_id, source)
        SELECT DISTINCT ON (channel, answer_bsuid) channel, answer_bsuid,
               coalesce(answer_wa_id, CASE WHEN wa_id !~ '{SQL_BSUID_PREFIX}' THEN wa_id END),
               'send_answer'
        FROM done
        WHERE answer_bsuid IS NOT NULL
          AND coalesce(answer_wa_id, CASE WHEN wa_id !~ '{SQL_BSUID_PREFIX}' THEN wa_id END)
              IS NOT NULL
        ORDER BY channel, answer_bsuid
        {UPSERT_PAIR}
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
        r.answer_wa_id,
        r.answer_bsuid,
    )


class MessageStore:
    def __init__(self, engine: AsyncEngine, rand: Callable[[], float] = random.random) -> None:
        self._engine = engine
        self._rand = rand
        self._buckets: set[str] = set()  # channels whose bucket row is known to exist

    @translated
    async def due_channels(self, after: str, limit: int) -> Due:
        """Up to `limit` channels with rows to claim now, from the one after `after` on, and
        when the next retry or paced row comes due."""
        async with self._engine.connect() as connection:
            row = (await connection.execute(DUE_CHANNELS, {"after": after, "limit": limit})).one()
        return Due(list(row.channels), None if row.next_in is None else float(row.next_in))

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
        """Lease up to `limit` due queued rows of `channel` (see `claim_many`)."""
        requests = [ClaimRequest(channel, limit, limits)]
        claims = await self.claim_many(requests, worker, lease, window_margin=window_margin)
        return claims[channel]

    @translated
    async def claim_many(
        self,
        requests: Sequence[ClaimRequest],
        worker: str,
        lease: timedelta,
        *,
        window_margin: timedelta = window.DEFAULT_MARGIN,
    ) -> dict[str, Claim]:
        """Lease up to each request's `limit` due queued rows of its channel (see
        `outbox.db.claims`)."""
        new = {r.channel: r.limits for r in requests if r.channel not in self._buckets}
        if new:
            # A channel's first bucket row is created in a transaction of its own: created
            # while the claim holds other channels' locks, two replicas' first claims could
            # deadlock on each other's new rows.
            async with self._engine.begin() as connection:
                await ensure_buckets(connection, new)
            self._buckets.update(new)
        async with self._engine.begin() as connection:
            return await claims.claim_many(
                connection, requests, worker, lease, margin=window_margin, rand=self._rand
            )

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

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
from sqlalchemy.types import BigInteger, Boolean, DateTime, Integer, Text

from outbox.db.arrays import ArrayColumns
from outbox.db.channel_state import lock_bucket
from outbox.db.claim import CLAIM_MESSAGES, CLAIM_PACED
from outbox.db.claimed import read_claimed
from outbox.db.errors import translated
from outbox.db.leases import HELD_BY_WORKER, RENEW_LEASES
from outbox.db.templates import with_policy
from outbox.domain import preferences, ratelimit, window
from outbox.domain.models import Claim, SendResult, State
from outbox.domain.ratelimit import Limits
from outbox.domain.retry import RetryPolicy
from outbox.ports import Renewed

DEFAULT_POLICY = RetryPolicy()

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
        ("held_template", BigInteger()),
        ("message_status", Text()),
        ("opt_out", Boolean()),
        ("pace_strike", Boolean()),
    )
)

# One statement per batch: write the outcomes; a row sent to a paced recipient records when the
# next one may go. The rows are locked in id order first, as the reconciler locks them: in the
# order the answers came, two such statements could deadlock. A row that backs off lends its
# retry time to nobody: the rows behind it are not heads, so no claim looks at them, and when
# it ends, however it ends, the next row goes on its own schedule (the hand-over trigger).
# Issue 18: a 131056 grows the pair's pause (strikes), an acceptance resets it; a 131050
# records the user's marketing opt-out, keyed on the recipient as written when it is a BSUID.
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
            held_template = r.held_template,
            message_status = coalesce(r.message_status, m.message_status),
            accepted_at = CASE WHEN r.state = 'accepted' THEN r.at ELSE m.accepted_at END,
            failed_at = CASE WHEN r.state = 'failed' THEN r.at ELSE m.failed_at END,
            claimed_by = NULL, lease_until = NULL, updated_at = now()
        FROM r JOIN locked ON locked.id = r.id
        WHERE m.id = r.id AND {HELD_BY_WORKER}
        RETURNING m.id, m.channel, m.wa_id, m.recipient, m.wamid, r.at, r.state, r.pace_until,
                  r.opt_out, r.pace_strike, r.error_code, r.error_title
    ), pair AS (
        SELECT channel, wa_id, max(pace_until) AS pace_until, bool_or(pace_strike) AS strike,
               bool_or(state = 'accepted') AS accepted
        FROM done GROUP BY channel, wa_id
    ), paced AS (
        INSERT INTO outbox.recipient_pace AS p (channel, wa_id, not_before, strikes)
        SELECT channel, wa_id,
               CASE WHEN strike THEN greatest(pace_until, now() + make_interval(
                   secs => CAST(:pair_base AS double precision)))
                    -- An acceptance that only resets strikes moves no pause (NOT NULL column).
                    ELSE coalesce(pace_until, now()) END,
               CASE WHEN strike THEN 1 ELSE 0 END
        FROM pair
        WHERE pace_until IS NOT NULL OR strike
           OR (accepted AND EXISTS (SELECT 1 FROM outbox.recipient_pace AS s
                                    WHERE s.channel = pair.channel AND s.wa_id = pair.wa_id
                                      AND s.strikes > 0))
        ON CONFLICT (channel, wa_id) DO UPDATE SET
            strikes = CASE WHEN excluded.strikes > 0 THEN least(p.strikes + 1, 1000) ELSE 0 END,
            not_before = CASE
                WHEN excluded.strikes > 0 THEN greatest(p.not_before, now() + make_interval(
                    secs => least(CAST(:pair_cap AS double precision),
                                  :pair_base * power(CAST(:pair_factor AS double precision),
                                                     least(p.strikes, 32)))))
                ELSE greatest(p.not_before, excluded.not_before) END
    ), opted AS (
        INSERT INTO outbox.marketing_preferences AS o
            (channel, identity, category, opted_out, at, source, evidence)
        SELECT DISTINCT ON (channel, identity) channel, identity, :opt_out_category, true, at,
               '131050', jsonb_build_object('message_id', id, 'wamid', wamid,
                                            'error_code', error_code,
                                            'error_title', left(error_title, 200))
        FROM (SELECT *, CASE WHEN recipient ~ '^[A-Z]{{2}}[.]' THEN recipient ELSE wa_id END
                        AS identity
              FROM done WHERE opt_out) AS o
        ORDER BY channel, identity, at DESC
        ON CONFLICT (channel, identity, category) DO UPDATE SET
            opted_out = true, at = excluded.at, source = excluded.source,
            evidence = excluded.evidence, recorded_at = now()
        WHERE excluded.at >= o.at
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
        r.held_template,
        r.message_status,
        r.opt_out,
        r.pace_strike,
    )


class MessageStore:
    def __init__(
        self,
        engine: AsyncEngine,
        rand: Callable[[], float] = random.random,
        policy: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        self._engine = engine
        self._rand = rand
        # The pair pause's terms (outbox.domain.policy.pair_pause), for the result statement.
        self._pair: dict[str, object] = {
            "pair_base": policy.recipient_delay.total_seconds(),
            "pair_factor": policy.pair_pause_factor,
            "pair_cap": policy.pair_pause_cap.total_seconds(),
            "opt_out_category": preferences.MARKETING_MESSAGES,
        }

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
        template_scope: str | None = None,
    ) -> Claim:
        """Lease up to `limit` due queued rows of `channel`, best priority first, as far as the
        channel's shared bucket allows, and record what each is about to be sent as. With a
        `template_scope` (the channel's WABA), each row also learns its template's registry
        entry and the channel's marketing hold (issue 18)."""
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
            statement = CLAIM_PACED if limits.paced else CLAIM_MESSAGES
            rows = (await connection.execute(statement, params)).all()
            # Read (and planned) inside the transaction: see outbox.db.claimed.
            messages = await read_claimed(connection, rows, now, window_margin)
            if template_scope is not None:
                messages = await with_policy(
                    connection, template_scope, messages, locked.marketing_hold_until
                )
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
        params.update(self._pair)
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

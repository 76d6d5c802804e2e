"""The lease lifecycle of `outbox.messages`: claims under a lease, batched result writes, hand-back.

Every transaction here is short and none is open while a request is in flight: a claim commits
before the first byte goes to the API. Every state change is guarded by the state it expects and
by the worker that holds the lease, so a row that changed hands is never overwritten; a live
holder renews its leases, and keeps a row rescued from it until the row is resent.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timedelta
from functools import partial

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import BigInteger

from outbox.db import buckets, claims
from outbox.db.due import DUE_CHANNELS
from outbox.db.errors import translated
from outbox.db.leases import RENEW_LEASES
from outbox.db.send_results import COMPLETE_SENDS, SEND_RESULT_COLUMNS, result_row
from outbox.domain import policy, preferences, window
from outbox.domain.models import Claim, ClaimedMessage, SendResult, State
from outbox.domain.ratelimit import Limits
from outbox.domain.retry import RetryPolicy
from outbox.ports import ClaimRequest, Due, Renewed

DEFAULT_POLICY = RetryPolicy()

# The attempt is given back, never below 0 (the CHECK on attempts since 0020: a row a fixture or
# an old release left `sending` uncharged must still be released, not fail the whole batch).
RELEASE_MESSAGES = text(
    """
    UPDATE outbox.messages
    SET state = 'queued', attempts = greatest(attempts - 1, 0), claimed_by = NULL,
        lease_until = NULL,
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

# Tokens of rows held inside the claim go back to the bucket (issue 18).
GIVE_BACK_TOKENS = text(
    """
    UPDATE outbox.channel_state
    SET tokens = least(CAST(:burst AS double precision), tokens + :n)
    WHERE channel = :channel
    """
)

COUNT_STATES = text(
    "SELECT channel, state, count(*) AS n FROM outbox.messages GROUP BY channel, state"
)


class MessageStore:
    def __init__(
        self,
        engine: AsyncEngine,
        rand: Callable[[], float] = random.random,
        policy: RetryPolicy = DEFAULT_POLICY,
    ) -> None:
        self._engine = engine
        # The statements that stand alone (a look for due channels, a batch of answers, the
        # leases' renewal) run without BEGIN and COMMIT: one statement is atomic by itself, and
        # the two round trips spared each wait for a turn of the sender's busy event loop
        # (issue 16: 0.1-0.2 ms of its CPU and half the wall time a statement).
        self._alone = engine.execution_options(isolation_level="AUTOCOMMIT")
        self._rand = rand
        self._policy = policy
        # The pair pause's terms (outbox.domain.policy.pair_pause), for the result statement.
        self._pair: dict[str, object] = {
            "pair_base": policy.recipient_delay.total_seconds(),
            "pair_factor": policy.pair_pause_factor,
            "pair_cap": policy.pair_pause_cap.total_seconds(),
            "opt_out_category": preferences.MARKETING_MESSAGES,
        }
        self._buckets: set[str] = set()  # channels whose bucket row is known to exist

    @translated
    async def due_channels(self, after: str, limit: int, also: Sequence[str] = ()) -> Due:
        """Up to `limit` channels with rows to claim now, from the one after `after` on, then
        those of `also` (one index probe each) that have some and are not among them; and
        when the next retry or paced row comes due."""
        parameters = {"after": after, "limit": limit, "also": list(also)}
        async with self._alone.connect() as connection:
            row = (await connection.execute(DUE_CHANNELS, parameters)).one()
        listed = dict.fromkeys([*row.channels, *row.also_due])  # in order, once each
        return Due(list(listed), None if row.next_in is None else float(row.next_in))

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
        """Lease up to `limit` due queued rows of `channel` (see `claim_many`)."""
        requests = [ClaimRequest(channel, limit, limits, template_scope)]
        claims = await self.claim_many(requests, worker, lease, window_margin=window_margin)
        return claims[channel]

    @translated
    async def ensure_buckets(self, limits: Mapping[str, Limits]) -> None:
        """A full bucket row for each of these channels that has none yet, in one statement.
        In a transaction of its own: created while a claim holds other channels' locks, two
        replicas' first claims could deadlock on each other's new rows. A sender asks for all
        its channels before its first claim (issue 16: one transaction a round, while 10,000
        channels were each claimed for the first time); a claim asks for those it names."""
        new = {channel: limit for channel, limit in limits.items() if channel not in self._buckets}
        if new:
            async with self._engine.begin() as connection:
                await buckets.ensure_buckets(connection, new)
            self._buckets.update(new)

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
        `outbox.db.claims`). With a request's `template_scope` (the channel's WABA), its rows
        also learn their template's registry entry and the channel's marketing hold, and those
        to hold go back to the queue inside the claim (issue 18)."""
        await self.ensure_buckets({r.channel: r.limits for r in requests})
        async with self._engine.begin() as connection:
            return await claims.claim_many(
                connection,
                requests,
                worker,
                lease,
                margin=window_margin,
                rand=self._rand,
                hold=partial(self._hold, worker=worker),
            )

    async def _hold(
        self,
        connection: AsyncConnection,
        messages: list[ClaimedMessage],
        now: datetime,
        limits: Limits,
        *,
        worker: str,
    ) -> tuple[list[ClaimedMessage], list[tuple[ClaimedMessage, SendResult]]]:
        """Issue 18: one channel's rows of a paused template, and marketing while the channel's
        is held, go back to the queue inside the claim, with no request, no attempt and their
        tokens returned."""
        held = [(m, r) for m in messages if (r := policy.hold(m, m.planned, now, self._policy))]
        if not held:
            return messages, []
        await self._write(connection, [r for _, r in held], worker)
        params = {"channel": messages[0].channel, "n": len(held), "burst": limits.burst}
        await connection.execute(GIVE_BACK_TOKENS, params)
        ids = {m.id for m, _ in held}
        return [m for m in messages if m.id not in ids], held

    @translated
    async def complete(self, results: Sequence[SendResult], worker: str) -> int:
        """Write outcomes in one statement; returns how many rows were still ours."""
        if not results:
            return 0
        async with self._alone.connect() as connection:
            return await self._write(connection, results, worker)

    async def _write(
        self, connection: AsyncConnection, results: Sequence[SendResult], worker: str
    ) -> int:
        params: dict[str, object] = {**SEND_RESULT_COLUMNS.params([result_row(r) for r in results])}
        params["worker"] = worker
        params.update(self._pair)
        return int((await connection.execute(COMPLETE_SENDS, params)).scalar_one())

    @translated
    async def renew(self, ids: Sequence[int], worker: str, lease: timedelta) -> Renewed:
        """Extend the leases of `ids` this worker holds; take back those rescued from it."""
        if not ids:
            return Renewed([], [])
        params = {"ids": sorted(ids), "worker": worker, "lease_seconds": lease.total_seconds()}
        async with self._alone.connect() as connection:
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

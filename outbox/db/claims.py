"""One claim over many channels: their buckets locked in one statement, their rows leased in
one statement per pacing mode, all in one short transaction that commits before any request.

Each channel gets what its bucket grants (none while it is held or paused); tokens granted but
not used go back; an idle channel's claim writes nothing.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from outbox.db.buckets import Locked, lock_buckets
from outbox.db.claim import CLAIM_MESSAGES, CLAIM_PACED, GRANTS
from outbox.db.claimed import ClaimedRow, read_claimed
from outbox.db.templates import Scoped, with_policy
from outbox.db.tuples import as_tuples
from outbox.domain import ratelimit
from outbox.domain.models import Claim, ClaimedMessage, SendResult
from outbox.domain.ratelimit import Limits
from outbox.ports import ClaimRequest

Grant = tuple[str, int, int, float, float, float | None, Any]  # a row of GRANTS
Held = list[tuple[ClaimedMessage, SendResult]]
# Issue 18: one channel's claimed rows (with their policy) -> those to send, those held back
# (already written back in the claim's transaction, their tokens returned).
Hold = Callable[
    [AsyncConnection, list[ClaimedMessage], datetime, Limits],
    Awaitable[tuple[list[ClaimedMessage], Held]],
]


async def claim_many(
    connection: AsyncConnection,
    requests: Sequence[ClaimRequest],
    worker: str,
    lease: timedelta,
    *,
    margin: timedelta,
    rand: Callable[[], float] = random.random,
    hold: Hold | None = None,
) -> dict[str, Claim]:
    """Lease up to each request's `limit` due queued rows of its channel, best priority first,
    as far as the channel's shared bucket allows, and record what each is about to be sent as."""
    locked = await lock_buckets(connection, {r.channel: r.limits for r in requests})
    claims: dict[str, Claim] = {}
    grants: dict[bool, list[Grant]] = {False: [], True: []}
    taken: dict[str, tuple[int, ratelimit.Bucket]] = {}  # tokens granted, the bucket after
    for request in requests:
        given = _grant(locked[request.channel], request, rand)
        if isinstance(given, Claim):
            claims[request.channel] = given
        else:
            grant, after = given
            grants[request.limits.paced].append(grant)
            taken[request.channel] = grant[1], after
    rows: list[ClaimedRow] = []
    params = {"worker": worker, "lease_seconds": lease.total_seconds()}
    for paced, granted in grants.items():
        if granted:
            statement = CLAIM_PACED if paced else CLAIM_MESSAGES
            result = await connection.execute(statement, {**GRANTS.params(granted), **params})
            rows += as_tuples(result, ClaimedRow._make, ClaimedRow._fields)
    if not rows:
        messages: list[ClaimedMessage] = []
    else:
        # Read (and planned) inside the transaction: see outbox.db.claimed.
        now = next(iter(locked.values())).now
        messages = await read_claimed(connection, rows, now, margin)
    by_channel: dict[str, list[ClaimedMessage]] = {}
    for message in messages:
        by_channel.setdefault(message.channel, []).append(message)
    more = {row.channel for row in rows if row.more}
    pending = [request for request in requests if request.channel not in claims]
    if hold is not None:
        scoped = {
            r.channel: Scoped(r.template_scope, got, locked[r.channel].marketing_hold_until)
            for r in pending
            if r.template_scope is not None and (got := by_channel.get(r.channel))
        }
        if scoped:
            by_channel.update(await with_policy(connection, scoped))
    for request in pending:
        got, lock = by_channel.get(request.channel, []), locked[request.channel]
        held: Held = []
        if got and hold is not None and request.template_scope is not None:
            got, held = await hold(connection, got, lock.now, request.limits)
        claims[request.channel] = _spent(
            lock, request, taken[request.channel], got, held, more=request.channel in more
        )
    return claims


def _grant(
    locked: Locked, request: ClaimRequest, rand: Callable[[], float]
) -> Claim | tuple[Grant, ratelimit.Bucket]:
    """What the channel's bucket grants: a claim with no rows (held, paused or no token), or
    the row of `GRANTS` to claim with and the bucket without the tokens granted."""
    bucket, limits, now = locked.bucket, request.limits, locked.now
    rate, epoch = bucket.effective_rate(limits), locked.pause_epoch
    if locked.blocked_until is not None and locked.blocked_until > now:
        return Claim([], (locked.blocked_until - now).total_seconds(), rate, epoch)
    granted, after = ratelimit.take(bucket, request.limit)
    if granted == 0:
        return Claim([], ratelimit.wait_time(bucket, limits), rate, epoch)
    quota = ratelimit.replay_quota(granted, limits, rand())
    grant: Grant = (
        *(request.channel, granted, quota, limits.burst),
        *(after.tokens, after.rate, after.refilled_at),
    )
    return grant, after


def _spent(
    locked: Locked,
    request: ClaimRequest,
    taken: tuple[int, ratelimit.Bucket],
    messages: list[ClaimedMessage],
    held: Held,
    *,
    more: bool,
) -> Claim:
    """The claim of a channel that was granted tokens (`taken`: how many, and the bucket
    without them): unused ones went back (the statement's `spent`); the wait is for the next
    token when every granted one was used. Rows held back gave their tokens back too: the
    channel may claim again at once. `more`: it had more rows ready than it was granted."""
    bucket, limits = locked.bucket, request.limits
    rate, epoch = bucket.effective_rate(limits), locked.pause_epoch
    if held:
        return Claim(messages, 0.0, rate, epoch, held, more)
    granted, after = taken
    spent = ratelimit.give_back(after, granted - len(messages), limits)
    wait = ratelimit.wait_time(spent, limits) if len(messages) == granted else None
    return Claim(messages, wait, rate, epoch, more=more)

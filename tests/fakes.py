"""In-memory stand-ins for the sender's ports, kept honest by tests/contract.

`InMemoryMessageStore` follows `outbox.db.messages` and `outbox.db.channel_state` rule for rule:
the contract test runs the same cases against both, so a rule changed in the SQL and not here
(or the other way round) fails there, not in a unit test that trusted the fake.
"""

from __future__ import annotations

import random
import re
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from outbox.config import ChannelConfig
from outbox.domain import ratelimit, window
from outbox.domain.codes import OPEN_STATES, Code
from outbox.domain.models import Claim, ClaimedMessage, SendResult, SentAs, State
from outbox.domain.ratelimit import Limits
from outbox.domain.request import ApiRequest
from outbox.domain.response import Accepted
from outbox.ports import ClaimRequest, Clock, Due, Renewed, utc_now

# outbox.db.tables.WA_ID: regexp_replace(recipient, '[^0-9]', '', 'g')
_NOISE = re.compile(r"[^0-9]")


def wa_id(recipient: str) -> str:
    return _NOISE.sub("", recipient)


@dataclass
class Row:
    """The columns of `outbox.messages` the sender's statements read or write."""

    id: int
    channel: str
    recipient: str
    payload: Any
    created_at: datetime
    send_after: datetime
    priority: int = 0
    fallback_template: Any = None
    expires_at: datetime | None = None
    replayed_at: datetime | None = None
    state: State = State.QUEUED
    attempts: int = 0
    next_attempt_at: datetime | None = None
    claimed_by: str | None = None
    lease_until: datetime | None = None
    wamid: str | None = None
    sent_as: SentAs | None = None
    error_code: str | None = None
    error_title: str | None = None
    error_detail: str | None = None
    accepted_at: datetime | None = None
    failed_at: datetime | None = None

    @property
    def wa_id(self) -> str:
        return wa_id(self.recipient)


@dataclass
class ChannelRow:
    """`outbox.channel_state`: the shared bucket, the throttle hold and the pause."""

    bucket: ratelimit.Bucket
    hold_until: datetime | None = None
    slowed_at: datetime | None = None
    paused_until: datetime | None = None
    pause_reason: str | None = None
    paused_by: str | None = None
    pause_epoch: int = 0
    pause_key: str | None = None
    marketing_hold_until: datetime | None = None


class InMemoryMessageStore:
    """`MessageLeases` and `ChannelStates` over dicts, on an injectable clock (the database's)."""

    def __init__(self, clock: Clock = utc_now, rand: Callable[[], float] = random.random) -> None:
        self._clock = clock
        self._rand = rand
        self.rows: dict[int, Row] = {}
        self.inbound: dict[tuple[str, str], datetime] = {}  # outbox.contacts
        self.pace: dict[tuple[str, str], datetime] = {}  # outbox.recipient_pace
        self.channels: dict[str, ChannelRow] = {}
        self.claims: Counter[str] = Counter()  # claim calls per channel, for tests to read
        self.completed: list[SendResult] = []  # every result written (still leased)

    # --- seeding, as a producer's INSERT (and its triggers) would ---

    def add(self, channel: str, recipient: str, payload: Any, **columns: Any) -> int:
        now = self._clock()
        columns.setdefault("created_at", now)
        columns.setdefault("send_after", now)
        row = Row(len(self.rows) + 1, channel, recipient, payload, **columns)
        if row.send_after > now and row.next_attempt_at is None:
            row.next_attempt_at = row.send_after  # trigger messages_scheduled
        self.rows[row.id] = row
        return row.id

    def set_last_inbound(self, channel: str, recipient: str, at: datetime) -> None:
        self.inbound[channel, wa_id(recipient)] = at

    def set_pace(self, channel: str, recipient: str, not_before: datetime) -> None:
        self.pace[channel, wa_id(recipient)] = not_before

    # --- MessageLeases ---

    async def due_channels(self, after: str, limit: int, also: Sequence[str] = ()) -> Due:
        now = self._clock()
        heads: dict[tuple[str, str], Row] = {}  # each recipient's oldest open row (as _pick)
        for row in sorted(self.rows.values(), key=lambda r: r.id):
            if row.state in OPEN_STATES:
                heads.setdefault((row.channel, row.wa_id), row)
        due = {
            r.channel
            for r in heads.values()
            if r.state is State.QUEUED and (r.next_attempt_at is None or r.next_attempt_at <= now)
        }
        channels = sorted(due, key=lambda c: (c <= after, c))[:limit]
        channels += [c for c in dict.fromkeys(also) if c in due and c not in channels]
        later = [
            r.next_attempt_at
            for r in heads.values()
            if r.state is State.QUEUED and r.next_attempt_at is not None
        ]
        future = [t for t in [*later, *self.pace.values()] if t > now]
        next_in = (min(future) - now).total_seconds() if future else None
        return Due(channels, next_in)

    async def ensure_buckets(self, limits: Mapping[str, Limits]) -> None:
        for channel, limit in limits.items():
            self._lock_bucket(channel, limit)

    async def claim_many(
        self,
        requests: Sequence[ClaimRequest],
        worker: str,
        lease: timedelta,
        *,
        window_margin: timedelta = window.DEFAULT_MARGIN,
    ) -> dict[str, Claim]:
        return {
            r.channel: await self.claim(
                r.channel,
                r.limit,
                worker,
                lease,
                r.limits,
                window_margin=window_margin,
                template_scope=r.template_scope,
            )
            for r in requests
        }

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
        self.claims[channel] += 1
        now = self._clock()
        state = self._lock_bucket(channel, limits)
        bucket = self._refill(state, now, limits)
        rate, epoch = bucket.effective_rate(limits), state.pause_epoch
        blocked = [t for t in (state.hold_until, state.paused_until) if t is not None]
        if blocked and max(blocked) > now:
            return Claim([], (max(blocked) - now).total_seconds(), rate, epoch)
        granted, after = ratelimit.take(bucket, limit)
        if granted == 0:
            return Claim([], ratelimit.wait_time(bucket, limits), rate, epoch)
        quota = ratelimit.replay_quota(granted, limits, self._rand())
        picked, more = self._pick(channel, granted, quota)
        for row in picked:
            row.state, row.claimed_by, row.attempts = State.SENDING, worker, row.attempts + 1
            row.lease_until = now + lease
            planned = window.plan(
                row.payload,
                row.fallback_template,
                previous=row.sent_as,
                last_inbound_at=self.inbound.get((row.channel, row.wa_id)),
                now=now,
                margin=window_margin,
            )
            row.sent_as = planned or row.sent_as  # RECORD_PLANS
        spent = ratelimit.give_back(after, granted - len(picked), limits)
        if picked:  # nothing claimed: the bucket is written back as it was
            state.bucket = spent
        wait = ratelimit.wait_time(spent, limits) if len(picked) == granted else None
        claimed = [self._claimed(row) for row in picked]
        if template_scope is not None:  # no registry here; the marketing hold only
            hold = state.marketing_hold_until
            claimed = [replace(m, marketing_hold_until=hold) for m in claimed]
        return Claim(claimed, wait, rate, epoch, more=more)

    def _pick(self, channel: str, limit: int, replay_quota: int) -> tuple[list[Row], bool]:
        """The rows to claim, and whether more were ready (as the claim statement tells)."""
        now = self._clock()
        heads: dict[str, Row] = {}  # each recipient's oldest open row: the only one claimable
        for row in sorted(self.rows.values(), key=lambda r: r.id):
            if row.channel == channel and row.state in OPEN_STATES:
                heads.setdefault(row.wa_id, row)
        ready = [
            r
            for r in heads.values()
            if r.state is State.QUEUED and self.pace.get((channel, r.wa_id), now) <= now
        ]
        best: Callable[[Row], tuple[int, int]] = lambda r: (-r.priority, r.id)  # noqa: E731
        fresh = [r for r in ready if r.next_attempt_at is None and r.send_after <= now]
        live = sorted((r for r in fresh if r.replayed_at is None), key=best)[:limit]
        due = [r for r in ready if r.next_attempt_at is not None and r.next_attempt_at <= now]
        due = sorted(due, key=lambda r: (r.next_attempt_at, r.id))[:limit]
        # Replayed rows, ready or due for a retry, share the replay lane.
        replayed = [r for r in fresh if r.replayed_at is not None][:limit]
        replayed = sorted(replayed + [r for r in due if r.replayed_at is not None], key=best)
        lanes = [(0 if i < replay_quota else 2, r) for i, r in enumerate(replayed)]
        lanes += [(1, r) for r in live + due if r.replayed_at is None]
        lanes.sort(key=lambda lane: (lane[0], *best(lane[1])))
        more = len(lanes) > limit or len([r for r in fresh if r.replayed_at is None]) > limit
        return sorted((r for _, r in lanes[:limit]), key=best), more

    def _claimed(self, row: Row) -> ClaimedMessage:
        return ClaimedMessage(
            *(row.id, row.channel, row.recipient, row.payload, row.fallback_template),
            *(row.attempts, row.created_at, row.expires_at),
            planned=row.sent_as,
            last_inbound_at=self.inbound.get((row.channel, row.wa_id)),
            priority=row.priority,
        )

    async def complete(self, results: Sequence[SendResult], worker: str) -> int:
        done = [
            (row, r)
            for r in results
            if (row := self.rows.get(r.message_id)) is not None and self._held(row, worker)
        ]
        for row, r in done:
            row.state, row.attempts = r.state, row.attempts + r.attempts_delta
            row.wamid, row.sent_as = r.wamid or row.wamid, r.sent_as or row.sent_as
            row.error_code, row.error_title = r.error_code, r.error_title
            row.error_detail = r.error_detail
            row.next_attempt_at, row.claimed_by, row.lease_until = r.next_attempt_at, None, None
            row.accepted_at = r.at if r.state is State.ACCEPTED else row.accepted_at
            row.failed_at = r.at if r.state is State.FAILED else row.failed_at
        # A row that backs off lends its retry time to nobody: its later rows are not heads.
        for row, r in done:
            if r.pace_until is not None:
                key = (row.channel, row.wa_id)
                self.pace[key] = max(self.pace.get(key, r.pace_until), r.pace_until)
        self.completed.extend(r for _, r in done)
        return len(done)

    @staticmethod
    def _held(row: Row, worker: str) -> bool:
        """outbox.db.leases.HELD_BY_WORKER: leased, or rescued from the worker and not resent."""
        rescued = row.state is State.UNKNOWN and row.error_code == Code.LEASE_EXPIRED
        return row.claimed_by == worker and (row.state is State.SENDING or rescued)

    async def renew(self, ids: Sequence[int], worker: str, lease: timedelta) -> Renewed:
        held = [
            row for i in sorted(set(ids)) if (row := self.rows.get(i)) and self._held(row, worker)
        ]
        taken_back = [row.id for row in held if row.state is State.UNKNOWN]
        for row in held:
            if row.state is State.UNKNOWN:  # taken back: the rescue's error goes
                row.state, row.error_code, row.error_title = State.SENDING, None, None
                row.error_detail = None
            row.lease_until = self._clock() + lease
        return Renewed([row.id for row in held if row.id not in taken_back], taken_back)

    async def release(self, ids: Sequence[int], worker: str) -> int:
        rows = [self.rows[i] for i in set(ids) if i in self.rows]
        held = [r for r in rows if r.state is State.SENDING and r.claimed_by == worker]
        for row in held:
            row.state, row.claimed_by, row.lease_until = State.QUEUED, None, None
            row.attempts -= 1
        return len(held)

    async def next_due(self, channel: str) -> datetime | None:
        now = self._clock()
        retries = [
            r.next_attempt_at
            for r in self.rows.values()
            if r.state is State.QUEUED and r.channel == channel and r.next_attempt_at is not None
        ]
        paced = [t for (c, _), t in self.pace.items() if c == channel]
        future = [t for t in retries + paced if t > now]
        return min(future, default=None)

    # --- ChannelStates ---

    def _lock_bucket(self, channel: str, limits: Limits) -> ChannelRow:
        if channel not in self.channels:  # ENSURE_BUCKET: a full bucket
            self.channels[channel] = ChannelRow(ratelimit.Bucket(limits.burst, self._clock()))
        return self.channels[channel]

    @staticmethod
    def _refill(state: ChannelRow, now: datetime, limits: Limits) -> ratelimit.Bucket:
        bucket = ratelimit.refill(state.bucket, now, limits, state.hold_until)
        if bucket.refilled_at < state.bucket.refilled_at:  # REANCHOR_BUCKET
            state.bucket = ratelimit.Bucket(
                state.bucket.tokens, bucket.refilled_at, state.bucket.rate
            )
        return bucket

    async def slow_down(
        self, channel: str, limits: Limits, hold: timedelta
    ) -> tuple[float, datetime]:
        now = self._clock()
        state = self._lock_bucket(channel, limits)
        bucket = self._refill(state, now, limits)
        if not ratelimit.same_throttle(now, state.slowed_at, state.hold_until):
            bucket, state.slowed_at = ratelimit.slow_down(bucket, limits), now
        state.bucket = bucket
        state.hold_until = max(t for t in (state.hold_until, now + hold) if t is not None)
        return bucket.effective_rate(limits), state.hold_until

    async def hold_marketing(self, channel: str, seconds: float) -> datetime:
        state, until = self._pause_row(channel), self._clock() + timedelta(seconds=seconds)
        held = state.marketing_hold_until
        state.marketing_hold_until = until if held is None else max(held, until)
        return state.marketing_hold_until

    def _pause_row(self, channel: str) -> ChannelRow:
        # ENSURE_PAUSE_ROW's INSERT of a new channel row leaves its bucket empty (tokens 0).
        return self.channels.setdefault(channel, ChannelRow(ratelimit.Bucket(0.0, self._clock())))

    async def pause(
        self, channel: str, *, epoch: int, seconds: float, reason: str, worker: str, key: str | None
    ) -> bool:
        state, now = self._pause_row(channel), self._clock()
        if state.pause_epoch != epoch:
            return False
        live = state.paused_until is not None and state.paused_until > now
        until = now + timedelta(seconds=seconds)
        state.paused_until = max(until, state.paused_until) if state.paused_until else until
        state.pause_key = key if key is not None else (state.pause_key if live else None)
        state.pause_reason, state.paused_by = reason, worker
        return True

    async def resume(self, channel: str, worker: str) -> int:
        state = self._pause_row(channel)
        state.paused_until = state.pause_reason = state.pause_key = None
        state.paused_by, state.pause_epoch = worker, state.pause_epoch + 1
        return state.pause_epoch

    async def lift_credential_pause(self, channel: str, key: str, worker: str) -> bool:
        state = self.channels.get(channel)
        if state is None or state.paused_until is None or state.pause_key in (None, key):
            return False
        await self.resume(channel, worker)
        return True

    async def lift_credential_pauses(self, keys: Mapping[str, str], worker: str) -> list[str]:
        return [
            c for c, key in sorted(keys.items()) if await self.lift_credential_pause(c, key, worker)
        ]

    async def pause_epoch(self, channel: str) -> int:
        state = self.channels.get(channel)
        return 0 if state is None else state.pause_epoch


class AcceptingApi:
    """An API that accepts every request at once."""

    async def send(self, channel: ChannelConfig, request: ApiRequest) -> Accepted:
        return Accepted(f"wamid.{id(request)}", None)

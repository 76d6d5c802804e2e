"""One set of cases for the sender's message store, run against the in-memory fake and against
PostgreSQL: whatever the fake gets wrong about the real adapter fails here.

Each case seeds rows through a harness (the fake's own seeding, or INSERTs into the tables),
drives the store only through the ports (`MessageLeases`, `ChannelStates`), and reads the rows
back. Both backends run on the wall clock: the fake's clock is the real one, as close to
PostgreSQL's `now()` as the cases need (they keep a margin of seconds around every time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.channel_state import ChannelStateStore
from outbox.db.messages import MessageStore
from outbox.domain.models import Claim, SendResult, SentAs, State
from outbox.domain.ratelimit import Limits
from outbox.ports import ChannelStates, MessageLeases
from tests.fakes import InMemoryMessageStore

LEASE = timedelta(minutes=1)
FAST = Limits(rate=10_000, burst=10_000)  # the bucket never interferes
A, B, C, D, E = (f"491510000000{n}" for n in range(1, 6))
RAND = 0.5  # the replay lane's coin, the same for both backends


@dataclass(frozen=True)
class Seen:
    """A row as read back after the store worked on it."""

    state: State
    attempts: int
    claimed_by: str | None
    next_attempt_at: datetime | None


class Harness(Protocol):
    store: MessageLeases
    channels: ChannelStates

    async def add(self, recipient: str, channel: str = "c", **columns: Any) -> int: ...
    async def last_inbound(self, recipient: str, at: datetime) -> None: ...
    async def pace(self, recipient: str, not_before: datetime) -> None: ...
    async def row(self, message_id: int) -> Seen: ...


class FakeHarness:
    def __init__(self) -> None:
        self.fake = InMemoryMessageStore(rand=lambda: RAND)
        self.store: MessageLeases = self.fake
        self.channels: ChannelStates = self.fake

    async def add(self, recipient: str, channel: str = "c", **columns: Any) -> int:
        payload = columns.pop("payload", {"type": "text", "text": {"body": "x"}})
        return self.fake.add(channel, recipient, payload, **columns)

    async def last_inbound(self, recipient: str, at: datetime) -> None:
        self.fake.set_last_inbound("c", recipient, at)

    async def pace(self, recipient: str, not_before: datetime) -> None:
        self.fake.set_pace("c", recipient, not_before)

    async def row(self, message_id: int) -> Seen:
        r = self.fake.rows[message_id]
        return Seen(r.state, r.attempts, r.claimed_by, r.next_attempt_at)


class PostgresHarness:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine
        self.store: MessageLeases = MessageStore(engine, rand=lambda: RAND)
        self.channels: ChannelStates = ChannelStateStore(engine)

    async def _run(self, sql: str, **params: Any) -> Any:
        async with self._engine.begin() as connection:
            result = await connection.execute(text(sql), params)
            return result.first() if result.returns_rows else None

    async def add(self, recipient: str, channel: str = "c", **columns: Any) -> int:
        columns.setdefault("payload", {"type": "text", "text": {"body": "x"}})
        values = {"channel": channel, "recipient": recipient, **columns}
        for name, value in values.items():
            if name in ("payload", "fallback_template"):
                values[name] = json.dumps(value)
            elif name in ("state", "sent_as"):
                values[name] = str(value)
        placeholders = ", ".join(
            f"CAST(:{name} AS jsonb)" if name in ("payload", "fallback_template") else f":{name}"
            for name in values
        )
        row = await self._run(
            f"INSERT INTO outbox.messages ({', '.join(values)}) VALUES ({placeholders}) "
            "RETURNING id",
            **values,
        )
        return int(row.id)

    async def last_inbound(self, recipient: str, at: datetime) -> None:
        await self._run(
            "INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at) VALUES ('c', :wa_id, :at)",
            wa_id=recipient,
            at=at,
        )

    async def pace(self, recipient: str, not_before: datetime) -> None:
        await self._run(
            "INSERT INTO outbox.recipient_pace (channel, wa_id, not_before) VALUES ('c', :wa_id, :t)",
            wa_id=recipient,
            t=not_before,
        )

    async def row(self, message_id: int) -> Seen:
        r = await self._run(
            "SELECT state, attempts, claimed_by, next_attempt_at FROM outbox.messages "
            "WHERE id = :id",
            id=message_id,
        )
        return Seen(State(r.state), r.attempts, r.claimed_by, r.next_attempt_at)


@pytest.fixture(params=["fake", "postgres"])
def harness(request: pytest.FixtureRequest) -> Harness:
    if request.param == "fake":
        return FakeHarness()
    return PostgresHarness(request.getfixturevalue("engine"))


def _now() -> datetime:
    return datetime.now(UTC)


async def _claim(h: Harness, limit: int = 10, worker: str = "w1") -> list[int]:
    return [m.id for m in (await h.store.claim("c", limit, worker, LEASE, FAST)).messages]


def _wait(claim: Claim) -> float:
    assert claim.wait is not None, "the claim reports no wait"
    return claim.wait


def _accepted(message_id: int, **fields: Any) -> SendResult:
    return SendResult(message_id, State.ACCEPTED, _now(), wamid=f"wamid.{message_id}", **fields)


async def test_claim_takes_the_best_priority_first_up_to_the_limit(harness: Harness) -> None:
    low, high, mid, high2 = [
        await harness.add(r, priority=p) for r, p in ((A, 0), (B, 5), (C, 1), (D, 5))
    ]
    assert await _claim(harness, limit=3) == [high, high2, mid]
    for message_id in (high, high2, mid):
        assert await harness.row(message_id) == Seen(State.SENDING, 1, "w1", None)
    assert await harness.row(low) == Seen(State.QUEUED, 0, None, None)


async def test_the_claim_hands_over_the_row_and_the_recipients_window(harness: Harness) -> None:
    created, expires, inbound = (_now() - timedelta(minutes=m) for m in (5, -60, 3))
    payload = {"type": "text", "text": {"body": "hello"}}
    fallback = {"type": "template", "template": {"name": "t"}}
    message_id = await harness.add(
        A,
        payload=payload,
        fallback_template=fallback,
        created_at=created,
        expires_at=expires,
        sent_as=SentAs.FALLBACK_TEMPLATE,
        attempts=2,
    )
    await harness.last_inbound(A, inbound)
    [m] = (await harness.store.claim("c", 10, "w1", LEASE, FAST)).messages
    assert (m.id, m.channel, m.recipient, m.payload, m.fallback_template) == (
        message_id,
        "c",
        A,
        payload,
        fallback,
    )
    assert (m.attempts, m.created_at, m.expires_at) == (3, created, expires)
    assert (m.planned, m.last_inbound_at) == (SentAs.FALLBACK_TEMPLATE, inbound)


async def test_one_open_row_per_recipient_in_insertion_order(harness: Harness) -> None:
    a1 = await harness.add("+49 151-000 00001")
    a2 = await harness.add(A)
    a3 = await harness.add("49 (151) 000.00001")
    b1 = await harness.add(B, priority=9)
    other = await harness.add(A, channel="other")
    assert await _claim(harness) == [b1, a1]
    assert await _claim(harness) == []
    assert await harness.store.complete([_accepted(a1), _accepted(b1)], "w1") == 2
    assert await _claim(harness) == [a2]
    assert await harness.row(a3) == Seen(State.QUEUED, 0, None, None)
    assert await harness.row(other) == Seen(State.QUEUED, 0, None, None)


async def test_rows_scheduled_for_later_or_backing_off_wait(harness: Harness) -> None:
    later, retry = _now() + timedelta(hours=2), _now() + timedelta(hours=1)
    scheduled = await harness.add(A, send_after=later)
    backing_off = await harness.add(B, next_attempt_at=retry, attempts=1)
    due = await harness.add(C, next_attempt_at=_now() - timedelta(seconds=1), attempts=1)
    past = await harness.add(D, send_after=_now() - timedelta(hours=1))
    assert await _claim(harness) == [due, past]
    assert await harness.row(scheduled) == Seen(State.QUEUED, 0, None, later)
    assert await harness.row(backing_off) == Seen(State.QUEUED, 1, None, retry)
    assert await harness.store.next_due("c") == retry


async def test_complete_writes_only_the_rows_this_worker_still_holds(harness: Harness) -> None:
    a1, b1 = await harness.add(A), await harness.add(B)
    assert await _claim(harness) == [a1, b1]
    assert await harness.store.complete([_accepted(a1), _accepted(b1)], "w2") == 0
    assert await harness.row(a1) == Seen(State.SENDING, 1, "w1", None)
    assert await harness.store.complete([_accepted(a1)], "w1") == 1
    assert await harness.row(a1) == Seen(State.ACCEPTED, 1, None, None)
    assert await harness.row(b1) == Seen(State.SENDING, 1, "w1", None)
    assert await harness.store.complete([_accepted(a1)], "w1") == 0
    assert await harness.store.complete([], "w1") == 0


async def test_complete_writes_the_holders_answer_over_its_rescued_row(harness: Harness) -> None:
    rescued = await harness.add(
        A, state=State.UNKNOWN, claimed_by="w1", attempts=1, error_code="lease_expired"
    )
    unknown = await harness.add(
        B, state=State.UNKNOWN, claimed_by="w1", attempts=1, error_code="no_response"
    )
    assert await harness.store.complete([_accepted(rescued)], "w2") == 0
    assert await harness.store.complete([_accepted(rescued), _accepted(unknown)], "w1") == 1
    assert await harness.row(rescued) == Seen(State.ACCEPTED, 1, None, None)
    assert await harness.row(unknown) == Seen(State.UNKNOWN, 1, "w1", None)


async def test_renew_keeps_the_workers_rows_and_takes_back_its_rescued_ones(
    harness: Harness,
) -> None:
    leased = await harness.add(A, state=State.SENDING, claimed_by="w1", attempts=1)
    rescued = await harness.add(
        B, state=State.UNKNOWN, claimed_by="w1", attempts=1, error_code="lease_expired"
    )
    resent = await harness.add(C, state=State.QUEUED, attempts=1)  # a resend cleared its holder
    unknown = await harness.add(
        D, state=State.UNKNOWN, claimed_by="w1", attempts=1, error_code="no_response"
    )
    theirs = await harness.add(E, state=State.SENDING, claimed_by="w2", attempts=1)
    ids = [theirs, unknown, resent, rescued, leased]
    assert await harness.store.renew(ids, "w1", LEASE) == ([leased], [rescued])
    assert await harness.row(leased) == Seen(State.SENDING, 1, "w1", None)
    assert await harness.row(rescued) == Seen(State.SENDING, 1, "w1", None)
    assert await harness.row(resent) == Seen(State.QUEUED, 1, None, None)
    assert await harness.row(unknown) == Seen(State.UNKNOWN, 1, "w1", None)
    assert await harness.row(theirs) == Seen(State.SENDING, 1, "w2", None)
    assert await harness.store.renew(ids, "w1", LEASE) == ([leased, rescued], [])
    assert await harness.store.renew([], "w1", LEASE) == ([], [])


async def test_a_backed_off_row_holds_its_recipients_later_rows(harness: Harness) -> None:
    """They wait behind it without borrowing its retry time (issue 15, item 4): when it ends,
    whichever way, the next one goes at once."""
    a1, a2, a3, b1 = [await harness.add(r) for r in (A, A, A, B)]
    b2 = await harness.add(B)
    assert await _claim(harness) == [a1, b1]
    retry = _now() + timedelta(hours=1)
    backed_off = SendResult(a1, State.QUEUED, _now(), error_code="x", next_attempt_at=retry)
    assert await harness.store.complete([backed_off, _accepted(b1)], "w1") == 2
    assert await harness.row(a1) == Seen(State.QUEUED, 1, None, retry)
    assert await harness.row(a2) == Seen(State.QUEUED, 0, None, None)
    assert await harness.row(a3) == Seen(State.QUEUED, 0, None, None)
    assert await harness.row(b2) == Seen(State.QUEUED, 0, None, None)
    assert await _claim(harness) == [b2]
    assert await harness.store.next_due("c") == retry


async def test_pace_until_keeps_the_recipients_next_row_back(harness: Harness) -> None:
    a1, a2, b1 = await harness.add(A), await harness.add(A), await harness.add(B)
    b2 = await harness.add(B)
    assert await _claim(harness) == [a1, b1]
    pace = _now() + timedelta(minutes=10)
    earlier = pace - timedelta(minutes=5)
    results = [_accepted(a1, pace_until=pace), _accepted(b1, pace_until=earlier)]
    assert await harness.store.complete(results, "w1") == 2
    assert await harness.row(a2) == Seen(State.QUEUED, 0, None, None)
    assert await _claim(harness) == []
    assert await harness.store.next_due("c") == earlier
    assert await harness.row(b2) == Seen(State.QUEUED, 0, None, None)


async def test_release_gives_rows_back_with_their_attempt(harness: Harness) -> None:
    a1, b1 = await harness.add(A), await harness.add(B)
    assert await _claim(harness) == [a1, b1]
    assert await harness.store.release([a1, b1], "w2") == 0
    assert await harness.store.release([a1], "w1") == 1
    assert await harness.row(a1) == Seen(State.QUEUED, 0, None, None)
    assert await harness.row(b1) == Seen(State.SENDING, 1, "w1", None)
    assert await harness.store.release([], "w1") == 0
    assert await _claim(harness, worker="w3") == [a1]
    assert await harness.row(a1) == Seen(State.SENDING, 1, "w3", None)


async def test_the_bucket_grants_its_burst_and_reports_the_wait(harness: Harness) -> None:
    limits = Limits(rate=2, burst=3)
    for recipient in (A, B, C, D):
        await harness.add(recipient)
    claim = await harness.store.claim("c", 4, "w1", LEASE, limits)
    assert len(claim.messages) == 3
    assert 0 < _wait(claim) <= 0.5
    assert claim.rate == 2
    again = await harness.store.claim("c", 4, "w1", LEASE, limits)
    assert again.messages == []
    assert 0 < _wait(again) <= 0.5


async def test_a_bucket_with_tokens_left_reports_no_wait(harness: Harness) -> None:
    await harness.add(A)
    claim = await harness.store.claim("c", 4, "w1", LEASE, Limits(rate=2, burst=3))
    assert (len(claim.messages), claim.wait) == (1, None)
    assert await harness.store.next_due("c") is None


async def test_priority_beats_age_across_recipients(harness: Harness) -> None:
    old = await harness.add(A)
    urgent = await harness.add(B, priority=9)
    assert await _claim(harness, limit=1) == [urgent]
    assert await _claim(harness, limit=1) == [old]


async def test_replayed_rows_take_their_share_and_live_rows_the_rest(harness: Harness) -> None:
    replayed_at = _now() - timedelta(minutes=1)
    r1 = await harness.add(A, replayed_at=replayed_at)
    r2 = await harness.add(B, replayed_at=replayed_at)
    l1, l2, l3 = await harness.add(C), await harness.add(D), await harness.add(E)
    # 3 tokens x 0.2 = 0.6, rounded up when the coin (0.5) falls below it: one replayed row.
    assert await _claim(harness, limit=3) == [r1, l1, l2]
    assert await _claim(harness, limit=3) == [r2, l3]


async def test_a_slowed_down_channel_is_held_and_a_paused_one_waits(harness: Harness) -> None:
    await harness.add(A)
    rate, until = await harness.channels.slow_down("c", FAST, timedelta(seconds=30))
    assert rate == FAST.rate / 2
    assert until > _now() + timedelta(seconds=25)
    held = await harness.store.claim("c", 10, "w1", LEASE, FAST)
    # The rate climbs back by 5 % of the configured rate a second from the slow-down on.
    assert held.messages == []
    assert FAST.rate / 2 <= held.rate < FAST.rate * 0.6
    assert 25 < _wait(held) <= 30
    assert await harness.channels.pause(
        "p", epoch=0, seconds=60.0, reason="broken", worker="w1", key=None
    )
    await harness.add(B, channel="p")
    paused = await harness.store.claim("p", 10, "w1", LEASE, FAST)
    assert paused.messages == []
    assert 55 < _wait(paused) <= 60


async def test_a_recipients_pace_only_ever_grows(harness: Harness) -> None:
    a1, a2 = await harness.add(A), await harness.add(A)
    assert await _claim(harness) == [a1]
    later = _now() + timedelta(minutes=20)
    await harness.pace(A, later)
    results = [_accepted(a1, pace_until=later - timedelta(minutes=10))]
    assert await harness.store.complete(results, "w1") == 1
    assert await _claim(harness) == []
    assert await harness.store.next_due("c") == later
    assert await harness.row(a2) == Seen(State.QUEUED, 0, None, None)


async def test_a_pace_that_has_passed_holds_nothing(harness: Harness) -> None:
    await harness.pace(A, _now() - timedelta(seconds=1))
    a1 = await harness.add(A)
    assert await harness.store.next_due("c") is None
    assert await _claim(harness) == [a1]


async def _pause(h: Harness, epoch: int, seconds: float, key: str | None = None) -> bool:
    return await h.channels.pause(
        "c", epoch=epoch, seconds=seconds, reason="broken", worker="w1", key=key
    )


async def _blocked_for(h: Harness) -> float:
    claim = await h.store.claim("c", 10, "w1", LEASE, FAST)
    assert claim.messages == []
    return claim.wait or 0.0


async def test_a_success_ends_the_pause_for_every_failure_sent_before_it(harness: Harness) -> None:
    await harness.add(A)
    assert (await harness.store.claim("c", 0, "w1", LEASE, FAST)).pause_epoch == 0
    assert await _pause(harness, 0, 60.0)
    assert 55 < await _blocked_for(harness) <= 60
    assert await _pause(harness, 0, 5.0)  # an extension never shortens the pause
    assert 55 < await _blocked_for(harness) <= 60
    assert await harness.channels.resume("c", "w2") == 1
    assert await harness.channels.pause_epoch("c") == 1
    # A failure of a request claimed before that success: not written, nothing blocked.
    assert not await _pause(harness, 0, 600.0)
    claim = await harness.store.claim("c", 10, "w1", LEASE, FAST)
    assert (len(claim.messages), claim.pause_epoch) == (1, 1)
    assert await _pause(harness, 1, 60.0)  # a failure after it pauses again
    assert 55 < await _blocked_for(harness) <= 60


async def test_a_new_key_lifts_only_a_pause_another_key_caused(harness: Harness) -> None:
    await harness.store.claim("c", 0, "w1", LEASE, FAST)  # a full bucket
    assert await _pause(harness, 0, 60.0)  # server errors: no key to blame
    assert not await harness.channels.lift_credential_pause("c", "new", "w2")
    assert await _pause(harness, 0, 60.0, key="old")
    assert not await harness.channels.lift_credential_pause("c", "old", "w2")
    assert await harness.channels.pause_epoch("c") == 0
    assert await harness.channels.lift_credential_pause("c", "new", "w2")
    assert await harness.channels.pause_epoch("c") == 1
    await harness.add(A)
    assert len((await harness.store.claim("c", 10, "w1", LEASE, FAST)).messages) == 1
    assert not await harness.channels.lift_credential_pause("c", "newer", "w2")


async def test_one_throttling_event_cuts_the_rate_once(harness: Harness) -> None:
    first, until = await harness.channels.slow_down("c", FAST, timedelta(seconds=30))
    again, later = await harness.channels.slow_down("c", FAST, timedelta(seconds=5))
    assert first == FAST.rate / 2
    assert FAST.rate / 2 <= again < FAST.rate * 0.51
    assert later == until  # the hold only ever grows

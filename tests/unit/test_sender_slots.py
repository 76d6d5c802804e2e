"""Slots and shares, against in-memory fakes: a slot is free when its request ends (not when its
answer is written), answers waiting to be written are bounded by the result buffer, and a
channel with a few rows beside another's backlog gets its rows out at once."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from outbox.config import ChannelConfig, Secret, SenderConfig
from outbox.domain.codes import Code, Title
from outbox.domain.models import Claim, Dialect, SendResult, State
from outbox.domain.ratelimit import Limits
from outbox.domain.request import ApiRequest
from outbox.domain.response import Accepted
from outbox.errors import DatabaseUnavailable
from outbox.ports import ClaimRequest, Due
from outbox.services import results
from outbox.services import slots as slots_module
from outbox.services.sender import Sender
from tests.fakes import AcceptingApi, InMemoryMessageStore


def _channel(channel_id: str) -> ChannelConfig:
    return ChannelConfig(channel_id, Dialect.CLOUD, "http://127.0.0.1:9", Secret("k"), 10_000.0)


def _add(store: InMemoryMessageStore, channel: str, count: int, first: int = 0) -> list[int]:
    ids = []
    for n in range(first, first + count):
        recipient = f"49151{n:08}"
        ids.append(store.add(channel, recipient, {"type": "text", "text": {"body": "x"}}))
        store.set_last_inbound(channel, recipient, datetime.now(UTC))
    return ids


class _SlowWrites(InMemoryMessageStore):
    """A database that takes no answer until told to."""

    def __init__(self) -> None:
        super().__init__()
        self.writable = asyncio.Event()

    async def complete(self, results: Sequence[SendResult], worker: str) -> int:
        await self.writable.wait()
        return await super().complete(results, worker)


class _CountingApi(AcceptingApi):
    def __init__(self) -> None:
        self.requests: list[tuple[str, int]] = []

    async def send(self, channel: ChannelConfig, request: ApiRequest) -> Accepted:
        self.requests.append((channel.id, len(self.requests)))
        await asyncio.sleep(0.005)
        return await super().send(channel, request)


async def _until_requested(api: _CountingApi, channel: str, count: int, seconds: float) -> None:
    """Until `count` requests went for `channel`, or `seconds` passed."""
    for _ in range(int(seconds * 100)):
        if sum(1 for requested, _ in api.requests if requested == channel) >= count:
            return
        await asyncio.sleep(0.01)


async def requests_for_a_named_row(
    sender: Sender,
    store: InMemoryMessageStore,
    api: _CountingApi,
    channel: str,
    *,
    named: bool = True,
    seconds: float = 1.5,
    before_wake: Callable[[], None] = lambda: None,
) -> tuple[int, list[int]]:
    """Run the sender until 100 requests went (the backlogs are flowing), insert one row on
    `channel` and wake the sender with its name (as its insert's notification does; without
    with `named` false), then wait up to `seconds` for its request. Returns the requests made
    before the wake-up and the positions of `channel`'s requests."""
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        for _ in range(1000):
            if len(api.requests) >= 100:
                break
            await asyncio.sleep(0.01)
        _add(store, channel, 1, first=99_999)
        before_wake()
        before = len(api.requests)
        sender.wake([channel] if named else [])
        await _until_requested(api, channel, 1, seconds=seconds)
    finally:
        stop.set()
        await task
    return before, [n for requested, n in api.requests if requested == channel]


async def _run_until(sender: Sender, done: asyncio.Event | None, seconds: float) -> None:
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        if done is not None:
            await asyncio.wait_for(done.wait(), seconds)
        else:
            await asyncio.sleep(seconds)
    finally:
        stop.set()
        await task


async def test_a_slot_is_free_when_its_request_ends_not_when_its_answer_is_written() -> None:
    store, api = _SlowWrites(), _CountingApi()
    _add(store, "c", 40)
    config = SenderConfig(max_in_flight=4, batch_size=4, poll_interval=timedelta(seconds=30))
    sender = Sender(store, api, [_channel("c")], config, worker_id="w", channel_state=store)
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    for _ in range(200):
        if len(api.requests) == 40:
            break
        await asyncio.sleep(0.01)
    # Every row went out though no answer could be written yet (it used to stop at 4).
    assert len(api.requests) == 40
    store.writable.set()
    stop.set()
    await task
    assert len(store.completed) == 40


async def test_answers_waiting_to_be_written_are_bounded_by_the_buffer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(results, "HELD_AT_MOST", 10)
    store, api = _SlowWrites(), _CountingApi()
    _add(store, "c", 40)
    config = SenderConfig(max_in_flight=4, batch_size=4, poll_interval=timedelta(seconds=30))
    sender = Sender(store, api, [_channel("c")], config, worker_id="w", channel_state=store)
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    await asyncio.sleep(0.5)
    # 10 answers held, plus at most the 4 slots and the 4 rows claimed ahead of them before
    # the buffer filled.
    assert 10 <= len(api.requests) <= 18
    store.writable.set()
    for _ in range(300):
        if len(store.completed) == 40:
            break
        await asyncio.sleep(0.01)
    stop.set()
    await task
    assert len(store.completed) == 40


async def test_a_few_rows_beside_a_backlog_go_at_once() -> None:
    store, api = InMemoryMessageStore(), _CountingApi()
    _add(store, "big", 300)
    small = _add(store, "small", 3, first=1000)
    config = SenderConfig(max_in_flight=10, batch_size=10, poll_interval=timedelta(seconds=30))
    sender = Sender(
        store, api, [_channel("big"), _channel("small")], config, worker_id="w", channel_state=store
    )
    await _run_until(sender, None, 1.0)
    order = [n for channel, n in api.requests if channel == "small"]
    assert len(order) == len(small)
    # The backlog's channel never takes every slot: the small channel's rows are among the
    # first few requests, not behind 300.
    assert max(order) < 30, order


class _CountingStore(InMemoryMessageStore):
    """Records the size of each claim asked for and each look for due channels, and the looks
    made while rows were still queued (the drain's tail looks more often as slots free up, how
    often depends on timing: under a CPU burner one more)."""

    def __init__(self) -> None:
        super().__init__()
        self.claim_sizes: list[int] = []
        self.due_lookups = 0
        self.lookups_in_backlog = 0

    async def due_channels(self, after: str, limit: int, also: Sequence[str] = ()) -> Due:
        self.due_lookups += 1
        self.lookups_in_backlog += any(r.state is State.QUEUED for r in self.rows.values())
        return await super().due_channels(after, limit, also)

    async def claim_many(
        self, requests: Sequence[ClaimRequest], worker: str, lease: timedelta, **kw: Any
    ) -> dict[str, Claim]:
        self.claim_sizes.append(sum(r.limit for r in requests))
        return await super().claim_many(requests, worker, lease, **kw)


async def test_a_backlog_is_claimed_in_batches_not_slot_by_slot() -> None:
    """Issue 16: a round trip for 1 row while 19 are in flight costs what one for a batch
    does; claims wait for a quarter of the slots (before: claims of 1 to 3 rows)."""
    store, api = _CountingStore(), _CountingApi()
    _add(store, "c", 300)
    config = SenderConfig(max_in_flight=20, batch_size=20, poll_interval=timedelta(seconds=30))
    sender = Sender(store, api, [_channel("c")], config, worker_id="w", channel_state=store)
    await asyncio.wait_for(sender.run(asyncio.Event(), drain=True), 30)
    assert len(api.requests) == 300
    assert min(store.claim_sizes) >= 5, store.claim_sizes


async def test_a_backlog_s_rounds_skip_most_looks_for_due_channels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A channel whose claim was full has more: the next rounds claim it at once, and the
    database is asked again which channels are due only every HOT_FOR seconds."""
    monkeypatch.setattr(slots_module, "HOT_FOR", 10.0)
    # The rounds cap has its own test below; here the number of rounds depends on how the
    # slots happened to free up, so it must not end the hot spell.
    monkeypatch.setattr(slots_module, "HOT_ROUNDS", 10_000)
    store, api = _CountingStore(), _CountingApi()
    _add(store, "c", 300)
    config = SenderConfig(max_in_flight=20, batch_size=20, poll_interval=timedelta(seconds=30))
    sender = Sender(store, api, [_channel("c")], config, worker_id="w", channel_state=store)
    await asyncio.wait_for(sender.run(asyncio.Event(), drain=True), 30)
    assert len(api.requests) == 300
    assert len(store.claim_sizes) >= 15
    # While the backlog lasts, only the first look (every round looked before issue 16); once
    # a claim comes up short (the drain's end) the rounds look again.
    assert store.lookups_in_backlog == 1, (store.due_lookups, len(store.claim_sizes))


class _EmptyClaimsStore(InMemoryMessageStore):
    """Counts the channels a claim asked rows of and got none."""

    def __init__(self) -> None:
        super().__init__()
        self.empty = 0
        self.claimed = 0

    async def claim_many(
        self, requests: Sequence[ClaimRequest], worker: str, lease: timedelta, **kw: Any
    ) -> dict[str, Claim]:
        claims = await super().claim_many(requests, worker, lease, **kw)
        self.empty += sum(1 for claim in claims.values() if not claim.messages)
        self.claimed += sum(1 for claim in claims.values() if claim.messages)
        return claims


async def _drained(
    store: InMemoryMessageStore, api: _CountingApi, channels: list[ChannelConfig], *, slots: int
) -> Sender:
    """A sender with `slots` in flight (and as its batch, none claimed ahead) that has drained
    the store."""
    config = SenderConfig(
        max_in_flight=slots, batch_size=slots, prefetch=0, poll_interval=timedelta(seconds=30)
    )
    sender = Sender(store, api, channels, config, worker_id="w", channel_state=store)
    await asyncio.wait_for(sender.run(asyncio.Event(), drain=True), 30)
    return sender


def _two_rows_each(store: InMemoryMessageStore, count: int) -> list[ChannelConfig]:
    channels = [_channel(f"c{n:02}") for n in range(count)]
    for n, channel in enumerate(channels):
        _add(store, channel.id, 2, first=100 * n)
    return channels


async def test_a_channel_its_claim_emptied_is_not_claimed_again_unasked() -> None:
    """Issue 16: 20,000 rows over 10,000 channels, two a channel, each claim taking one: a
    channel whose claim got all it asked for was claimed again without asking which channels
    are due, also when that claim had taken its last row, and a third of the rounds came back
    empty. Only a claim that saw more rows ready than it was granted (`Claim.more`) says so."""
    store, api = _EmptyClaimsStore(), _CountingApi()
    await _drained(store, api, _two_rows_each(store, 20), slots=20)
    assert len(api.requests) == 40
    assert store.claimed == 40  # one row a claim: each channel's share of 20 slots is one
    assert store.empty == 0


async def test_a_clock_that_does_not_move_never_leaves_other_channels_unlooked_for() -> None:
    """Rounds skip the due lookup while a channel's claims are full, for HOT_FOR seconds or
    HOT_ROUNDS rounds, whichever ends first: rows that arrive on another channel meanwhile are
    found even when the monotonic clock stands still."""
    store, api = InMemoryMessageStore(), _CountingApi()
    _add(store, "big", 400)
    config = SenderConfig(max_in_flight=10, batch_size=10, poll_interval=timedelta(seconds=30))
    sender = Sender(
        store, api, [_channel("big"), _channel("small")], config, worker_id="w",
        channel_state=store, monotonic=lambda: 0.0,
    )  # fmt: skip
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        for _ in range(500):
            if len(api.requests) >= 20:
                break
            await asyncio.sleep(0.01)
        _add(store, "small", 3, first=1000)
        sender.wake()
        await _until_requested(api, "small", 3, seconds=10)
    finally:
        stop.set()
        await task
    small = [n for channel, n in api.requests if channel == "small"]
    assert len(small) == 3
    assert max(small) < 20 + (slots_module.HOT_ROUNDS + 2) * 10 < 400, small


class _StartCountingStore(InMemoryMessageStore):
    """Records each start of channels: the credential pauses lifted, the buckets made."""

    def __init__(self) -> None:
        super().__init__()
        self.lifts: list[int] = []
        self.ensured: list[int] = []

    async def lift_credential_pauses(self, keys: Mapping[str, str], worker: str) -> list[str]:
        self.lifts.append(len(keys))
        return await super().lift_credential_pauses(keys, worker)

    async def ensure_buckets(self, limits: Mapping[str, Limits]) -> None:
        self.ensured.append(len(limits))
        await super().ensure_buckets(limits)


async def test_every_channel_is_started_in_one_statement_before_the_first_claim() -> None:
    """Issue 16: a channel's first claim lifted its old key's pause and made its bucket row,
    one transaction each per claim round while 10,000 channels were each claimed for the first
    time. Now all the tracked channels start at once, and a channel added later on its own."""
    store, api = _StartCountingStore(), _CountingApi()
    channels = _two_rows_each(store, 40)
    sender = await _drained(store, api, channels, slots=10)
    assert len(api.requests) == 80
    assert (store.lifts, store.ensured) == ([40], [40])
    added = _channel("late")
    _add(store, added.id, 1, first=9000)
    sender.set_channels([*channels, added])
    await asyncio.wait_for(sender.run(asyncio.Event(), drain=True), 30)
    assert len(api.requests) == 81
    assert (store.lifts, store.ensured) == ([40, 1], [40, 1])


QUIET_SLOTS = 10


def _backlogs_beside_a_quiet_channel(store: InMemoryMessageStore, api: _CountingApi) -> Sender:
    """300 channels with 20 rows each, and "zzz", last in the cursor's order, with none."""
    backlogged = [f"b{n:03d}" for n in range(300)]
    for n, channel in enumerate(backlogged):
        _add(store, channel, 20, first=n * 20)
    config = SenderConfig(
        max_in_flight=QUIET_SLOTS, batch_size=QUIET_SLOTS, poll_interval=timedelta(seconds=30)
    )
    channels = [_channel(c) for c in [*backlogged, "zzz"]]
    return Sender(store, api, channels, config, worker_id="w", channel_state=store)


@pytest.mark.parametrize("named", [True, False])
async def test_a_row_beside_backlogs_on_many_channels_goes_first_when_its_insert_names_it(
    named: bool,
) -> None:
    """300 channels each hold a backlog; one row arrives on another channel, last in the
    cursor's order. Named by its insert's notification (migration 0027) it is claimed in the
    next round; unnamed it waits for the cursor to pass 300 channels (the control)."""
    store, api = InMemoryMessageStore(), _CountingApi()
    sender = _backlogs_beside_a_quiet_channel(store, api)
    before, after = await requests_for_a_named_row(sender, store, api, "zzz", named=named)
    if named:
        assert after, "never claimed"
        assert after[0] - before <= 2 * QUIET_SLOTS, (before, after)
    else:
        assert not after or after[0] - before > 10 * QUIET_SLOTS, (before, after)


class _HangingApi(AcceptingApi):
    """Requests that never answer (the API hangs)."""

    async def send(self, channel: ChannelConfig, request: ApiRequest) -> Accepted:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_at_stop_requests_out_past_the_grace_period_leave_their_rows_unknown() -> None:
    """The request may have arrived: `unknown` with `shutdown`, never back to `queued`; rows
    whose request never started go back to `queued`."""
    store = InMemoryMessageStore()
    ids = _add(store, "c", 5)
    config = SenderConfig(max_in_flight=3, batch_size=3, shutdown_grace=timedelta(seconds=0.1))
    sender = Sender(
        store, _HangingApi(), [_channel("c")], config, worker_id="w", channel_state=store
    )
    await _run_until(sender, None, 0.3)
    rows = [store.rows[i] for i in ids]
    out = [r for r in rows if r.state is State.UNKNOWN]
    assert len(out) == 3
    assert {(r.error_code, r.error_title) for r in out} == {(Code.SHUTDOWN, Title.SHUTDOWN)}
    assert [r.state for r in rows if r not in out] == [State.QUEUED, State.QUEUED]


class _DueFailsOnce(InMemoryMessageStore):
    def __init__(self) -> None:
        super().__init__()
        self.fail_next = False

    async def due_channels(self, after: str, limit: int, also: Sequence[str] = ()) -> Due:
        if self.fail_next:
            self.fail_next = False
            raise DatabaseUnavailable("the database went away")
        return await super().due_channels(after, limit, also)


async def test_a_named_channel_is_still_visited_first_after_a_failed_look() -> None:
    """The names are taken once the look for due channels succeeded: a database error in
    between does not send the named channel back behind 300 backlogs."""
    store, api = _DueFailsOnce(), _CountingApi()
    sender = _backlogs_beside_a_quiet_channel(store, api)

    def fail_the_next_look() -> None:
        store.fail_next, sender._slots.hot = True, []  # the next round asks the database

    before, after = await requests_for_a_named_row(
        sender, store, api, "zzz", seconds=3, before_wake=fail_the_next_look
    )
    assert not store.fail_next  # the look failed once
    assert after, "never claimed"
    assert after[0] - before <= 2 * QUIET_SLOTS, (before, after)

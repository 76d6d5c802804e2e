"""Rows claimed ahead of the request slots (issue 16): a slot freed when its request ends goes
to a row already claimed, not to the next claim's round trip; requests in flight stay within
max_in_flight; a waiting row of higher priority goes first; at stop, rows still waiting go back
to the queue unsent."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import replace
from datetime import timedelta
from typing import Any

from outbox.config import ChannelConfig, Secret, SenderConfig
from outbox.domain.models import Claim, State
from outbox.domain.request import ApiRequest
from outbox.domain.response import Accepted, Rejected
from outbox.ports import ClaimRequest
from outbox.services.sender import Sender
from tests.fakes import AcceptingApi, InMemoryMessageStore
from tests.support import sending
from tests.unit.test_sender_slots import _add, _channel


class _SlowClaims(InMemoryMessageStore):
    """A database whose every claim takes `delay` seconds."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    async def claim_many(
        self, requests: Sequence[ClaimRequest], worker: str, lease: timedelta, **kw: Any
    ) -> dict[str, Claim]:
        await asyncio.sleep(self.delay)
        return await super().claim_many(requests, worker, lease, **kw)


class _TimedApi(AcceptingApi):
    """Each request takes `latency` seconds; records when each started and the most at once."""

    def __init__(self, latency: float) -> None:
        self.latency = latency
        self.started: list[float] = []
        self.now = self.most = 0

    async def send(self, channel: ChannelConfig, request: ApiRequest) -> Accepted:
        self.started.append(time.monotonic())
        self.now += 1
        self.most = max(self.most, self.now)
        try:
            await asyncio.sleep(self.latency)
            return await super().send(channel, request)
        finally:
            self.now -= 1


async def _drain(store: InMemoryMessageStore, api: AcceptingApi, config: SenderConfig) -> None:
    sender = Sender(store, api, [_channel("c")], config, worker_id="w", channel_state=store)
    await asyncio.wait_for(sender.run(asyncio.Event(), drain=True), 30)


async def test_a_freed_slot_takes_a_row_claimed_ahead_instead_of_waiting_for_a_claim() -> None:
    gaps = {}
    for prefetch in (4, 0):  # 0: the control, every freed slot waits for the next claim
        store, api = _SlowClaims(delay=0.3), _TimedApi(latency=0.05)
        _add(store, "c", 16)
        config = SenderConfig(max_in_flight=4, batch_size=8, prefetch=prefetch)
        await _drain(store, api, config)
        assert len(api.started) == 16
        assert api.most == 4  # never more requests at once than max_in_flight
        gaps[prefetch] = api.started[4] - api.started[0]
    # The fifth request left as soon as one of the first four ended (0.05 s), not after the
    # next claim's 0.3 s.
    assert gaps[4] < 0.2
    assert gaps[0] >= 0.3


class _HeldApi(AcceptingApi):
    """Each request waits until the test lets it answer; records the recipients in order."""

    def __init__(self) -> None:
        self.order: list[str] = []
        self.answers: list[asyncio.Event] = []

    async def send(self, channel: ChannelConfig, request: ApiRequest) -> Accepted:
        self.order.append(request.body["to"])
        answer = asyncio.Event()
        self.answers.append(answer)
        await answer.wait()
        return await super().send(channel, request)


async def _until(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    for _ in range(int(seconds * 100)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not within the time")


def _sending(store: InMemoryMessageStore) -> int:
    return sum(1 for row in store.rows.values() if row.state is State.SENDING)


@contextlib.asynccontextmanager
async def _running(
    store: InMemoryMessageStore,
    api: AcceptingApi,
    config: SenderConfig,
    channels: Sequence[str] = ("c",),
) -> AsyncIterator[Sender]:
    """A sender running over `channels` for the block, stopped at its end."""
    configs = [_channel(channel) for channel in channels]
    sender = Sender(store, api, configs, config, worker_id="w", channel_state=store)
    async with sending(sender):
        yield sender


async def test_a_waiting_row_of_higher_priority_goes_before_those_claimed_earlier() -> None:
    store, api = InMemoryMessageStore(), _HeldApi()
    _add(store, "c", 5)
    config = SenderConfig(max_in_flight=2, batch_size=2, prefetch=2)
    async with _running(store, api, config) as sender:
        # Rows 0 and 1 requested, rows 2 and 3 claimed and waiting for a slot.
        await _until(lambda: len(api.order) == 2 and _sending(store) == 4)
        _add(store, "c", 1, first=99)
        urgent = max(store.rows)
        store.rows[urgent].priority = 9
        sender.wake(["c"])
        api.answers[0].set()  # row 2 goes; the freed room claims the urgent row, which waits
        await _until(lambda: len(api.order) == 3 and store.rows[urgent].state is State.SENDING)
        api.answers[1].set()  # a slot again: the urgent row goes before row 3
        await _until(lambda: len(api.order) == 4)
        while len(api.order) < 6:
            for answer in api.answers:
                answer.set()
            await asyncio.sleep(0.01)
        for answer in api.answers:
            answer.set()
    numbers = [f"49151{n:08}" for n in (0, 1, 2, 99, 3, 4)]
    assert api.order == numbers


async def test_rows_waiting_for_a_slot_at_stop_go_back_to_the_queue_unsent() -> None:
    store, api = InMemoryMessageStore(), _HeldApi()
    ids = _add(store, "c", 6)
    config = SenderConfig(
        max_in_flight=2, batch_size=4, prefetch=2, shutdown_grace=timedelta(seconds=0.1)
    )
    async with _running(store, api, config) as sender:
        await _until(lambda: len(api.order) == 2 and _sending(store) == 4)
        assert sender.slots() == (2, 2)  # two requests out, two rows waiting
    states = [store.rows[i].state for i in ids]
    # Two requests out and never answered: unknown. The two waiting: queued, their attempt
    # given back. The last two were never claimed.
    assert states == [State.UNKNOWN] * 2 + [State.QUEUED] * 4
    assert [store.rows[i].attempts for i in ids[2:4]] == [0, 0]
    assert len(api.order) == 2


class _RefusedKeyApi(_HeldApi):
    """Every request is held, then answered 401: the key is refused, the channel pauses."""

    async def send(self, channel: ChannelConfig, request: ApiRequest) -> Any:
        await super().send(channel, request)
        return Rejected(401, None, "HTTP 401", None)


async def test_rows_claimed_ahead_go_back_unsent_when_their_channel_pauses_while_they_wait() -> (
    None
):
    store, api = InMemoryMessageStore(), _RefusedKeyApi()
    ids = _add(store, "c", 4)
    config = SenderConfig(
        max_in_flight=2, batch_size=2, prefetch=2, breaker_cooldown=timedelta(seconds=60)
    )
    async with _running(store, api, config):
        await _until(lambda: len(api.order) == 2 and _sending(store) == 4)
        for answer in api.answers:
            answer.set()  # 401: the breaker opens while rows 2 and 3 wait for a slot
        await _until(lambda: _sending(store) == 0)
        await asyncio.sleep(0.1)
    assert len(api.order) == 2  # the waiting rows were never requested
    assert [store.rows[i].state for i in ids[2:]] == [State.QUEUED] * 2
    assert [store.rows[i].attempts for i in ids[2:]] == [0, 0]


async def test_a_quiet_channel_s_row_goes_before_rows_a_busy_channel_claimed_ahead() -> None:
    """fq_codel's new flows first: a row of a channel with nothing else claimed does not wait
    behind the rows claimed ahead for a backlog (before: one more turn of the slots, 50 ms at
    200 in flight and a 50 ms API)."""
    store, api = InMemoryMessageStore(), _HeldApi()
    _add(store, "big", 10)
    config = SenderConfig(
        max_in_flight=2, batch_size=2, prefetch=2, shutdown_grace=timedelta(seconds=0.1)
    )
    async with _running(store, api, config, ("big", "s")) as sender:
        try:
            await _until(lambda: len(api.order) == 2 and _sending(store) == 4)
            _add(store, "s", 1, first=50)
            sender.wake(["s"])
            api.answers[0].set()  # big's row 2 goes; the freed room claims s's row, which waits
            await _until(lambda: len(api.order) == 3 and _sending(store) == 4)
            api.answers[1].set()
            await _until(lambda: len(api.order) == 4)
        finally:
            for answer in api.answers:
                answer.set()
    assert api.order[:4] == [f"49151{n:08}" for n in (0, 1, 2, 50)]


class _KeyRecordingApi(_HeldApi):
    def __init__(self) -> None:
        super().__init__()
        self.keys: list[str] = []

    async def send(self, channel: ChannelConfig, request: ApiRequest) -> Accepted:
        self.keys.append(channel.api_key.reveal())
        return await super().send(channel, request)


async def test_a_key_rotated_while_a_row_waits_is_the_one_its_request_carries() -> None:
    store, api = InMemoryMessageStore(), _KeyRecordingApi()
    _add(store, "c", 2)
    config = SenderConfig(max_in_flight=1, batch_size=1, prefetch=1)
    async with _running(store, api, config) as sender:
        await _until(lambda: len(api.order) == 1 and _sending(store) == 2)
        sender.set_channels([replace(_channel("c"), api_key=Secret("rotated"))])
        api.answers[0].set()
        await _until(lambda: len(api.order) == 2)
        api.answers[1].set()
    assert api.keys == ["k", "rotated"]


class _ClaimLog(InMemoryMessageStore):
    """Records the channels of every claim."""

    def __init__(self) -> None:
        super().__init__()
        self.rounds: list[list[str]] = []

    async def claim_many(
        self, requests: Sequence[ClaimRequest], worker: str, lease: timedelta, **kw: Any
    ) -> dict[str, Claim]:
        self.rounds.append([r.channel for r in requests])
        return await super().claim_many(requests, worker, lease, **kw)


async def test_a_channel_an_insert_named_is_claimed_in_a_short_round_of_its_own() -> None:
    """A round takes up to the batch for a backlog's channel (200 rows, about 50 ms at 0 ms);
    the named channel does not wait for one: its round holds it alone."""
    store, api = _ClaimLog(), _TimedApi(latency=0.005)
    _add(store, "big", 400)
    config = SenderConfig(max_in_flight=20, batch_size=20, prefetch=20)
    async with _running(store, api, config, ("big", "s")) as sender:
        await _until(lambda: len(api.started) >= 50)
        _add(store, "s", 1, first=500)
        sender.wake(["s"])
        await _until(lambda: any("s" in claim for claim in store.rounds))
    assert [claim for claim in store.rounds if "s" in claim] == [["s"]]

"""Slots and shares, against in-memory fakes: a slot is free when its request ends (not when its
answer is written), answers waiting to be written are bounded by the result buffer, and a
channel with a few rows beside another's backlog gets its rows out at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest

from outbox.config import ChannelConfig, Secret, SenderConfig
from outbox.domain.models import Dialect, SendResult
from outbox.domain.request import ApiRequest
from outbox.domain.response import Accepted
from outbox.services import results
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
    # 10 answers held, plus at most the 4 slots claimed before the buffer filled.
    assert 10 <= len(api.requests) <= 14
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

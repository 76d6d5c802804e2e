"""A partner's client with one number beside a client whose 200 numbers all hold backlogs: the
slots are shared per client first, so the one number gets half of them, not 1 in 201."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta

import pytest

from outbox.config import SenderConfig
from outbox.ports import Due
from outbox.services.sender import Sender
from tests.fakes import InMemoryMessageStore
from tests.unit.test_sender_slots import (
    _add,
    _channel,
    _CountingApi,
    _until_requested,
    requests_for_a_named_row,
)

SLOTS = 20
BIG = [f"a{n:03d}" for n in range(200)]
SMALL = "zzz"  # last in the cursor's order


def _sender(store: InMemoryMessageStore, api: _CountingApi, *, clients: bool) -> Sender:
    for n, channel in enumerate(BIG):
        _add(store, channel, 30, first=n * 30)
    _add(store, SMALL, 1000, first=10_000)
    channels = [replace(_channel(c), client_id="big" if clients else None) for c in BIG] + [
        replace(_channel(SMALL), client_id="small" if clients else None)
    ]
    config = SenderConfig(
        max_in_flight=SLOTS, batch_size=SLOTS, poll_interval=timedelta(seconds=30)
    )
    return Sender(store, api, channels, config, worker_id="w", channel_state=store)


@pytest.mark.parametrize("clients", [True, False])
async def test_a_client_with_one_number_gets_half_the_slots_beside_one_with_200(
    clients: bool,
) -> None:
    """The small client's rows came in one bulk insert, which names no channel. With client
    ids its number is found by the second look for due channels (the first one came back full:
    the next asks about the small client's numbers by name), within the first 700 requests;
    then it gets about half of the next 1,200: its client's portion is half the slots, and its
    channel stays in the rounds while it has rows even when the look, from the cursor, leaves
    it out. Without client ids (the control) every number is its own tenant: the cursor finds
    it (after 1,400-2,900 requests in runs here) and it gets a few of them; the setup does show
    the problem the client level removes."""
    store, api = InMemoryMessageStore(), _CountingApi()
    sender = _sender(store, api, clients=clients)
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        await _until_requested(api, SMALL, 1, seconds=10)
        found = next(n for channel, n in api.requests if channel == SMALL)
        await _until_count(api, found + 1200)
    finally:
        stop.set()
        await task
    after = api.requests[found : found + 1200]
    assert len(after) == 1200, len(after)
    small = sum(1 for channel, _ in after if channel == SMALL)
    if clients:
        assert found < 700, found
        assert 0.4 * len(after) <= small <= 0.6 * len(after), small
    else:
        assert small < 0.05 * len(after), small


async def test_client_ids_set_while_running_take_effect_at_once() -> None:
    """The registry gives the numbers their client ids while the sender runs (`set_channels`,
    as `channels import` and a registry change do): the small client's number, never found by
    the cursor in the first 600 requests here, is asked about by name and gets its half."""
    store, api = InMemoryMessageStore(), _CountingApi()
    sender = _sender(store, api, clients=False)
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        await _until_count(api, 600)
        assert all(channel != SMALL for channel, _ in api.requests[:600])  # the cursor's lot
        changed = len(api.requests)
        clients = [replace(_channel(c), client_id="big") for c in BIG]
        sender.set_channels([*clients, replace(_channel(SMALL), client_id="small")])
        await _until_count(api, changed + 1700)
    finally:
        stop.set()
        await task
    found = next((n for channel, n in api.requests if channel == SMALL), None)
    assert found is not None, "the small client's number was never claimed"
    assert found - changed < 700, (changed, found)
    after = api.requests[found : found + 1000]
    assert 0.4 * len(after) <= sum(1 for channel, _ in after if channel == SMALL), found


async def _until_count(api: _CountingApi, count: int) -> None:
    for _ in range(1000):
        if len(api.requests) >= count:
            return
        await asyncio.sleep(0.01)


class _AlsoCountingStore(InMemoryMessageStore):
    def __init__(self) -> None:
        super().__init__()
        self.asked_by_name: list[int] = []

    async def due_channels(self, after: str, limit: int, also: Sequence[str] = ()) -> Due:
        self.asked_by_name.append(len(also))
        return await super().due_channels(after, limit, also)


@pytest.mark.parametrize("numbers_each", [1, 2])
async def test_numbers_are_asked_about_by_name_only_when_a_client_holds_several_due(
    numbers_each: int,
) -> None:
    """200 clients with backlogs: with one number each, a client is a channel like the rest
    and the cursor serves them fairly, so no look asks about numbers by name (each would be
    an index probe for nothing); with two numbers each, the looks do."""
    store, api = _AlsoCountingStore(), _CountingApi()
    channels = []
    for n in range(200):
        for m in range(numbers_each):
            channel = f"c{n:03d}{m}"
            _add(store, channel, 10, first=(n * 2 + m) * 10)
            channels.append(replace(_channel(channel), client_id=f"client{n:03d}"))
    config = SenderConfig(
        max_in_flight=SLOTS, batch_size=SLOTS, poll_interval=timedelta(seconds=30)
    )
    sender = Sender(store, api, channels, config, worker_id="w", channel_state=store)
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    try:
        await _until_count(api, 1000)
    finally:
        stop.set()
        await task
    assert len(store.asked_by_name) >= 3, store.asked_by_name
    if numbers_each == 1:
        assert not any(store.asked_by_name), store.asked_by_name
    else:
        assert any(store.asked_by_name), store.asked_by_name


async def test_a_named_number_of_a_big_client_goes_first_beside_more_clients_than_slots() -> None:
    """300 one-number clients and a client with 50 numbers all hold backlogs, 10 slots: a row
    inserted on another of the big client's numbers, named by its insert, is claimed within the
    next rounds. Were the big client ranked by its size alone it would come last, after more
    clients than there are slots, and wait for the cursor."""
    store, api = InMemoryMessageStore(), _CountingApi()
    channels = []
    for n in range(300):
        _add(store, f"s{n:03d}", 20, first=n * 20)
        channels.append(replace(_channel(f"s{n:03d}"), client_id=f"solo{n:03d}"))
    for n in range(50):
        _add(store, f"b{n:03d}", 20, first=10_000 + n * 20)
        channels.append(replace(_channel(f"b{n:03d}"), client_id="big"))
    channels.append(replace(_channel("bzz"), client_id="big"))
    config = SenderConfig(max_in_flight=10, batch_size=10, poll_interval=timedelta(seconds=30))
    sender = Sender(store, api, channels, config, worker_id="w", channel_state=store)
    before, after = await requests_for_a_named_row(sender, store, api, "bzz")
    assert after, "never claimed"
    assert after[0] - before <= 20, (before, after)

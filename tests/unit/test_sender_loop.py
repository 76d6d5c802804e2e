"""The claim loop's pacing, against in-memory fakes of the store and the API (no I/O to wait on)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from outbox.config import ChannelConfig, Secret, SenderConfig
from outbox.domain.models import Dialect, State
from outbox.errors import DatabaseUnavailable
from outbox.ports import Due
from outbox.services.sender import Sender
from tests.fakes import AcceptingApi, InMemoryMessageStore


def _channel(channel_id: str, rate: float) -> ChannelConfig:
    return ChannelConfig(channel_id, Dialect.CLOUD, "http://127.0.0.1:9", Secret("k"), rate)


async def test_a_rate_limited_channel_does_not_make_the_loop_spin() -> None:
    store = InMemoryMessageStore()
    for n in range(100):
        store.add("slow", f"49151{n:08}", {"type": "text", "text": {"body": "x"}})
    sender = Sender(
        store,
        AcceptingApi(),
        [_channel("slow", 2.0), _channel("idle", 1000.0)],
        SenderConfig(poll_interval=timedelta(seconds=30)),
        worker_id="test",
        channel_state=store,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(sender.run(stop))
    await asyncio.sleep(1.0)
    stop.set()
    await task

    # The slow channel waits for tokens (burst 1, then one every 0.5 s); the idle channel is
    # asked once per such wake-up, not in a tight loop.
    assert 2 <= len(store.completed) <= 4
    assert store.claims["idle"] <= 6, store.claims


class _BlipAfterClaim(InMemoryMessageStore):
    """The database goes away right after a claim committed: the next read (the next round's
    look for due channels) fails once."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    async def due_channels(self, after: str, limit: int, also: Sequence[str] = ()) -> Due:
        if self.failures == 0 and self.claims:
            self.failures += 1
            raise DatabaseUnavailable("connection reset")
        return await super().due_channels(after, limit, also)


async def test_rows_claimed_just_before_a_database_blip_are_still_sent() -> None:
    store = _BlipAfterClaim()
    ids = [
        store.add("c", f"49151{n:08}", {"type": "text", "text": {"body": "x"}}) for n in range(3)
    ]
    for n in range(3):
        store.set_last_inbound("c", f"49151{n:08}", datetime.now(UTC))
    sender = Sender(
        store,
        AcceptingApi(),
        [_channel("c", 1000.0)],
        SenderConfig(poll_interval=timedelta(seconds=30)),
        worker_id="test",
        channel_state=store,
    )
    stop = asyncio.Event()
    await asyncio.wait_for(sender.run(stop, drain=True), 10)
    assert store.failures == 1
    assert [store.rows[i].state for i in ids] == [State.ACCEPTED] * 3

"""Many configured channels, against PostgreSQL: a row on one of 10,000 channels is claimed in
the first round, and claim rounds cost the same few statements however many channels are
configured (counted on the engine), idle or not."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.config import ChannelConfig, Secret, SenderConfig
from outbox.db.channel_state import ChannelStateStore
from outbox.db.messages import MessageStore
from outbox.domain.models import Dialect
from outbox.services.sender import Sender
from tests.fakes import AcceptingApi

CONFIG = SenderConfig(poll_interval=timedelta(seconds=30))


def _channels(count: int) -> list[ChannelConfig]:
    return [
        ChannelConfig(f"c{n:05d}", Dialect.CLOUD, "http://127.0.0.1:9", Secret("k"), 1000.0)
        for n in range(count)
    ]


@contextmanager
def _statements(engine: AsyncEngine) -> Iterator[list[str]]:
    seen: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        seen.append(statement)

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)


async def _insert(engine: AsyncEngine, channel: str, recipient: str) -> None:
    params = {"channel": channel, "r": recipient}
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO outbox.contacts (channel, wa_id, last_inbound_at) "
                "VALUES (:channel, :r, now())"
            ),
            params,
        )
        await connection.execute(
            text(
                "INSERT INTO outbox.messages (channel, recipient, payload) VALUES "
                """(:channel, :r, '{"type":"text","text":{"body":"otp"}}')"""
            ),
            params,
        )


def _sender(engine: AsyncEngine, count: int) -> Sender:
    return Sender(
        MessageStore(engine),
        AcceptingApi(),
        _channels(count),
        CONFIG,
        worker_id="w",
        channel_state=ChannelStateStore(engine),
    )


async def _states(engine: AsyncEngine) -> list[str]:
    async with engine.connect() as connection:
        rows = await connection.execute(text("SELECT state FROM outbox.messages ORDER BY id"))
        return [row.state for row in rows]


async def test_a_row_among_10000_idle_channels_goes_in_the_first_round(
    engine: AsyncEngine,
) -> None:
    await _insert(engine, "c07777", "4915100000001")
    sender = _sender(engine, 10_000)
    with _statements(engine) as statements:
        await asyncio.wait_for(sender.run(asyncio.Event(), drain=True), 30)
    assert await _states(engine) == ["accepted"]
    # Which channels are due, the pause check of the one channel, its claim (bucket lock, the
    # claim, the plan), the answer: a handful of statements, not one per configured channel.
    assert len(statements) <= 15, statements


async def test_idle_rounds_cost_one_statement_however_many_channels(engine: AsyncEngine) -> None:
    for count in (1, 2_000):
        sender = _sender(engine, count)
        stop = asyncio.Event()
        with _statements(engine) as statements:
            task = asyncio.create_task(sender.run(stop))
            for _ in range(10):  # ten wake-ups (as ten inserts elsewhere would cause)
                await asyncio.sleep(0.05)
                sender.wake()
            await asyncio.sleep(0.05)
            stop.set()
            await task
        # Each round is one look for due channels and nothing else: no statement per channel.
        # Before the first, every channel starts (its old key's pause lifted, its bucket row
        # made) in one statement each for all of them (issue 16).
        looks = [s for s in statements if "live_after" in s]
        starts = [s for s in statements if "live_after" not in s]
        assert looks, count
        assert len(starts) == 2, (count, starts)
        assert "WITH lifted AS" in starts[0], starts
        assert "INSERT INTO outbox.channel_state" in starts[1], starts
        assert len(looks) <= 11, (count, len(looks))

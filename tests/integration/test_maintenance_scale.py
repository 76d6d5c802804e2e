"""The maintenance tick with many channels, against PostgreSQL (issue 16): each second it runs
the same statements with parameters of the same size whether the replica has 1 or 2,000
channels; only a change of the channel set is sent again."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.config import ChannelConfig, Secret, SenderConfig
from outbox.db.housekeeping import HousekeepingStore
from outbox.domain.models import Dialect
from outbox.services.maintenance import Maintenance
from tests.support import fetch

CONFIG = SenderConfig(unknown_channel_grace=timedelta(0))


def _channels(count: int) -> list[ChannelConfig]:
    return [
        ChannelConfig(f"c{n:05d}", Dialect.CLOUD, "http://127.0.0.1:9", Secret("k"), 1000.0)
        for n in range(count)
    ]


def _size(value: object) -> int:
    return len(value) if isinstance(value, list | tuple) else 1


@contextmanager
def _statements(engine: AsyncEngine) -> Iterator[list[tuple[str, int]]]:
    """Each statement run, with how many values its parameters carry (an array counts each)."""
    seen: list[tuple[str, int]] = []

    def count(_conn: Any, _cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        values = parameters.values() if isinstance(parameters, dict) else parameters or ()
        seen.append((statement, sum(_size(v) for v in values)))

    event.listen(engine.sync_engine, "before_cursor_execute", count)
    try:
        yield seen
    finally:
        event.remove(engine.sync_engine, "before_cursor_execute", count)


async def _tick(engine: AsyncEngine, maintenance: Maintenance) -> list[tuple[str, int]]:
    with _statements(engine) as statements:
        await maintenance.tick()
    return statements


async def test_a_tick_costs_the_same_with_1_or_2000_channels(
    engine: AsyncEngine, db_url: str
) -> None:
    # Open rows on a channel no replica knows, and an unknown row of a known channel: the
    # tick has work besides its heartbeat.
    await fetch(
        db_url,
        "INSERT INTO outbox.messages (channel, recipient, payload, created_at) "
        "VALUES ('stranger', '4915100000001', '{}', now() - interval '1 minute')",
    )
    ticks: dict[int, list[tuple[str, int]]] = {}
    for count in (1, 2_000):
        maintenance = Maintenance(
            HousekeepingStore(engine), _channels(count), CONFIG, worker_id=f"w{count}"
        )
        first = await _tick(engine, maintenance)  # the channel set is recorded once
        assert max(size for _, size in first) >= count
        ticks[count] = await _tick(engine, maintenance)
    one, many = ticks[1], ticks[2_000]
    assert [s for s, _ in one] == [s for s, _ in many]
    assert [size for _, size in one] == [size for _, size in many], many
    assert max(size for _, size in many) < 20


async def test_a_changed_channel_set_is_recorded_and_counts_for_other_replicas(
    engine: AsyncEngine, db_url: str
) -> None:
    store = HousekeepingStore(engine)
    maintenance = Maintenance(store, _channels(2), CONFIG, worker_id="a")
    await maintenance.tick()
    await maintenance.tick()
    [row] = await fetch(db_url, "SELECT channels FROM outbox.replicas WHERE worker_id = 'a'")
    assert sorted(row["channels"]) == ["c00000", "c00001"]

    maintenance = Maintenance(store, _channels(3), CONFIG, worker_id="a")  # restarted, grown
    await maintenance.tick()
    [row] = await fetch(db_url, "SELECT channels FROM outbox.replicas WHERE worker_id = 'a'")
    assert sorted(row["channels"]) == ["c00000", "c00001", "c00002"]

    # Forgotten (a day silent) while this store remembers what it wrote: the set comes back.
    await fetch(db_url, "DELETE FROM outbox.replicas")
    await maintenance.tick()
    [row] = await fetch(db_url, "SELECT channels FROM outbox.replicas WHERE worker_id = 'a'")
    assert sorted(row["channels"]) == ["c00000", "c00001", "c00002"]

    # Another replica that knows only c00000 leaves c00002's rows alone: "a" knows it.
    [added] = await fetch(
        db_url,
        "INSERT INTO outbox.messages (channel, recipient, payload, created_at) "
        "VALUES ('c00002', '4915100000001', '{}', now() - interval '1 minute') RETURNING id",
    )
    other = Maintenance(store, _channels(1), CONFIG, worker_id="b")
    await other.tick()
    [state] = await fetch(db_url, f"SELECT state FROM outbox.messages WHERE id = {added['id']}")
    assert state["state"] == "queued"

"""A rolling update that adds a channel: old replicas do not fail the new channel's rows.

During a rollout old and new replicas run side by side. A row is failed `unknown_channel` only
when no live replica knows its channel: each replica records the channels it knows with a
heartbeat (`outbox.replicas`), and a replica that stopped beating is no longer counted.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.config import ChannelConfig, SenderConfig
from outbox.db.housekeeping import HousekeepingStore
from outbox.services.maintenance import Maintenance
from tests.support import fetch, row, settings_for

CONFIG = SenderConfig(unknown_channel_grace=timedelta(0))


def _maintenance(
    engine: AsyncEngine, worker: str, channels: tuple[ChannelConfig, ...]
) -> Maintenance:
    return Maintenance(HousekeepingStore(engine), channels, CONFIG, worker_id=worker)


async def test_an_old_replica_leaves_the_rows_of_a_channel_a_new_replica_knows(
    db_url: str, engine: AsyncEngine
) -> None:
    channels = settings_for(db_url, "http://127.0.0.1:9").channels
    new = _maintenance(engine, "new", channels)
    old = _maintenance(engine, "old", tuple(c for c in channels if c.id == "onprem"))
    [added] = await fetch(
        db_url,
        "INSERT INTO outbox.messages (channel, recipient, payload, created_at) "
        "VALUES ('cloud', '4915100000001', '{}', now() - interval '1 minute') RETURNING id",
    )
    await new.tick()
    await old.tick()
    assert (await row(db_url, added["id"]))["state"] == "queued"

    # The new replica stops beating (gone, or rolled back): the channel is unknown to all.
    await fetch(db_url, "UPDATE outbox.replicas SET seen_at = now() - interval '1 hour'")
    await old.tick()
    failed = await row(db_url, added["id"])
    assert (failed["state"], failed["error_code"]) == ("failed", "unknown_channel")
    assert "nor known to any live replica" in failed["error_detail"]


async def test_no_replica_fails_the_rows_of_a_channel_the_registry_holds(
    db_url: str, engine: AsyncEngine
) -> None:
    """Issue 17: a registry channel no live replica has picked up yet (all old, or all of them
    failing to read its key) keeps its rows queued; so does a disabled one."""
    channels = settings_for(db_url, "http://127.0.0.1:9").channels
    old = _maintenance(engine, "old", tuple(c for c in channels if c.id == "onprem"))
    await fetch(
        db_url,
        "INSERT INTO outbox.channels (id, dialect, base_url, api_key_env, enabled)"
        " VALUES ('fresh', 'cloud', 'http://127.0.0.1:9', 'NOT_HERE', false)",
    )
    [waiting] = await fetch(
        db_url,
        "INSERT INTO outbox.messages (channel, recipient, payload, created_at) "
        "VALUES ('fresh', '4915100000001', '{}', now() - interval '1 minute') RETURNING id",
    )
    await old.tick()
    await old.tick()
    assert (await row(db_url, waiting["id"]))["state"] == "queued"
    # A file channel's mirror speaks for no replica: the heartbeats do.
    await fetch(db_url, "UPDATE outbox.channels SET source = 'file', api_key_env = NULL")
    await old.tick()
    assert (await row(db_url, waiting["id"]))["state"] == "failed"

"""The pause every replica shares: in-process senders against one PostgreSQL, each with its own
HTTP session to a sandbox on loopback (a sandbox per replica where they must see different
answers)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.config import ChannelConfig, Secret, SenderConfig
from outbox.db.channel_state import ChannelStateStore
from outbox.db.messages import MessageStore
from outbox.domain.models import Dialect
from outbox.http.api_client import ApiClient, create_session
from outbox.ports import Clock, utc_now
from outbox.sandbox.faults import Fault
from outbox.sandbox.server import Sandbox
from outbox.services.sender import Sender
from tests.support import KEYS, NAMESPACE, fetch, insert, sending, wait_until

GOOD_KEY = "onprem-key"


def onprem(base_url: str, key: str = GOOD_KEY) -> ChannelConfig:
    return ChannelConfig("onprem", Dialect.ONPREM, base_url, Secret(key), 5000.0, NAMESPACE)


@contextlib.asynccontextmanager
async def replica(
    engine: AsyncEngine,
    channel: ChannelConfig,
    worker: str,
    *,
    now: Clock = utc_now,
    **config: Any,
) -> AsyncIterator[Sender]:
    """One `outbox run` sender, as its own process would run it (its own session and breaker)."""
    settings = SenderConfig(
        **{"poll_interval": timedelta(seconds=1), "batch_size": 3, "max_in_flight": 3, **config}
    )
    async with create_session(settings.max_in_flight, settings.request_timeout) as session:
        sender = Sender(
            MessageStore(engine),
            ApiClient(session),
            [channel],
            settings,
            worker_id=worker,
            channel_state=ChannelStateStore(engine),
            now=now,
        )
        async with sending(sender):
            yield sender


@contextlib.asynccontextmanager
async def sandbox(latency: float) -> AsyncIterator[tuple[Sandbox, str]]:
    api = Sandbox(KEYS, statuses=False, latency=latency)
    base_url = await api.start()
    try:
        yield api, base_url
    finally:
        await api.stop()


async def rows(db_url: str, n: int) -> list[int]:
    body = {"type": "text", "text": {"body": "x"}}
    return [await insert(db_url, "onprem", f"4915100{i:06}", body) for i in range(n)]


async def accepted(db_url: str) -> int:
    [[n]] = await fetch(db_url, "SELECT count(*) FROM outbox.messages WHERE state = 'accepted'")
    return int(n)


async def shared_pause(db_url: str) -> Any:
    states = await fetch(
        db_url,
        "SELECT paused_until, pause_reason, paused_until - now() AS left "
        "FROM outbox.channel_state WHERE channel = 'onprem'",
    )
    return states[0] if states else {"paused_until": None}


async def test_a_failed_probe_after_another_replicas_success_does_not_pause_the_channel(
    db_url: str, engine: AsyncEngine
) -> None:
    """A and B both pause on 401s. A's probe succeeds; B's probe (or first request) gets a 503
    a moment later. That failure may not pause the recovered channel again: before, B wrote its
    doubled cool-down (3 s here, up to 10 min in production) over A's success and every replica
    stopped for it."""
    await rows(db_url, 40)
    cooldown: dict[str, Any] = {"breaker_cooldown": timedelta(seconds=1.5)}
    async with sandbox(0.1) as (api_a, url_a), sandbox(0.6) as (api_b, url_b):
        api_a.faults.add(Fault("status", status=401, times=3))
        api_b.faults.add(Fault("status", status=401, times=3))
        api_b.faults.add(Fault("status", status=503, times=1))
        async with (
            replica(engine, onprem(url_a), "A", **cooldown),
            replica(engine, onprem(url_b), "B", **cooldown),
        ):
            await wait_until(lambda: any(r.status == 503 for r in api_b.message_requests()))
            failed_at = time.monotonic()
            await wait_until(lambda: _at_least(db_url, 39), within=15)
            drained = time.monotonic() - failed_at
            state = await shared_pause(db_url)
    assert [r.status for r in api_a.message_requests()][:4] == [401, 401, 401, 201]
    # The 503 arrived 0.6 s before it was answered; the rest drains in about a second more.
    assert drained < 1.5, f"{drained:.1f} s from B's failed request until the rest was sent"
    assert state["paused_until"] is None


async def _at_least(db_url: str, n: int) -> bool:
    return await accepted(db_url) >= n


async def test_a_pause_ends_by_the_database_clock_not_the_process_clock(
    db_url: str, engine: AsyncEngine
) -> None:
    await rows(db_url, 1)
    ahead = lambda: utc_now() + timedelta(hours=1)  # noqa: E731
    async with sandbox(0.0) as (api, url):
        api.faults.add(Fault("status", status=401, times=1))
        async with replica(engine, onprem(url), "ahead", now=ahead):
            await wait_until(lambda: _paused(db_url))
            state = await shared_pause(db_url)
    assert timedelta(seconds=25) < state["left"] <= timedelta(seconds=30)


async def _paused(db_url: str) -> bool:
    return (await shared_pause(db_url))["paused_until"] is not None


async def test_a_new_key_lifts_a_pause_that_another_process_wrote(
    db_url: str, engine: AsyncEngine
) -> None:
    """A pause written by a process that has gone since (or not reloaded yet): the reloaded
    process, whose own breaker never opened, lifts it and sends with the new key."""
    ids = await rows(db_url, 5)
    long: dict[str, Any] = {"breaker_cooldown": timedelta(minutes=10)}
    async with sandbox(0.0) as (api, url):
        async with replica(engine, onprem(url, "stale-key"), "gone", **long):
            await wait_until(lambda: _paused(db_url))
        async with replica(engine, onprem(url, "stale-key"), "reloaded", **long) as sender:
            await asyncio.sleep(0.3)
            sender.set_channels([onprem(url, GOOD_KEY)])
            reloaded = time.monotonic()
            await wait_until(lambda: _at_least(db_url, len(ids)), within=10)
            took = time.monotonic() - reloaded
            state = await shared_pause(db_url)
    assert took < 2.0, f"{took:.1f} s from the reload until every row was sent"
    assert state["paused_until"] is None
    assert [r.api_key_label for r in api.message_requests() if r.status == 201] == ["onprem"] * 5


async def test_an_old_key_probe_answered_after_the_reload_does_not_pause_again(
    db_url: str, engine: AsyncEngine
) -> None:
    """The reload comes while the probe, sent with the old key, is in flight: its 401 says
    nothing about the new key. Before, it re-opened the breaker with a doubled cool-down and
    wrote that pause for every replica."""
    ids = await rows(db_url, 10)
    async with (
        sandbox(0.5) as (api, url),
        replica(
            engine, onprem(url, "stale-key"), "r", breaker_cooldown=timedelta(seconds=2)
        ) as sender,
    ):
        await wait_until(lambda: len(api.message_requests()) == 4)  # 3 failed, 1 probe out
        sender.set_channels([onprem(url, GOOD_KEY)])
        reloaded = time.monotonic()
        await wait_until(lambda: _at_least(db_url, len(ids)), within=10)
        took = time.monotonic() - reloaded
        state = await shared_pause(db_url)
    assert [r.status for r in api.message_requests()][:4] == [401] * 4
    # Ten rows, three in flight at a time at 0.5 s each: about 2 s. A re-opened breaker would
    # add its doubled cool-down (4 s) to that.
    assert took < 3.5, f"{took:.1f} s from the reload until every row was sent"
    assert state["paused_until"] is None


async def test_a_process_started_with_a_new_key_lifts_the_old_keys_pause(
    db_url: str, engine: AsyncEngine
) -> None:
    """A rolling restart is a key rotation too (the README offers it): the restarted process
    lifts the pause the old key caused rather than idling out its cool-down."""
    ids = await rows(db_url, 5)
    long: dict[str, Any] = {"breaker_cooldown": timedelta(minutes=10)}
    async with sandbox(0.0) as (_, url):
        async with replica(engine, onprem(url, "stale-key"), "old", **long):
            await wait_until(lambda: _paused(db_url))
        started = time.monotonic()
        async with replica(engine, onprem(url, GOOD_KEY), "restarted", **long):
            await wait_until(lambda: _at_least(db_url, len(ids)), within=10)
            took = time.monotonic() - started
    assert took < 2.0, f"{took:.1f} s from the restart until every row was sent"

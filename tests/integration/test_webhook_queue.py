"""While PostgreSQL hangs, the receiver holds at most a bounded amount of bodies in memory: past
the bound a body is refused at once with 503 (360dialog retries it), never queued."""

from __future__ import annotations

import asyncio
import time

import asyncpg
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.config import ChannelConfig, HttpConfig, Secret, WebhookAuth
from outbox.db.webhook_store import BODY_OVERHEAD, WebhookEventStore
from outbox.domain.models import Dialect
from outbox.errors import WriteQueueFull
from outbox.http import webhooks
from outbox.http.guard import WebhookGuard
from outbox.metrics import Metrics
from tests.support import fetch, wait_until

BODY = '{"statuses": []}'
HELD = 4  # bodies the bound below lets wait


async def _stored(db_url: str) -> int:
    [[count]] = await fetch(db_url, "SELECT count(*) FROM outbox.webhook_events")
    return int(count)


async def test_a_hanging_database_holds_a_bounded_queue(engine: AsyncEngine, db_url: str) -> None:
    store = WebhookEventStore(engine, max_held_bytes=HELD * (len(BODY) + BODY_OVERHEAD))
    blocker = await asyncpg.connect(db_url)
    try:
        # An open transaction holding the table: every INSERT waits, as on a hung server.
        transaction = blocker.transaction()
        await transaction.start()
        await blocker.execute("LOCK TABLE outbox.webhook_events IN ACCESS EXCLUSIVE MODE")
        waiting = [
            asyncio.create_task(store.store_webhook("onprem", BODY, authenticated=True))
            for _ in range(HELD)
        ]
        await asyncio.sleep(0)  # each is queued (the first one's INSERT now waits on the lock)
        began = time.monotonic()
        with pytest.raises(WriteQueueFull):
            await asyncio.wait_for(
                store.store_webhook("onprem", BODY, authenticated=True), timeout=5
            )
        refused_in = time.monotonic() - began
        assert not any(task.done() for task in waiting)
        await transaction.rollback()
    finally:
        await blocker.close()
    ids = await asyncio.gather(*waiting)
    assert len(set(ids)) == HELD
    assert refused_in < 2.0  # at once, not after the 5 s the held database would take
    assert await _stored(db_url) == HELD
    # Once the queue drained, bodies are taken again.
    await store.store_webhook("onprem", BODY, authenticated=True)
    await wait_until(lambda: _count_is(db_url, HELD + 1))


async def _count_is(db_url: str, n: int) -> bool:
    return await _stored(db_url) == n


class _FullSink:
    async def store_webhook(self, channel: str, body: str, *, authenticated: bool) -> int:
        raise WriteQueueFull()


async def test_a_full_queue_is_answered_503_and_counted_overloaded() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    channel = ChannelConfig(
        "onprem", Dialect.ONPREM, "http://127.0.0.1:9", Secret("k"), webhook_auth=WebhookAuth.NONE
    )
    app = web.Application()
    webhooks.add_routes(app, {"onprem": channel}, _FullSink(), metrics, WebhookGuard(HttpConfig()))
    async with TestClient(TestServer(app)) as client:
        response = await client.post("/webhooks/onprem", data=BODY)
        answer = await response.json()
    assert (response.status, answer["error"]) == (503, "overloaded")
    value = registry.get_sample_value(
        "outbox_webhooks_total", {"channel": "onprem", "outcome": "overloaded"}
    )
    assert value == 1

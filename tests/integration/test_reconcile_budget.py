"""The reconciler's unit of work is bounded by bytes, not rows: a batch takes rows in id order
while the bodies before each hold fewer than the budget, and a body larger than it goes alone."""

from __future__ import annotations

import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.reconcile_store import ReconcileStore
from outbox.db.webhook_store import WebhookEventStore
from tests.support import fetch

KiB = 1024
BUDGET = 512 * KiB


def _body(size: int) -> str:
    """A status body of about `size` bytes."""
    return orjson.dumps({"statuses": [], "pad": "x" * (size - 30)}).decode()


async def _batches(store: ReconcileStore) -> list[list[int]]:
    taken: list[list[int]] = []
    while True:
        async with store.webhooks(500, BUDGET) as batch:
            if not batch.rows:
                return taken
            taken.append([row.id for row in batch.rows])
            await batch.done([(row.id, None) for row in batch.rows])


async def test_a_batch_ends_at_the_byte_budget(engine: AsyncEngine, db_url: str) -> None:
    bodies = WebhookEventStore(engine)
    sizes = [300 * KiB, 300 * KiB, 700 * KiB, 100 * KiB, 100 * KiB]
    ids = [await bodies.store_webhook("c", _body(s), authenticated=True) for s in sizes]
    # A row another service wrote has no recorded size: it is measured when taken.
    [[direct]] = await fetch(
        db_url,
        "INSERT INTO outbox.webhook_events (channel, payload) VALUES ('c', $1::jsonb) RETURNING id",
        _body(600 * KiB),
    )
    recorded = await fetch(db_url, "SELECT id, body_bytes FROM outbox.webhook_events ORDER BY id")
    assert [r["body_bytes"] for r in recorded] == [len(_body(s)) for s in sizes] + [None]

    a, b, large, d, e = ids
    assert await _batches(ReconcileStore(engine)) == [[a, b], [large], [d, e, direct]]

"""Result writes lock rows in id order, as the reconciler does (issue 15, item 9).

A batch of results arrives in completion order. Written in that order, it could lock row 2,
then wait for row 1 held by a reconciler that, locking in id order, waits for row 2: a
deadlock, which PostgreSQL breaks by failing one side (both retry, so it healed, slowly).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.messages import MessageStore
from outbox.db.status_writes import LOCK_TARGETS
from outbox.domain.models import SendResult, State
from tests.integration.test_claim import LEASE, LIMITS, _seed


async def test_a_result_write_waits_for_the_reconciler_without_deadlocking(
    db_url: str, engine: AsyncEngine
) -> None:
    labels = await _seed(db_url, [(f"r{n}", f"49151000000{n:02}", "queued", {}) for n in range(20)])
    ids = sorted(labels)
    low = ids[0]
    store = MessageStore(engine)
    assert len((await store.claim("c", 50, "w", LEASE, LIMITS)).messages) == 20
    now = datetime.now(UTC)
    # Completion order: the newest answered first.
    results = [SendResult(i, State.ACCEPTED, now, wamid=f"wamid.{i}") for i in reversed(ids)]
    reconciler = await asyncpg.connect(db_url)
    try:
        await reconciler.execute("SET deadlock_timeout = '100ms'")
        transaction = reconciler.transaction()
        await transaction.start()
        # The reconciler's statement (LOCK_TARGETS) locks in id order; here it has the first.
        lock = str(LOCK_TARGETS).replace(":wamids", "$1::text[]").replace(":ids", "$2::bigint[]")
        await reconciler.fetch(lock, [], [low])
        writing = asyncio.create_task(store.complete(results, "w"))
        await asyncio.sleep(0.3)  # the write is under way, blocked on the low row
        await reconciler.fetch(lock, [], ids)  # the reconciler takes the rest
        await transaction.commit()
    finally:
        await reconciler.close()
    assert await asyncio.wait_for(writing, 10) == 20

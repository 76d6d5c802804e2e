"""One result the database refuses never holds up the others (issue 14, item 1).

A repeated wamid (the unique index on `wamid`) is what sanitising at the boundary cannot catch:
the flusher must split the refused batch, write every good result, and write the refused one
with a cleaned error, instead of retrying the same batch forever.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import AsyncEngine

from outbox.db.messages import MessageStore
from outbox.domain.models import SendResult, State
from outbox.domain.ratelimit import Limits
from outbox.services.results import ResultBuffer
from tests.support import enqueue_in_window, fetch, wait_until

WORKER = "w1"


async def _claimed(db_url: str, engine: AsyncEngine, count: int) -> list[int]:
    await enqueue_in_window(db_url, count, channel="cloud")
    claim = await MessageStore(engine).claim(
        "cloud", count, WORKER, timedelta(minutes=5), Limits(rate=10_000, burst=10_000)
    )
    return sorted(m.id for m in claim.messages)


async def test_a_refused_result_is_set_apart_and_the_rest_are_written(
    db_url: str, engine: AsyncEngine
) -> None:
    ids = await _claimed(db_url, engine, 6)
    now = datetime.now(UTC)
    results = [SendResult(i, State.ACCEPTED, now, wamid=f"wamid.ok{i}") for i in ids]
    # Two answers naming the same message id: the batch's UPDATE violates the unique index.
    results[3] = SendResult(ids[3], State.ACCEPTED, now, wamid="wamid.twice")
    results[4] = SendResult(ids[4], State.ACCEPTED, now, wamid="wamid.twice")
    writes: list[int] = []
    buffer = ResultBuffer(
        MessageStore(engine), WORKER, flush_interval=0.0, on_written=lambda: writes.append(1)
    )
    for result in results:
        buffer.add(result)
    flusher = asyncio.create_task(buffer.run())
    try:

        async def settled() -> bool:
            rows = await fetch(
                db_url, "SELECT count(*) FROM outbox.messages WHERE state = 'sending'"
            )
            return int(rows[0][0]) == 0

        await wait_until(settled, within=15)
        await wait_until(lambda: len(buffer) == 0, within=5)
    finally:
        flusher.cancel()
        await asyncio.gather(flusher, return_exceptions=True)
    rows = {
        r["id"]: r
        for r in await fetch(
            db_url, "SELECT id, state, wamid, error_code, error_detail FROM outbox.messages"
        )
    }
    assert all(rows[i]["state"] == "accepted" for i in ids)
    for i in (ids[0], ids[1], ids[2], ids[5]):
        assert rows[i]["wamid"] == f"wamid.ok{i}"
        assert rows[i]["error_code"] is None
    twice = [rows[ids[3]], rows[ids[4]]]
    assert sorted(r["wamid"] or "" for r in twice) == ["", "wamid.twice"]
    refused = next(r for r in twice if r["wamid"] is None)
    assert refused["error_code"] == "result_refused"
    assert "wamid.twice" in refused["error_detail"]
    assert "[SQL:" not in refused["error_detail"]

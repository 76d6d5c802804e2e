"""The result buffer's flushes: one batch is written once, whoever flushes it (issue 15, item 9).

At shutdown the sender drains the buffer while the flusher may still be writing: both used to
take the same results and write them twice, and the second write found the rows no longer
`sending` and warned `outbox.results.lease_lost` for rows that were fine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime

from outbox.domain.models import SendResult, State
from outbox.services.results import ResultBuffer


class _SlowSink:
    """Writes each result once, like the guarded UPDATE: a row written before is not ours."""

    def __init__(self) -> None:
        self.calls: list[list[int]] = []
        self.release = asyncio.Event()
        self.writing = asyncio.Event()
        self._written: set[int] = set()

    async def complete(self, results: Sequence[SendResult], worker: str) -> int:
        self.calls.append([r.message_id for r in results])
        self.writing.set()
        await self.release.wait()
        fresh = {r.message_id for r in results} - self._written
        self._written |= fresh
        return len(fresh)


async def test_a_drain_during_a_flush_does_not_write_the_batch_again() -> None:
    sink = _SlowSink()
    buffer = ResultBuffer(sink, "w", flush_interval=0, on_written=lambda: None)
    flusher = asyncio.create_task(buffer.run())
    buffer.add(SendResult(1, State.ACCEPTED, datetime.now(UTC), wamid="wamid.1"))
    await asyncio.wait_for(sink.writing.wait(), 1)  # the flusher waits for the database
    drained = asyncio.create_task(buffer.drain())
    await asyncio.sleep(0.01)
    sink.release.set()
    await asyncio.wait_for(drained, 1)
    flusher.cancel()
    await asyncio.gather(flusher, return_exceptions=True)
    assert sink.calls == [[1]]
    assert len(buffer) == 0

"""The result buffer: send results wait here briefly, so that a burst of them is one UPDATE.

One flusher writes what has gathered shortly after the first result arrives, retrying while the
database is away; on stop, `drain()` writes the rest, and gives up after a few tries rather than
hold the process (the rows' leases then run out and housekeeping parks them as `unknown`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from outbox.domain.models import SendResult
from outbox.errors import DatabaseError
from outbox.loops import Backoff
from outbox.ports import ResultSink

log = structlog.get_logger("outbox.sender")

BATCH = 2000  # results per UPDATE statement
DRAIN_RETRIES = 4  # on stop, a database away this many times in a row loses the results


class ResultBuffer:
    def __init__(
        self,
        sink: ResultSink,
        worker: str,
        *,
        flush_interval: float,
        on_written: Callable[[], None],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._sink = sink
        self._worker = worker
        self._interval = flush_interval
        self._on_written = on_written
        self._sleep = sleep
        self._results: list[SendResult] = []
        self._ready = asyncio.Event()
        self.writes = 0  # batches written so far

    def __len__(self) -> int:
        return len(self._results)

    def add(self, result: SendResult) -> None:
        self._results.append(result)
        self._ready.set()

    async def run(self) -> None:
        """Flush on a timer until cancelled."""
        while True:
            await self._ready.wait()
            # A short pause lets a burst of answers share one UPDATE.
            await self._sleep(self._interval)
            self._ready.clear()
            await self._flush(retry_forever=True)

    async def drain(self) -> None:
        """Write everything buffered now."""
        await self._flush(retry_forever=False)

    async def _flush(self, *, retry_forever: bool) -> None:
        backoff = Backoff()
        while self._results:
            batch = self._results[:BATCH]
            try:
                written = await self._sink.complete(batch, self._worker)
            except DatabaseError as exc:
                if not retry_forever and backoff.failures >= DRAIN_RETRIES:
                    log.error(
                        "outbox.results.lost",
                        count=len(self._results),
                        error=str(exc),
                        note="rows stay 'sending' until their lease expires, then 'unknown'",
                    )
                    self._results.clear()
                    break
                delay = backoff.failed()
                log.warning("outbox.results.db_error", error=str(exc), retry_in=delay)
                await self._sleep(delay)
                continue
            del self._results[: len(batch)]
            self.writes += 1
            # A finished row may be what held back its recipient's next one: claim again.
            self._on_written()
            if written != len(batch):
                log.warning("outbox.results.lease_lost", expected=len(batch), written=written)

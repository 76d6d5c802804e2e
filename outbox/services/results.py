"""The result buffer: send results wait here briefly, so that a burst of them is one UPDATE.

One flusher writes what has gathered shortly after the first result arrives, retrying while the
database is away; on stop, `drain()` writes the rest, and gives up after a few tries rather than
hold the process (the rows' leases then run out and housekeeping parks them as `unknown`).

A batch the database refuses for what it carries is never retried as it was: it is halved
until the refused result stands alone, every other result is written, and the refused one is
written without the outside values that may be at fault (`outcome.refused_by_store`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import structlog

from outbox.domain.models import SendResult
from outbox.domain.outcome import refused_by_store
from outbox.errors import DatabaseError, StatementRejected
from outbox.loops import Backoff, Health, database_failed
from outbox.ports import ResultSink

log = structlog.get_logger("outbox.sender")

BATCH = 2000  # results per UPDATE statement
# Results held at most before the sender stops claiming: the buffer's own bound on memory (and
# on the leases to renew) when the database falls behind the answers.
HELD_AT_MOST = BATCH
DRAIN_RETRIES = 4  # on stop, a database away this many times in a row loses the results
PART = "results"  # this loop's name in `Health` and on the statements-invalid metric


class ResultBuffer:
    def __init__(
        self,
        sink: ResultSink,
        worker: str,
        *,
        flush_interval: float,
        on_written: Callable[[], None],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        health: Health | None = None,
    ) -> None:
        self._sink = sink
        self._worker = worker
        self._interval = flush_interval
        self._on_written = on_written
        self._sleep = sleep
        self._health = health or Health()
        self._results: list[SendResult] = []
        self._ready = asyncio.Event()
        # One flush at a time: a drain at shutdown while the flusher is writing would take the
        # same results and write them again (false `lease_lost` warnings on the second write).
        self._flushing = asyncio.Lock()
        self._draining = False  # a drain waits for the flusher: which then gives up in time too
        self.writes = 0  # batches written so far

    def __len__(self) -> int:
        return len(self._results)

    @property
    def full(self) -> bool:
        return len(self._results) >= HELD_AT_MOST

    def held(self) -> list[int]:
        """The ids of the rows whose result waits here (their leases are still owed)."""
        return [r.message_id for r in self._results]

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
        self._draining = True
        await self._flush(retry_forever=False)

    async def _flush(self, *, retry_forever: bool) -> None:
        async with self._flushing:
            await self._flush_held(retry_forever=retry_forever)

    async def _flush_held(self, *, retry_forever: bool) -> None:
        backoff = Backoff()
        while self._results:
            try:
                await self._write(self._results[:BATCH])
            except DatabaseError as exc:
                gives_up = not retry_forever or self._draining
                if gives_up and backoff.failures >= DRAIN_RETRIES:
                    log.error(
                        "outbox.results.lost",
                        count=len(self._results),
                        error=str(exc),
                        note="rows stay 'sending' until their lease expires, then 'unknown'",
                    )
                    self._results.clear()
                    break
                delay = backoff.failed()
                database_failed(
                    exc,
                    part=PART,
                    event="outbox.results.db_error",
                    health=self._health,
                    waiting=len(self._results),
                    retry_in=delay,
                )
                await self._sleep(delay)
                continue
            self._health.recovered(PART)

    async def _write(self, batch: Sequence[SendResult]) -> None:
        """Write `batch`, halving it while the database refuses what it carries."""
        try:
            written = await self._sink.complete(batch, self._worker)
        except StatementRejected as exc:
            if len(batch) == 1:
                await self._write_refused(batch[0], exc)
                return
            middle = len(batch) // 2
            await self._write(batch[:middle])
            await self._write(batch[middle:])
            return
        self._written(batch, written)

    async def _write_refused(self, result: SendResult, exc: StatementRejected) -> None:
        cleaned = refused_by_store(result, f"the database refused the result: {exc}")
        try:
            written = await self._sink.complete([cleaned], self._worker)
        except StatementRejected as again:
            # Not even the cleaned result goes in: give it up rather than block the others.
            log.error(
                "outbox.results.unwritable",
                message_id=result.message_id,
                error=str(again),
                note="the row stays 'sending' until its lease expires, then 'unknown'",
            )
            self._written([result], 0)
            return
        log.error(
            "outbox.results.refused",
            message_id=result.message_id,
            state=result.state.value,
            error=str(exc),
            note="written without the values taken from the answer",
        )
        self._written([result], written)

    def _written(self, batch: Sequence[SendResult], written: int) -> None:
        done = {id(r) for r in batch}
        self._results = [r for r in self._results if id(r) not in done]
        self.writes += 1
        # A finished row may be what held back its recipient's next one: claim again.
        self._on_written()
        if written != len(batch):
            log.warning("outbox.results.lease_lost", expected=len(batch), written=written)

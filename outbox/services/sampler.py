"""Refreshes the database-read gauges on /metrics on an interval, so scrapes cost nothing."""

from __future__ import annotations

import asyncio

import structlog

from outbox.config import MetricsConfig
from outbox.errors import DatabaseError
from outbox.loops import run_periodic
from outbox.ports import GaugeReader, SampleObserver

log = structlog.get_logger("outbox.sampler")


class Sampler:
    def __init__(self, store: GaugeReader, config: MetricsConfig, observer: SampleObserver) -> None:
        self._store = store
        self._config = config
        self._observer = observer

    async def run(self, stop: asyncio.Event) -> None:
        every = self._config.sample_interval.total_seconds()
        await run_periodic(self.tick, stop, every=every, name="outbox.sampler")

    async def tick(self) -> None:
        try:
            sample = await self._store.sample(
                self._config.dlr_missing_after, self._config.dlr_lookback
            )
        except DatabaseError as exc:
            # The gauges keep their last values; the staleness gauge and the error counter tell.
            log.warning("outbox.sampler.db_error", error=type(exc.__cause__ or exc).__name__)
            self._observer.sample_failed()
            return
        self._observer.sampled(sample)

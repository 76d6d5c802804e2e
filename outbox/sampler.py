"""Refreshes the database-read gauges on /metrics on an interval, so scrapes cost nothing."""

from __future__ import annotations

import asyncio
from typing import Protocol

import structlog

from outbox.config import MetricsConfig
from outbox.db.gauges import GaugeStore, Sample
from outbox.errors import DatabaseError
from outbox.loops import wait_any

log = structlog.get_logger("outbox.sampler")


class SampleObserver(Protocol):
    def sampled(self, sample: Sample) -> None: ...

    def sample_failed(self) -> None: ...


class Sampler:
    def __init__(self, store: GaugeStore, config: MetricsConfig, observer: SampleObserver) -> None:
        self._store = store
        self._config = config
        self._observer = observer

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.tick()
            await wait_any(stop, timeout=self._config.sample_interval.total_seconds())

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

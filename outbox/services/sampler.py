"""Refreshes the database-read gauges on /metrics on an interval, so scrapes cost nothing."""

from __future__ import annotations

import asyncio

import structlog

from outbox.config import MetricsConfig
from outbox.errors import DatabaseError, PrivilegeMissing
from outbox.loops import wait_any
from outbox.ports import GaugeReader, SampleObserver

log = structlog.get_logger("outbox.sampler")


class Sampler:
    def __init__(self, store: GaugeReader, config: MetricsConfig, observer: SampleObserver) -> None:
        self._store = store
        self._config = config
        self._observer = observer
        self.off = False  # the role may not read what is sampled: the gauges are not ours

    async def run(self, stop: asyncio.Event) -> None:
        every = self._config.sample_interval.total_seconds()
        while not stop.is_set() and not self.off:
            await self.tick()
            await wait_any(stop, timeout=every)

    async def tick(self) -> None:
        try:
            sample = await self._store.sample(
                self._config.dlr_missing_after, self._config.dlr_lookback
            )
        except PrivilegeMissing:
            # A receiver running as README "Database roles" 2b's role (issue 19): the queue's
            # gauges come from the processes that send and reconcile. Said once, not as a
            # failure: nothing is wrong, and retrying would only repeat the refusal.
            log.info(
                "outbox.sampler.off",
                reason="this database role may not read the queue: its gauges are served by"
                " the processes with the sender or reconciler role",
            )
            self.off = True
            return
        except DatabaseError as exc:
            # The gauges keep their last values; the staleness gauge and the error counter tell.
            log.warning("outbox.sampler.db_error", error=type(exc.__cause__ or exc).__name__)
            self._observer.sample_failed()
            return
        self._observer.sampled(sample)

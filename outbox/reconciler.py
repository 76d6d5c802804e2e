"""The reconcile loop: webhook rows into delivery states and window times, parked statuses retried.

Runs while there is work, then waits for a NOTIFY (or the poll interval). A batch that fails for
a reason other than the database being away is split, so one row that cannot be processed gets
its error recorded and never holds back the rows behind it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

import structlog

from outbox.config import ReconcilerConfig
from outbox.db.reconcile_store import ReconcileStore, Report
from outbox.errors import DatabaseError, DatabaseUnavailable, StatementRejected
from outbox.loops import wait_any

log = structlog.get_logger("outbox.reconciler")

_PARKED_EVERY_SECONDS = 1.0


class ReconcileObserver(Protocol):
    def reconciled(self, report: Report) -> None: ...


class Reconciler:
    def __init__(
        self,
        store: ReconcileStore,
        config: ReconcilerConfig,
        observer: ReconcileObserver | None = None,
    ) -> None:
        self._store = store
        self._config = config
        self._observer = observer
        self._wake = asyncio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        failures = 0
        parked_due = 0.0
        while not stop.is_set():
            self._wake.clear()
            try:
                report = await self._batch()
                if time.monotonic() >= parked_due:
                    await self._retry_parked()
                    parked_due = time.monotonic() + _PARKED_EVERY_SECONDS
                failures = 0
            except DatabaseError as exc:
                failures += 1
                delay = min(5.0, 0.5 * 2 ** (failures - 1))
                log.warning("outbox.reconciler.db_error", error=str(exc), retry_in=delay)
                await wait_any(stop, timeout=delay)
                continue
            except Exception:
                # A bug here must not take the sender down with it: log it loudly, retry later.
                failures += 1
                log.exception("outbox.reconciler.failed", retry_in=5.0)
                await wait_any(stop, timeout=5.0)
                continue
            if report.webhooks >= self._config.batch_size:
                continue
            await wait_any(
                stop,
                self._wake,
                timeout=min(self._config.poll_interval.total_seconds(), _PARKED_EVERY_SECONDS),
            )

    async def _batch(self) -> Report:
        try:
            report = await self._store.process_webhooks(self._config.batch_size)
        except Exception as exc:
            if isinstance(exc, DatabaseUnavailable):
                raise  # the database is away: the whole batch waits
            log.warning("outbox.reconciler.batch_failed", error=repr(exc), note="splitting it")
            report = await self._one_by_one()
        self._observe(report)
        return report

    async def _retry_parked(self) -> None:
        try:
            report = await self._store.retry_parked(
                self._config.batch_size, self._config.orphan_horizon
            )
        except DatabaseError as exc:
            if not isinstance(exc, StatementRejected):
                raise
            # Never seen; if it happens, these statuses must not block the ones behind them.
            orphaned = await self._store.orphan_due_parked(self._config.batch_size)
            log.error("outbox.status.parked_unprocessable", count=orphaned, error=repr(exc))
            return
        self._observe(report)

    async def _one_by_one(self) -> Report:
        total = Report()
        for webhook_id in await self._store.pending_webhook_ids(self._config.batch_size):
            try:
                report = await self._store.process_webhook_alone(webhook_id)
            except Exception as exc:
                if isinstance(exc, DatabaseUnavailable):
                    raise
                error = f"cannot be processed: {type(exc).__name__}: {exc}"[:1000]
                await self._store.give_up_webhook(webhook_id, error)
                log.error("outbox.webhook.unprocessable", webhook_id=webhook_id, error=error)
                total.failed_rows += 1
                total.webhooks += 1
                continue
            total.add(report)
        return total

    def _observe(self, report: Report) -> None:
        for channel, count in report.orphaned.items():
            log.warning("outbox.status.orphaned", channel=channel, count=count)
        for failed in report.failed:
            # The final word on a message the API had accepted.
            log.error(
                "outbox.delivery.failed",
                channel=failed.channel,
                message_id=failed.message_id,
                wamid=failed.wamid,
                error_code=failed.error_code,
                error_title=failed.error_title,
            )
        if self._observer is not None:
            self._observer.reconciled(report)

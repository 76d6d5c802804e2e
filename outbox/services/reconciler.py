"""The reconcile loop: webhook rows into delivery states and window times, parked statuses retried.

One batch is one transaction of the store: digest the bodies, record inbound times and number
changes, lock the rows the statuses name, plan against the clock, write, park what must wait,
mark the rows processed. The loop runs while there is work, then waits for a NOTIFY (or the poll
interval). A batch that fails for a reason other than the database being away is split, so one
row that cannot be processed gets its error recorded and never holds back the rows behind it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence

import structlog

from outbox.config import ReconcilerConfig
from outbox.domain.account_plan import plan_account
from outbox.domain.digest import Located, digest
from outbox.domain.reconcile import Plan, plan_statuses
from outbox.domain.report import Report, planned
from outbox.errors import DatabaseError, DatabaseUnavailable, StatementInvalid, StatementRejected
from outbox.loops import Backoff, Health, database_failed, wait_any
from outbox.ports import (
    Clock,
    ReconcileObserver,
    ReconcileStore,
    StatusWrites,
    WebhookBatch,
    utc_now,
)

log = structlog.get_logger("outbox.reconciler")

_PARKED_EVERY_SECONDS = 1.0
_BUG_RETRY_SECONDS = 5.0
_ERROR_LIMIT = 1000  # characters of a "cannot be processed" note


class _Unobserved:
    def reconciled(self, report: Report) -> None:
        pass


class Reconciler:
    def __init__(
        self,
        store: ReconcileStore,
        config: ReconcilerConfig,
        observer: ReconcileObserver | None = None,
        *,
        clock: Clock = utc_now,
        monotonic: Callable[[], float] = time.monotonic,
        health: Health | None = None,
        accounts: Mapping[str, str | None] | None = None,
    ) -> None:
        self._store = store
        # Each channel's configured waba_id: the template registry's key for its events.
        self._accounts: Mapping[str, str | None] = dict(accounts or {})
        self._health = health or Health()
        self._config = config
        self._observer = observer or _Unobserved()
        self._clock = clock
        self._monotonic = monotonic
        self._wake = asyncio.Event()

    def set_accounts(self, accounts: Mapping[str, str | None]) -> None:
        """The channels changed (the registry): their events are keyed by these WABA ids."""
        self._accounts = dict(accounts)

    def wake(self) -> None:
        self._wake.set()

    async def run(self, stop: asyncio.Event) -> None:
        backoff = Backoff()
        parked_due = 0.0
        while not stop.is_set():
            self._wake.clear()
            try:
                report = await self._batch()
                if self._monotonic() >= parked_due:
                    await self._retry_parked()
                    parked_due = self._monotonic() + _PARKED_EVERY_SECONDS
                backoff.succeeded()
                self._health.recovered("reconciler")
            except DatabaseError as exc:
                delay = backoff.failed()
                database_failed(
                    exc,
                    part="reconciler",
                    event="outbox.reconciler.db_error",
                    health=self._health,
                    retry_in=delay,
                )
                await wait_any(stop, timeout=delay)
                continue
            except Exception:
                # A bug here must not take the sender down with it: log it loudly, retry later.
                backoff.failed()
                log.exception("outbox.reconciler.failed", retry_in=_BUG_RETRY_SECONDS)
                await wait_any(stop, timeout=_BUG_RETRY_SECONDS)
                continue
            if report.webhooks:
                # More may be waiting: a batch ends at the row or the byte budget, so one with
                # fewer rows than `batch_size` says nothing about what is left.
                continue
            await wait_any(
                stop,
                self._wake,
                timeout=min(self._config.poll_interval.total_seconds(), _PARKED_EVERY_SECONDS),
            )

    async def process_webhooks(self, limit: int) -> Report:
        """One batch of up to `limit` unprocessed webhook rows within the byte budget, in one
        transaction."""
        async with self._store.webhooks(limit, self._config.batch_bytes) as batch:
            return await self._process(batch)

    async def process_webhook_alone(self, webhook_id: int) -> Report:
        """One row in its own transaction, to find the one a failed batch choked on."""
        async with self._store.webhook(webhook_id) as batch:
            return await self._process(batch)

    async def retry_parked(self) -> Report:
        """Try due parked statuses again; those past the orphan horizon become orphans."""
        report = Report()
        async with self._store.parked(self._config.batch_size) as batch:
            if not batch.statuses:
                return report
            plan = await self._plan(batch, batch.statuses, report)
            if plan.resolved:
                await batch.resolve(plan.resolved)
            still = [p.parked_id for p in plan.park if p.parked_id is not None]
            if still:
                report.orphaned.update(await batch.postpone(still, self._config.orphan_horizon))
        return report

    async def _process(self, batch: WebhookBatch) -> Report:
        rows = batch.rows
        found = digest(rows)
        report = Report(webhooks=len(rows), inbound=len(found.inbound), notes=found.noted)
        if found.identities:
            # First: the inbound messages of this batch may already be keyed by them.
            await batch.learn(found.identities)
        if found.inbound or found.moves:
            await batch.record(found.inbound, found.moves)
        if found.account:
            account = plan_account(found.account, self._accounts, self._clock())
            await batch.record_account(account)
            report.account.update(account.counts)
        if found.statuses:
            plan = await self._plan(batch, found.statuses, report)
            if plan.park:
                await batch.park(plan.park)
        if rows:
            await batch.done(found.notes)
        return report

    async def _plan(
        self, writes: StatusWrites, statuses: Sequence[Located], report: Report
    ) -> Plan:
        targets = await writes.lock(statuses)
        plan = plan_statuses(statuses, targets, self._clock())
        report.add(planned(plan, targets))
        report.priced += await writes.apply(plan)
        for priced in report.priced:
            if priced.mismatched and priced.first:
                # A cost and a consent risk: Meta re-categorises templates (issue 18).
                log.warning(
                    "outbox.pricing.category_mismatch",
                    channel=priced.channel,
                    message_id=priced.message_id,
                    registry_category=priced.registry_category,
                    billed_category=priced.pricing.category,
                )
        return plan

    async def _batch(self) -> Report:
        try:
            report = await self.process_webhooks(self._config.batch_size)
        except (DatabaseUnavailable, StatementInvalid):
            raise  # the database is away, or our statement is at fault: the whole batch waits
        except Exception as exc:
            log.warning(
                "outbox.reconciler.batch_failed", error=repr(_origin(exc)), note="splitting it"
            )
            report = await self._one_by_one()
        self._observe(report)
        return report

    async def _retry_parked(self) -> None:
        try:
            report = await self.retry_parked()
        except StatementRejected as exc:
            # Never seen; if it happens, these statuses must not block the ones behind them.
            orphaned = await self._store.orphan_due_parked(self._config.batch_size)
            log.error(
                "outbox.status.parked_unprocessable", count=orphaned, error=repr(_origin(exc))
            )
            return
        self._observe(report)

    async def _one_by_one(self) -> Report:
        total = Report()
        for webhook_id in await self._store.pending_webhook_ids(self._config.batch_size):
            try:
                report = await self.process_webhook_alone(webhook_id)
            except (DatabaseUnavailable, StatementInvalid):
                raise
            except Exception as exc:
                origin = _origin(exc)
                error = f"cannot be processed: {type(origin).__name__}: {exc}"[:_ERROR_LIMIT]
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
        self._observer.reconciled(report)


def _origin(exc: Exception) -> BaseException:
    # A translated database error is described by the driver's error behind it, as the notes
    # stored in webhook_events.error always have been.
    if isinstance(exc, DatabaseError) and exc.__cause__ is not None:
        return exc.__cause__
    return exc

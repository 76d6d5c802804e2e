"""Lease renewal: a live sender keeps the rows it still owes a result for.

A lease that runs out is how housekeeping tells a dead holder from a live one. A live holder
cut off from the database (an outage, a failover) longer than its lease would lose its rows to
the rescue and, after `unknown_quiet`, see them sent a second time although it holds their
answers. So every third of the lease this loop renews, in one statement, the leases of the rows
in flight and of those whose result waits in the buffer, and takes back the rows rescued from
it that nobody has resent yet. While the database is away it retries within a second, so that
it gets there soon after the database is back, well before the unknown policy does.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection
from datetime import timedelta

import structlog

from outbox.errors import DatabaseError
from outbox.loops import Backoff, Health, database_failed
from outbox.ports import LeaseRenewals, Renewed

log = structlog.get_logger("outbox.sender")

PART = "leases"  # this loop's name in `Health` and on the statements-invalid metric
RETRY_CAP = 1.0  # seconds: the longest wait between tries while the database is away


class LeaseKeeper:
    def __init__(
        self,
        store: LeaseRenewals,
        worker: str,
        lease: timedelta,
        owed: Callable[[], Collection[int]],
        *,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        health: Health | None = None,
    ) -> None:
        self._store = store
        self._worker = worker
        self._lease = lease
        self._owed = owed
        self._sleep = sleep
        self._health = health or Health()
        self.every = lease.total_seconds() / 3
        retry = min(self.every, RETRY_CAP)
        self._backoff = Backoff(first=retry / 4, cap=retry)

    async def run(self) -> None:
        """Renew on a timer until cancelled."""
        delay = self.every
        while True:
            await self._sleep(delay)
            try:
                await self.renew()
            except DatabaseError as exc:
                delay = self._backoff.failed()
                database_failed(
                    exc,
                    part=PART,
                    event="outbox.lease.db_error",
                    health=self._health,
                    retry_in=delay,
                )
                continue
            self._backoff.succeeded()
            delay = self.every

    async def renew(self) -> Renewed:
        """Renew the leases of every row owed a result now."""
        ids = sorted(set(self._owed()))
        if not ids:
            return Renewed([], [])
        renewed = await self._store.renew(ids, self._worker, self._lease)
        self._health.recovered(PART)
        if renewed.taken_back:
            log.warning(
                "outbox.lease.taken_back",
                count=len(renewed.taken_back),
                message_ids=renewed.taken_back[:20],
                note="rescued while this process was cut off; its answer will be written",
            )
        return renewed

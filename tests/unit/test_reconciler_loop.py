"""services.reconciler in process, over a fake store: a batch the database refuses is split so
that only the row at fault is set aside; a database that is away makes the whole batch wait."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import timedelta

import pytest

from outbox.config import ReconcilerConfig
from outbox.domain.account_plan import AccountPlan
from outbox.domain.digest import InboundSeen, Located, NumberMove, WebhookRow
from outbox.domain.pricing import Priced
from outbox.domain.reconcile import Plan, Target
from outbox.domain.report import Report
from outbox.domain.user_ids import Identities
from outbox.errors import DatabaseUnavailable, StatementRejected
from outbox.services.reconciler import Reconciler


class DataError(Exception):
    """Stands in for the driver's error behind a translated one."""


def _rejected() -> Exception:
    error = StatementRejected("value too long for type character varying(512)")
    error.__cause__ = DataError("value too long for type character varying(512)")
    return error


@dataclass
class _Batch:
    rows: list[WebhookRow]
    statuses: list[Located] = field(default_factory=list)
    finished: list[tuple[int, str | None]] = field(default_factory=list)

    async def lock(self, statuses: Sequence[Located]) -> list[Target]:
        return []

    async def apply(self, plan: Plan) -> list[Priced]:
        return []

    async def record(self, inbound: Sequence[InboundSeen], moves: Sequence[NumberMove]) -> None:
        pass

    async def learn(self, identities: Identities) -> None:
        pass

    async def park(self, statuses: Sequence[Located]) -> None:
        pass

    async def record_account(self, plan: AccountPlan) -> None:
        pass

    async def done(self, notes: Sequence[tuple[int, str | None]]) -> None:
        self.finished += notes

    async def resolve(self, parked_ids: Sequence[int]) -> None:
        pass

    async def postpone(self, parked_ids: Sequence[int], horizon: timedelta) -> list[str]:
        return []


class FakeStore:
    """Webhook rows whose batch fails at commit while it holds a row in `bad` (at most
    `failures` times); a failed batch changes nothing, as a rolled-back transaction."""

    def __init__(
        self, rows: int, bad: set[int], error: Callable[[], Exception], failures: int
    ) -> None:
        self.pending = {n: {"errors": [{"title": f"row {n}"}]} for n in range(1, rows + 1)}
        self.notes: dict[int, str | None] = {}
        self.given_up: dict[int, str] = {}
        self.batches: list[list[int]] = []
        self.splits = 0
        self.settled = asyncio.Event()
        self._bad, self._error, self._failures = bad, error, failures

    def webhooks(self, limit: int, budget: int) -> AbstractAsyncContextManager[_Batch]:
        # Every row is 1 byte here: the byte budget cuts a batch like the row limit does.
        return self._batch(sorted(self.pending)[: min(limit, budget)])

    def webhook(self, webhook_id: int) -> AbstractAsyncContextManager[_Batch]:
        return self._batch([webhook_id] if webhook_id in self.pending else [])

    @asynccontextmanager
    async def _batch(self, ids: list[int]) -> AsyncIterator[_Batch]:
        self.batches.append(ids)
        batch = _Batch([WebhookRow(n, "c", self.pending[n]) for n in ids])
        yield batch
        if self._failures and self._bad & set(ids):
            self._failures -= 1
            raise self._error()
        for webhook_id, note in batch.finished:
            del self.pending[webhook_id]
            self.notes[webhook_id] = note
        self._check()

    @asynccontextmanager
    async def parked(self, limit: int) -> AsyncIterator[_Batch]:
        yield _Batch([])

    async def pending_webhook_ids(self, limit: int) -> list[int]:
        self.splits += 1
        return sorted(self.pending)[:limit]

    async def give_up_webhook(self, webhook_id: int, error: str) -> None:
        del self.pending[webhook_id]
        self.given_up[webhook_id] = error
        self._check()

    def _check(self) -> None:
        if not self.pending:
            self.settled.set()

    async def orphan_due_parked(self, limit: int) -> int:
        return 0


class Observer:
    def __init__(self) -> None:
        self.total = Report()

    def reconciled(self, report: Report) -> None:
        self.total.add(report)


async def _run_until_settled(store: FakeStore, observer: Observer) -> None:
    reconciler = Reconciler(store, ReconcilerConfig(batch_size=10), observer)
    stop = asyncio.Event()
    task = asyncio.create_task(reconciler.run(stop))
    try:
        await asyncio.wait_for(store.settled.wait(), 10)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)


@dataclass(frozen=True)
class SplitCase:
    error: Callable[[], Exception]
    note: str  # how the row at fault is set aside


SPLIT_CASES = {
    "the database refuses a row": SplitCase(
        _rejected,
        "cannot be processed: DataError: value too long for type character varying(512)",
    ),
    "a row we cannot handle": SplitCase(
        lambda: ValueError("Number out of range"),
        "cannot be processed: ValueError: Number out of range",
    ),
}


@pytest.mark.parametrize("case", SPLIT_CASES.values(), ids=SPLIT_CASES.keys())
async def test_a_refused_batch_is_split_and_only_its_bad_row_set_aside(case: SplitCase) -> None:
    store = FakeStore(rows=3, bad={2}, error=case.error, failures=10**6)
    observer = Observer()
    await _run_until_settled(store, observer)
    assert store.batches[:4] == [[1, 2, 3], [1], [2], [3]]
    assert store.splits == 1
    assert store.given_up == {2: case.note}
    assert store.notes == {1: "error None: row 1", 3: "error None: row 3"}
    assert (observer.total.webhooks, observer.total.failed_rows) == (3, 1)


async def test_a_database_that_is_away_makes_the_whole_batch_wait() -> None:
    store = FakeStore(
        rows=3, bad={2}, error=lambda: DatabaseUnavailable("connection refused"), failures=1
    )
    observer = Observer()
    await _run_until_settled(store, observer)
    assert store.batches[:2] == [[1, 2, 3], [1, 2, 3]]
    assert store.splits == 0
    assert store.given_up == {}
    assert store.notes == {n: f"error None: row {n}" for n in (1, 2, 3)}
    assert (observer.total.webhooks, observer.total.failed_rows) == (3, 0)


async def test_a_batch_cut_short_by_the_byte_budget_is_followed_at_once() -> None:
    """A batch ends at its byte budget with fewer rows than batch_size: the loop must take the
    next one at once, not after the poll interval (here a minute; 20 rows in 20 batches)."""
    store = FakeStore(rows=20, bad=set(), error=Exception, failures=0)
    config = ReconcilerConfig(batch_size=10, batch_bytes=1, poll_interval=timedelta(minutes=1))
    reconciler = Reconciler(store, config, Observer())
    stop = asyncio.Event()
    task = asyncio.create_task(reconciler.run(stop))
    try:
        await asyncio.wait_for(store.settled.wait(), 5)
    finally:
        stop.set()
        await asyncio.wait_for(task, 5)
    assert store.batches[:20] == [[n] for n in range(1, 21)]

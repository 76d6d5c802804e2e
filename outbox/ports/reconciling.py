"""What the reconciler needs: webhook batches, status writes, parked statuses."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Protocol

from outbox.domain.account_plan import AccountPlan
from outbox.domain.digest import InboundSeen, Located, NumberMove, WebhookRow
from outbox.domain.pricing import Priced
from outbox.domain.reconcile import Plan, Target
from outbox.domain.report import Report
from outbox.domain.user_ids import Identities


class StatusWrites(Protocol):
    """Locks and writes for statuses, inside the transaction of the batch that holds them."""

    async def lock(self, statuses: Sequence[Located]) -> list[Target]:
        """Lock (in id order) and return every row any of the statuses' wamids or ids name."""
        ...

    async def apply(self, plan: Plan) -> list[Priced]:
        """Write the plan's row changes (waking the senders for requeued rows), history,
        opt-outs and pricing; returns the pricing written (issue 18)."""
        ...


class WebhookBatch(StatusWrites, Protocol):
    """Unprocessed webhook rows, locked (SKIP LOCKED) in one transaction."""

    @property
    def rows(self) -> Sequence[WebhookRow]: ...

    async def record(self, inbound: Sequence[InboundSeen], moves: Sequence[NumberMove]) -> None:
        """Contacts' last inbound times, and windows carried over to new numbers."""
        ...

    async def learn(self, identities: Identities) -> None:
        """Phone-BSUID pairs; new BSUIDs that take the old one's window and phone; BSUIDs
        paired with the number the message a status names went to."""
        ...

    async def park(self, statuses: Sequence[Located]) -> None: ...

    async def record_account(self, plan: AccountPlan) -> None:
        """Apply WABA-level events: templates, preferences, number health, pauses, their log."""
        ...

    async def done(self, notes: Sequence[tuple[int, str | None]]) -> None:
        """Mark the rows processed, each with its note (or None) as `error`."""
        ...


class ParkedBatch(StatusWrites, Protocol):
    """Parked statuses that are due, locked (SKIP LOCKED) in one transaction."""

    @property
    def statuses(self) -> Sequence[Located]: ...

    async def resolve(self, parked_ids: Sequence[int]) -> None:
        """Forget parked statuses that found their row."""
        ...

    async def postpone(self, parked_ids: Sequence[int], horizon: timedelta) -> list[str]:
        """Try them later, or never past `horizon`; the channels of those that became orphans."""
        ...


class ReconcileStore(Protocol):
    def webhooks(self, limit: int, budget: int) -> AbstractAsyncContextManager[WebhookBatch]:
        """Up to `limit` rows, while the bodies before each hold fewer than `budget` bytes."""
        ...

    def webhook(self, webhook_id: int) -> AbstractAsyncContextManager[WebhookBatch]:
        """One row alone (if it is still unprocessed), to find the one a failed batch choked on."""
        ...

    def parked(self, limit: int) -> AbstractAsyncContextManager[ParkedBatch]: ...

    async def pending_webhook_ids(self, limit: int) -> list[int]: ...

    async def give_up_webhook(self, webhook_id: int, error: str) -> None: ...

    async def orphan_due_parked(self, limit: int) -> int:
        """Give up on the next due parked statuses at once; how many there were."""
        ...


class ReconcileObserver(Protocol):
    def reconciled(self, report: Report) -> None: ...

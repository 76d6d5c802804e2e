"""What the services need from the world, and the values it hands back.

Services import these Protocols, never `outbox.db`, `outbox.http`, SQLAlchemy or aiohttp; the
composition root (`outbox.app`) passes in the adapters that satisfy them, and tests pass fakes.
Adapters raise only `outbox.errors` kinds: `DatabaseUnavailable` (wait, try again) or
`StatementRejected` (this input will fail again).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import NamedTuple, Protocol

from outbox.config import ChannelConfig
from outbox.domain.models import Claim, ClaimedMessage, SendResult, State
from outbox.domain.operations import Candidate, PurgeCursor, Purged
from outbox.domain.outcome import SendError
from outbox.domain.ratelimit import Limits
from outbox.domain.reconcile import (
    InboundSeen,
    Located,
    NumberMove,
    Plan,
    Target,
    WebhookRow,
)
from outbox.domain.report import Report
from outbox.domain.request import ApiRequest
from outbox.domain.response import SendOutcome
from outbox.domain.window import DEFAULT_MARGIN

# The wall clock, injected so that decisions can be tested at any time of day.
Clock = Callable[[], datetime]


def utc_now() -> datetime:
    """The real wall clock, the default `Clock` everywhere."""
    return datetime.now(UTC)


# --- reconciling ---


class StatusWrites(Protocol):
    """Locks and writes for statuses, inside the transaction of the batch that holds them."""

    async def lock(self, statuses: Sequence[Located]) -> list[Target]:
        """Lock (in id order) and return every row any of the statuses' wamids or ids name."""
        ...

    async def apply(self, plan: Plan) -> None:
        """Write the plan's row changes (waking the senders for requeued rows) and history."""
        ...


class WebhookBatch(StatusWrites, Protocol):
    """Unprocessed webhook rows, locked (SKIP LOCKED) in one transaction."""

    @property
    def rows(self) -> Sequence[WebhookRow]: ...

    async def record(self, inbound: Sequence[InboundSeen], moves: Sequence[NumberMove]) -> None:
        """Contacts' last inbound times, and windows carried over to new numbers."""
        ...

    async def park(self, statuses: Sequence[Located]) -> None: ...

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


# --- gauges ---


@dataclass(frozen=True)
class Sample:
    """The database-read gauges, as one read found them."""

    backlog: dict[tuple[str, str], int] = field(default_factory=dict)  # (channel, state)
    oldest_due_seconds: dict[str, float] = field(default_factory=dict)
    dlr_missing: dict[str, int] = field(default_factory=dict)
    unprocessed_webhooks: int = 0
    reconciler_lag_seconds: float = 0.0
    parked_statuses: int = 0
    dead_tuples: dict[str, int] = field(default_factory=dict)  # by table
    oldest_transaction_seconds: float = 0.0
    # Channels whose shared pause (outbox.channel_state.paused_until) holds now, whichever
    # replica wrote it: each replica's gauge shows it, even after that replica died.
    paused_channels: frozenset[str] = frozenset()


class GaugeReader(Protocol):
    async def sample(self, dlr_missing_after: timedelta, dlr_lookback: timedelta) -> Sample: ...


class SampleObserver(Protocol):
    def sampled(self, sample: Sample) -> None: ...

    def sample_failed(self) -> None: ...


# --- operations ---


@dataclass(frozen=True)
class Selector:
    """Which rows an operator's command applies to; every given part must match."""

    states: tuple[State, ...]
    ids: tuple[int, ...] = ()
    channel: str | None = None
    error_codes: tuple[str, ...] = ()
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    recipient: str | None = None

    def narrows(self) -> bool:
        """True when something beyond the state was given."""
        return bool(
            self.ids
            or self.channel
            or self.error_codes
            or self.since
            or self.until
            or self.recipient
        )


@dataclass
class Applied:
    """What a batch of replays or cancels did: the rows changed, and those that had changed
    meanwhile and were left alone."""

    done: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)


class OperatorRows(Protocol):
    """The rows `outbox replay` and `cancel` select, and the writes that re-check them.

    The writes are declared as returning awaitables, which `async def` methods and the
    adapters' `@translated` ones both satisfy."""

    def candidates(self, selector: Selector) -> AsyncIterator[list[Candidate]]: ...

    def replay(
        self,
        ids: Sequence[int],
        states: Sequence[State],
        *,
        actor: str,
        forced: bool,
        expires_at: datetime | None,
        note: str | None,
    ) -> Awaitable[Applied]: ...

    def cancel(
        self, ids: Sequence[int], states: Sequence[State], *, actor: str, note: str | None
    ) -> Awaitable[Applied]: ...


class RetentionRows(Protocol):
    """What `outbox purge` counts and deletes."""

    def count_purgeable(
        self, states: Sequence[State], cutoff: datetime
    ) -> Awaitable[dict[Purged, int]]: ...

    def purge_batch(
        self,
        table: Purged,
        after: PurgeCursor,
        cutoff: datetime,
        batch: int,
        states: Sequence[State],
    ) -> Awaitable[tuple[int, PurgeCursor]]: ...


# --- sending ---


class ResultSink(Protocol):
    """Where the result buffer writes: returns how many rows were still under our lease."""

    async def complete(self, results: Sequence[SendResult], worker: str) -> int: ...


class Renewed(NamedTuple):
    """What a renewal did: leases extended, and rescued rows taken back to `sending`."""

    extended: list[int]
    taken_back: list[int]


class LeaseRenewals(Protocol):
    async def renew(self, ids: Sequence[int], worker: str, lease: timedelta) -> Renewed:
        """Extend the leases of the rows among `ids` this worker holds, and take back those
        rescued from it (`unknown`, `lease_expired`) that nobody has resent."""
        ...


class MessageLeases(ResultSink, LeaseRenewals, Protocol):
    """The sender's view of `outbox.messages`: leases taken, results written, leases handed back."""

    async def claim(
        self,
        channel: str,
        limit: int,
        worker: str,
        lease: timedelta,
        limits: Limits,
        *,
        window_margin: timedelta = DEFAULT_MARGIN,
    ) -> Claim: ...
    async def next_due(self, channel: str) -> datetime | None: ...
    async def release(self, ids: Sequence[int], worker: str) -> int: ...


class ChannelStates(Protocol):
    """The channel rows every replica shares: the slowed-down bucket, and the pause.

    A pause belongs to an epoch, which a success or a new key ends for every replica."""

    async def slow_down(
        self, channel: str, limits: Limits, hold: timedelta
    ) -> tuple[float, datetime]: ...
    async def pause(
        self, channel: str, *, epoch: int, seconds: float, reason: str, worker: str, key: str | None
    ) -> bool: ...
    async def resume(self, channel: str, worker: str) -> int: ...
    async def lift_credential_pause(self, channel: str, key: str, worker: str) -> bool: ...
    async def pause_epoch(self, channel: str) -> int: ...


@dataclass(frozen=True, slots=True)
class Settled:
    """A row housekeeping moved on, for its log line."""

    id: int
    channel: str
    state: State


# A line of messages (channel, recipient digits, ordering_key), for sweeps that walk lines.
LineCursor = tuple[str, str, str]
LINES_START: LineCursor = ("", "", "")  # before every line


class Housekeeping(Protocol):
    async def rescue_expired_leases(self, limit: int = ...) -> list[Settled]: ...
    async def expire_due(self, limit: int = ...) -> list[Settled]: ...
    async def resend_unknown(
        self, channels: Sequence[str], quiet: timedelta, limit: int = ...
    ) -> int: ...
    async def heartbeat(
        self, worker: str, channels: Collection[str], live: timedelta
    ) -> frozenset[str]: ...
    async def fail_unknown_channels(
        self, known: Collection[str], grace: timedelta, limit: int = ...
    ) -> list[Settled]: ...
    async def repair_heads(self, after: LineCursor, limit: int = ...) -> tuple[int, LineCursor]: ...
    async def forget_pace(self) -> int: ...


class Api(Protocol):
    async def send(self, channel: ChannelConfig, request: ApiRequest) -> SendOutcome: ...


# The monotonic clock (seconds), injected so that pacing and breakers can be tested.
Monotonic = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Attempt:
    """One claimed row's attempt, as metrics see it."""

    channel: str
    message: ClaimedMessage
    result: SendResult
    error_class: SendError
    waited: float | None = None  # seconds from the claim to the request; None: no request
    request_seconds: float | None = None


class SendObserver(Protocol):
    def sent(self, attempt: Attempt) -> None: ...
    def paused(self, channel: str, paused: bool) -> None: ...
    def rate(self, channel: str, per_second: float) -> None: ...


class NullSendObserver:
    """Observes nothing: a sender without metrics."""

    def sent(self, attempt: Attempt) -> None:
        pass

    def paused(self, channel: str, paused: bool) -> None:
        pass

    def rate(self, channel: str, per_second: float) -> None:
        pass

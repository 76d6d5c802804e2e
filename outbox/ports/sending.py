"""What the sender needs: leases, results, channel state, housekeeping, the API."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import NamedTuple, Protocol

from outbox.config import ChannelConfig
from outbox.domain.models import Claim, ClaimedMessage, SendResult, State
from outbox.domain.outcome import SendError
from outbox.domain.ratelimit import Limits
from outbox.domain.request import ApiRequest
from outbox.domain.response import SendOutcome
from outbox.domain.window import DEFAULT_MARGIN


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


class ClaimRequest(NamedTuple):
    """Up to `limit` rows of `channel`, as far as its shared bucket (`limits`) allows."""

    channel: str
    limit: int
    limits: Limits
    # Issue 18: where the channel's templates live (its WABA, else its id); None: no holds.
    template_scope: str | None = None


class Due(NamedTuple):
    """What a claim round should visit: the channels with rows to claim now (up to the limit
    asked, in channel order from the cursor on, wrapping; then those of the channels asked
    about by name that have some and are not among them), and in how many seconds the next
    retry or paced row of any channel comes due (None: none is waiting)."""

    channels: list[str]
    next_in: float | None


class MessageLeases(ResultSink, LeaseRenewals, Protocol):
    """The sender's view of `outbox.messages`: leases taken, results written, leases handed back."""

    async def due_channels(self, after: str, limit: int, also: Sequence[str] = ()) -> Due: ...
    async def ensure_buckets(self, limits: Mapping[str, Limits]) -> None: ...
    async def claim_many(
        self,
        requests: Sequence[ClaimRequest],
        worker: str,
        lease: timedelta,
        *,
        window_margin: timedelta = DEFAULT_MARGIN,
    ) -> dict[str, Claim]: ...
    async def claim(
        self,
        channel: str,
        limit: int,
        worker: str,
        lease: timedelta,
        limits: Limits,
        *,
        window_margin: timedelta = DEFAULT_MARGIN,
        template_scope: str | None = None,
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
    async def lift_credential_pauses(self, keys: Mapping[str, str], worker: str) -> list[str]: ...
    async def pause_epoch(self, channel: str) -> int: ...
    async def hold_marketing(self, channel: str, seconds: float) -> datetime:
        """131048: hold the channel's marketing traffic in every replica (issue 18)."""
        ...


@dataclass(frozen=True, slots=True)
class Settled:
    """A row housekeeping moved on, for its log line."""

    id: int
    channel: str
    state: State


# A line of messages (channel, recipient digits, ordering_key), for sweeps that walk lines.
LineCursor = tuple[str, str, str]
LINES_START: LineCursor = ("", "", "")  # before every line


class SettledObserver(Protocol):
    """Counts rows housekeeping settled without a request (issue 19: with the send outcomes)."""

    def settled(self, rows: Iterable[Settled], error_class: str) -> None: ...


class Housekeeping(Protocol):
    async def rescue_expired_leases(self, limit: int = ...) -> list[Settled]: ...
    async def expire_due(self, limit: int = ...) -> list[Settled]: ...
    async def resend_unknown(
        self, channels: Collection[str], quiet: timedelta, limit: int = ...
    ) -> int: ...
    async def heartbeat(self, worker: str, channels: frozenset[str]) -> None: ...
    async def fail_unknown_channels(
        self,
        known: Collection[str],
        grace: timedelta,
        limit: int = ...,
        *,
        live: timedelta | None = None,
    ) -> list[Settled]: ...
    async def repair_heads(self, after: LineCursor, limit: int = ...) -> tuple[int, LineCursor]: ...
    async def forget_pace(self) -> int: ...
    async def refresh_statistics(self) -> int | None: ...


class Api(Protocol):
    async def send(self, channel: ChannelConfig, request: ApiRequest) -> SendOutcome: ...


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

"""What the services need from the world, and the values it hands back.

Services import these Protocols, never `outbox.db`, `outbox.http`, SQLAlchemy or aiohttp; the
composition root (`outbox.app`) passes in the adapters that satisfy them, and tests pass fakes.
Adapters raise only `outbox.errors` kinds: `DatabaseUnavailable` (wait, try again) or
`StatementRejected` (this input will fail again).
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Protocol

from outbox.config import ChannelConfig
from outbox.domain.models import Claim, ClaimedMessage, SendResult, State
from outbox.domain.outcome import SendError
from outbox.domain.ratelimit import Limits
from outbox.domain.request import ApiRequest
from outbox.domain.response import SendOutcome

# The wall clock, injected so that decisions can be tested at any time of day.
Clock = Callable[[], datetime]


# --- sending ---


class ResultSink(Protocol):
    """Where the result buffer writes: returns how many rows were still under our lease."""

    async def complete(self, results: Sequence[SendResult], worker: str) -> int: ...


class MessageLeases(ResultSink, Protocol):
    """The sender's view of `outbox.messages`: leases taken, results written, leases handed back."""

    async def claim(
        self, channel: str, limit: int, worker: str, lease: timedelta, limits: Limits
    ) -> Claim: ...
    async def next_due(self, channel: str) -> datetime | None: ...
    async def release(self, ids: Sequence[int], worker: str) -> int: ...


class ChannelStates(Protocol):
    """The channel rows every replica shares: the slowed-down bucket, and pauses to show."""

    async def slow_down(
        self, channel: str, limits: Limits, hold: timedelta
    ) -> tuple[float, datetime]: ...
    async def set_pause(
        self, channel: str, until: datetime | None, reason: str | None, worker: str
    ) -> None: ...


@dataclass(frozen=True, slots=True)
class Settled:
    """A row housekeeping moved on, for its log line."""

    id: int
    channel: str
    state: State


class Housekeeping(Protocol):
    async def rescue_expired_leases(self, limit: int = ...) -> list[Settled]: ...
    async def expire_due(self, limit: int = ...) -> list[Settled]: ...
    async def resend_unknown(
        self, channels: Sequence[str], quiet: timedelta, limit: int = ...
    ) -> int: ...
    async def fail_unknown_channels(
        self, known: Collection[str], grace: timedelta, limit: int = ...
    ) -> list[Settled]: ...
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

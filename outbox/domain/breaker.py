"""A circuit breaker per channel: pause a channel whose key, account or API is failing.

Closed: everything flows. Open: nothing is claimed until the cool-down ends. Half-open: exactly
one row is claimed as a probe; its outcome closes the breaker or opens it again with a doubled
cool-down. Rows are never failed because of a pause; they wait in the queue. Times are
monotonic seconds supplied by the caller.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import StrEnum

from outbox.domain.retry import ErrorClass


def key_fingerprint(api_key: str) -> str:
    """Which key a request was sent with, or a pause was caused by, without the key: a pause
    records it, and answers to a key that was replaced since are not counted."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:16]


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


@dataclass(frozen=True, slots=True)
class Transition:
    state: BreakerState
    reason: str
    cooldown: float = 0.0


# Slots, not a dict per breaker (one a channel): a dict's keys are shared only while every
# instance's attributes came in the same order, and 10,000 breakers took 0.5 MB more once not.
@dataclass(slots=True)
class CircuitBreaker:
    threshold: int  # server errors in a row that open the breaker
    cooldown: float
    max_cooldown: float
    state: BreakerState = field(default=BreakerState.CLOSED, init=False)
    reason: str = field(default="", init=False)
    _server_errors: int = field(default=0, init=False)
    _trips: int = field(default=0, init=False)
    _open_until: float = field(default=0.0, init=False)
    _probe: int | None = field(default=None, init=False)

    def allowance(self, now: float) -> int | None:
        """Rows that may be claimed now: None for no limit, 1 for a probe, 0 for none."""
        if self.state is BreakerState.OPEN and now >= self._open_until:
            self.state = BreakerState.HALF_OPEN
        if self.state is BreakerState.CLOSED:
            return None
        if self.state is BreakerState.HALF_OPEN and self._probe is None:
            return 1
        return 0

    def wait_time(self, now: float) -> float | None:
        """Seconds until a probe may go out; None when waiting on a probe already out."""
        if self.state is BreakerState.OPEN:
            return max(0.0, self._open_until - now)
        return None

    def probe_now(self, now: float) -> None:
        """Something changed that may have fixed the channel (a new key): probe at once rather
        than after the cool-down. A probe already out went with the old key: its answer is
        ignored and a new probe may go. The cool-down's doubling is kept, should it fail."""
        if self.state is BreakerState.OPEN:
            self._open_until = now
        elif self.state is BreakerState.HALF_OPEN:
            self._probe = None

    def resume(self, reason: str) -> Transition | None:
        """The channel's pause ended elsewhere (another replica's probe succeeded, or a new
        key lifted it): close without a probe of our own, and start the doubling over."""
        if self.state is BreakerState.CLOSED:
            return None
        self._probe = None
        self._server_errors = 0
        self.state = BreakerState.CLOSED
        self.reason = ""
        self._trips = 0
        return Transition(BreakerState.CLOSED, reason)

    def lets(self, message_id: int) -> bool:
        """Whether a row claimed before now may still be sent: the breaker is closed, or the
        row is its probe (a row claimed ahead that waited while the channel paused may not)."""
        return self.state is BreakerState.CLOSED or message_id == self._probe

    def probing(self, message_id: int) -> None:
        self._probe = message_id

    def probe_unused(self) -> None:
        """The probe claim found no row: the next claim may probe again."""
        self._probe = None

    def forget(self, message_id: int) -> None:
        """The probe ended without an answer from the API: another row may probe."""
        if self._probe == message_id:
            self._probe = None

    def record(
        self, now: float, message_id: int, error: ErrorClass | None, reason: str
    ) -> Transition | None:
        """Feed one send outcome (`error` None for accepted); returns a state change, if any."""
        if self.state is not BreakerState.CLOSED:
            if message_id != self._probe:
                # Answers to requests sent before the pause say nothing about the API now.
                return None
            self._probe = None
            if error is ErrorClass.CHANNEL or error is ErrorClass.SERVER:
                return self._open(now, reason)
            return self._close()
        if error is ErrorClass.CHANNEL:
            return self._open(now, reason)
        if error is ErrorClass.SERVER:
            self._server_errors += 1
            if self._server_errors >= self.threshold:
                return self._open(now, f"{self._server_errors} server errors in a row: {reason}")
        elif error is not ErrorClass.THROTTLE:
            self._server_errors = 0
        return None

    def _open(self, now: float, reason: str) -> Transition:
        cooldown = min(self.max_cooldown, self.cooldown * 2.0 ** min(self._trips, 32))
        self._trips += 1
        self._server_errors = 0
        self.state = BreakerState.OPEN
        self.reason = reason
        self._open_until = now + cooldown
        return Transition(BreakerState.OPEN, reason, cooldown)

    def _close(self) -> Transition:
        reason = self.reason
        self.state = BreakerState.CLOSED
        self.reason = ""
        self._trips = 0
        return Transition(BreakerState.CLOSED, f"probe succeeded after: {reason}")

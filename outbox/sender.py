"""The send loop: claim due rows under a lease, post them, write the outcomes back in batches.

Claims happen in short transactions and commit before any request leaves; each claimed row is
sent by its own task; outcomes go to a buffer that one flusher writes with a single statement
per batch. On stop, claiming ends, in-flight requests get `shutdown_grace` to finish, rows whose
request never started go back to `queued`, and the buffer is flushed.
"""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import structlog
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

from outbox.config import ChannelConfig, SenderConfig
from outbox.domain import outcome as outcomes
from outbox.domain import retry
from outbox.domain.breaker import BreakerState, CircuitBreaker, Transition
from outbox.domain.models import Claim, ClaimedMessage, SendResult, SentAs, State
from outbox.domain.ratelimit import Limits
from outbox.domain.request import (
    ApiRequest,
    InvalidMessage,
    build_request,
    normalise_recipient,
    validate_payload,
)
from outbox.domain.response import SendOutcome, TransportFailure
from outbox.domain.window import WindowClosed, choose_content
from outbox.loops import wait_any

log = structlog.get_logger("outbox.sender")

# Errors that mean "the database is unreachable right now": retried, never fatal.
DB_ERRORS = (OperationalError, InterfaceError, DBAPIError, OSError)
_FLUSH_BATCH = 2000  # results per UPDATE statement
_DB_RETRY_SECONDS = (0.5, 1.0, 2.0, 5.0)
_SLOW_DOWN_EVERY_SECONDS = 1.0


class Store(Protocol):
    async def claim(
        self, channel: str, limit: int, worker: str, lease: timedelta, limits: Limits
    ) -> Claim: ...
    async def slow_down(
        self, channel: str, limits: Limits, hold: timedelta
    ) -> tuple[float, datetime]: ...
    async def complete(self, results: Sequence[SendResult], worker: str) -> int: ...
    async def release(self, ids: Sequence[int], worker: str) -> int: ...
    async def next_due(self, channel: str) -> datetime | None: ...
    async def set_pause(
        self, channel: str, until: datetime | None, reason: str | None, worker: str
    ) -> None: ...


class Api(Protocol):
    async def send(self, channel: ChannelConfig, request: ApiRequest) -> SendOutcome: ...


@dataclass(frozen=True, slots=True)
class Attempt:
    """One claimed row's attempt, as metrics see it."""

    channel: str
    message: ClaimedMessage
    result: SendResult
    # none, network (no answer), invalid or expired (no request), else retry.ErrorClass
    error_class: str
    waited: float | None = None  # seconds from the claim to the request; None: no request
    request_seconds: float | None = None


class SendObserver(Protocol):
    def sent(self, attempt: Attempt) -> None: ...
    def paused(self, channel: str, paused: bool) -> None: ...
    def rate(self, channel: str, per_second: float) -> None: ...


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class _Flight:
    message: ClaimedMessage
    started: bool = False
    claimed: float = field(default_factory=time.monotonic)
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class Sender:
    def __init__(
        self,
        store: Store,
        api: Api,
        channels: Sequence[ChannelConfig],
        config: SenderConfig,
        *,
        worker_id: str,
        observer: SendObserver | None = None,
        now: Callable[[], datetime] = utc_now,
        rand: Callable[[], float] = random.random,
    ) -> None:
        self._store = store
        self._api = api
        self._channels = {c.id: c for c in channels}
        self._config = config
        self._worker = worker_id
        self._observer = observer
        self._now = now
        self._rand = rand
        self._policy = retry.RetryPolicy(
            max_attempts=config.max_attempts,
            backoff_base=config.backoff_base,
            backoff_cap=config.backoff_cap,
        )
        self._limits = {c.id: c.limits() for c in channels}
        self._breakers = {
            c.id: CircuitBreaker(
                threshold=config.breaker_threshold,
                cooldown=config.breaker_cooldown.total_seconds(),
                max_cooldown=config.breaker_cooldown_max.total_seconds(),
            )
            for c in channels
        }
        # When this process last slowed a channel down (monotonic): one throttled burst of
        # answers is one slow-down, not one per answer.
        self._slowed_at: dict[str, float] = {}
        self._in_flight: Counter[str] = Counter()
        self._round = 0
        self._background: set[asyncio.Task[None]] = set()
        self._flights: dict[int, _Flight] = {}
        self._results: list[SendResult] = []
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._results_ready = asyncio.Event()
        self._outcomes: dict[State, int] = dict.fromkeys(State, 0)
        self._writes = 0  # result batches written so far

    def wake(self) -> None:
        """Something was inserted: claim now rather than at the next poll."""
        self._wake.set()

    def new_key(self, channel: ChannelConfig) -> None:
        """An operator reloaded the channel's API key: use it from the next request, and if
        the channel is paused, lift the shared pause and probe at once."""
        self._channels[channel.id] = channel
        breaker = self._breakers[channel.id]
        if breaker.state is BreakerState.CLOSED:
            return
        breaker.probe_now(time.monotonic())
        self._background_task(self._lift_pause(channel.id))

    async def _lift_pause(self, channel: str) -> None:
        await self._persist_pause(channel, None, None)
        self._wake.set()

    async def run(self, stop: asyncio.Event, *, drain: bool = False) -> None:
        """Send until `stop` is set (or, with `drain`, until nothing is left to claim)."""
        flusher = asyncio.create_task(self._flush_loop(), name="outbox.sender.flush")
        try:
            await self._claim_loop(stop, drain)
        finally:
            await self._finish_flights()
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await self._flush_remaining()
            await asyncio.gather(*self._background, return_exceptions=True)
            log.info(
                "outbox.sender.stopped",
                worker_id=self._worker,
                **{state.value: n for state, n in self._outcomes.items() if n},
            )

    async def _claim_loop(self, stop: asyncio.Event, drain: bool) -> None:
        failures = 0
        while not stop.is_set():
            self._wake.clear()
            self._slot_freed.clear()
            writes_before = self._writes
            try:
                claimed, retry_in = await self._claim_round()
                failures = 0
            except DB_ERRORS as exc:
                delay = _DB_RETRY_SECONDS[min(failures, len(_DB_RETRY_SECONDS) - 1)]
                failures += 1
                log.warning("outbox.claim.db_error", error=str(exc), retry_in=delay)
                await wait_any(stop, timeout=delay)
                continue
            # Drained: nothing claimed, nothing out, nothing to write, and no write landed while
            # the claim ran (one could have released a row the claim did not yet see).
            idle = not claimed and not self._flights and not self._results
            if drain and idle and self._writes == writes_before:
                return
            if retry_in == 0.0 and self._free_slots() > 0:
                continue
            timeout = self._config.poll_interval.total_seconds()
            if retry_in is not None:
                timeout = min(timeout, retry_in)
            if drain:
                timeout = min(timeout, 0.05)
            await wait_any(stop, self._wake, self._slot_freed, timeout=timeout)

    async def _claim_round(self) -> tuple[int, float | None]:
        """One claim per channel.

        Returns the rows claimed and when to claim again: 0 when some channel may have more due
        rows and tokens to send them, the wait for tokens when it has rows but no tokens, None
        when no channel is known to have more (or every slot is busy: a freed slot wakes us).
        """
        claimed, retry_in = 0, None
        # Each round starts at another channel and offers each its share of the free slots, so
        # one channel's backlog never leaves another waiting for a slot.
        channels = list(self._channels.values())
        self._round += 1
        start = self._round % len(channels)
        order = channels[start:] + channels[:start]
        for position, channel in enumerate(order):
            free = self._free_slots()
            if free <= 0:
                return claimed, None
            share = -(-free // (len(order) - position))
            count, again = await self._claim_channel(channel, share)
            claimed += count
            if again is not None:
                retry_in = _earliest(retry_in, again)
        return claimed, retry_in

    async def _claim_channel(self, channel: ChannelConfig, share: int) -> tuple[int, float | None]:
        """Claim what the channel's breaker, in-flight cap and shared bucket allow; send it."""
        breaker = self._breakers[channel.id]
        allowance = breaker.allowance(time.monotonic())
        if allowance == 0:
            return 0, breaker.wait_time(time.monotonic())
        cap = channel.max_in_flight or self._config.max_in_flight
        wanted = min(self._config.batch_size, share, cap - self._in_flight[channel.id])
        if allowance == 1:
            wanted = min(wanted, 1)
        if wanted <= 0:
            return 0, None  # a freed slot of this channel wakes the loop
        try:
            claim = await self._store.claim(
                channel.id, wanted, self._worker, self._config.lease, self._limits[channel.id]
            )
        except BaseException:
            if allowance == 1:
                breaker.probe_unused()
            raise
        if self._observer is not None:
            self._observer.rate(channel.id, claim.rate)
        rows, retry_in = claim.messages, claim.wait
        if retry_in is None:
            # Nothing more is ready: wake up for the first retry or paced row coming due.
            due = await self._store.next_due(channel.id)
            if due is not None:
                retry_in = max(0.0, (due - self._now()).total_seconds())
        if allowance == 1:
            if rows:
                breaker.probing(rows[0].id)
                log.info("outbox.channel.probe", channel=channel.id, message_id=rows[0].id)
            else:
                breaker.probe_unused()
        for message in rows:
            self._start(channel, message)
        return len(rows), retry_in

    def _free_slots(self) -> int:
        # An answer not yet written holds its slot: when the database falls behind, claiming
        # slows down with it instead of piling up answers in memory (and leases unrenewed).
        return self._config.max_in_flight - len(self._flights) - len(self._results)

    def _start(self, channel: ChannelConfig, message: ClaimedMessage) -> None:
        flight = _Flight(message)
        self._flights[message.id] = flight
        self._in_flight[channel.id] += 1
        flight.task = asyncio.create_task(self._send(channel, flight))

    async def _send(self, channel: ChannelConfig, flight: _Flight) -> None:
        message = flight.message
        try:
            result = await self._attempt(channel, flight)
            self._record(result)
        finally:
            # A probe that ended without an answer (bad row, expired, stopped) proved nothing.
            self._breakers[channel.id].forget(message.id)
            del self._flights[message.id]
            self._in_flight[channel.id] -= 1
            self._slot_freed.set()

    async def _attempt(self, channel: ChannelConfig, flight: _Flight) -> SendResult:
        message = flight.message
        now = self._now()
        if message.expires_at is not None and message.expires_at <= now:
            expired = outcomes.without_request(
                message, State.EXPIRED, now, "expired", outcomes.EXPIRED_TITLE
            )
            return self._observe(Attempt(channel.id, message, expired, "expired"))
        try:
            request = self._request_for(channel, message, now)
        except InvalidMessage as exc:
            title = "the message cannot be sent as written"
            bad = outcomes.without_request(message, State.FAILED, now, exc.code, title, exc.detail)
            return self._observe(Attempt(channel.id, message, bad, "invalid"))
        if isinstance(request, WindowClosed):
            closed = outcomes.without_request(
                message,
                State.FAILED,
                now,
                outcomes.WINDOW_CLOSED,
                outcomes.WINDOW_CLOSED_TITLE,
                request.detail,
            )
            return self._observe(Attempt(channel.id, message, closed, "window_closed"))
        flight.started = True
        started = time.monotonic()
        outcome = await self._api.send(channel, request)
        elapsed = time.monotonic() - started
        judged = outcomes.judge(
            message, request.sent_as, outcome, now=self._now(), policy=self._policy, rand=self._rand
        )
        result = judged.result
        if result.state is State.ACCEPTED and channel.recipient_gap:
            result = replace(result, pace_until=result.at + channel.recipient_gap)
        self._learn(channel, message.id, judged)
        if isinstance(outcome, TransportFailure):
            error_class = "network"
        else:
            error_class = "none" if judged.error is None else judged.error.value
        waited = started - flight.claimed
        return self._observe(Attempt(channel.id, message, result, error_class, waited, elapsed))

    def _observe(self, attempt: Attempt) -> SendResult:
        if self._observer is not None:
            self._observer.sent(attempt)
        _log_result(attempt.channel, attempt.message, attempt.result)
        return attempt.result

    def _request_for(
        self, channel: ChannelConfig, message: ClaimedMessage, now: datetime
    ) -> ApiRequest | WindowClosed:
        """The request to send, after the row's own checks and the 24-hour window rule."""
        normalise_recipient(message.recipient)
        validate_payload(message.payload, channel.dialect)
        content = choose_content(
            message.payload,
            message.fallback_template,
            planned=message.planned,
            last_inbound_at=message.last_inbound_at,
            now=now,
            margin=self._config.window_margin,
        )
        if isinstance(content, WindowClosed):
            return content
        try:
            return build_request(
                channel.dialect,
                message.recipient,
                content.payload,
                namespace=channel.namespace,
                message_id=message.id,
                sent_as=content.sent_as,
            )
        except InvalidMessage as exc:
            if content.sent_as is SentAs.FALLBACK_TEMPLATE:
                raise InvalidMessage(exc.code, f"fallback_template: {exc.detail}") from None
            raise

    def _learn(self, channel: ChannelConfig, message_id: int, judged: outcomes.Judged) -> None:
        """What one answer says about the channel: throttled, broken, or fine."""
        if judged.error is retry.ErrorClass.THROTTLE:
            self._slow_down(channel, judged.retry_after)
        reason = judged.result.error_title or judged.result.error_code or ""
        transition = self._breakers[channel.id].record(
            time.monotonic(), message_id, judged.error, reason
        )
        if transition is not None:
            self._announce(channel.id, transition)

    def _slow_down(self, channel: ChannelConfig, retry_after: float | None) -> None:
        """Lower the channel's shared rate and hold its claims, once per throttled burst."""
        now = time.monotonic()
        if now - self._slowed_at.get(channel.id, -math.inf) < _SLOW_DOWN_EVERY_SECONDS:
            return
        self._slowed_at[channel.id] = now
        hold = max(
            self._policy.throttle_delay.total_seconds(),
            min(retry_after or 0.0, self._policy.max_retry_after.total_seconds()),
        )
        self._background_task(self._persist_slow_down(channel, timedelta(seconds=hold)))

    async def _persist_slow_down(self, channel: ChannelConfig, hold: timedelta) -> None:
        try:
            rate, until = await self._store.slow_down(channel.id, self._limits[channel.id], hold)
        except DB_ERRORS as exc:
            log.warning("outbox.channel.slow_down_failed", channel=channel.id, error=str(exc))
            return
        log.warning(
            "outbox.channel.throttled",
            channel=channel.id,
            rate_per_second=round(rate, 2),
            hold_until=until.isoformat(),
        )
        if self._observer is not None:
            self._observer.rate(channel.id, rate)

    def _background_task(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _announce(self, channel: str, transition: Transition) -> None:
        paused = transition.state is BreakerState.OPEN
        if paused:
            log.error(
                "outbox.channel.paused",
                channel=channel,
                reason=transition.reason,
                probe_in_seconds=transition.cooldown,
            )
        else:
            log.warning("outbox.channel.resumed", channel=channel, reason=transition.reason)
        if self._observer is not None:
            self._observer.paused(channel, paused)
        until = self._now() + timedelta(seconds=transition.cooldown) if paused else None
        self._background_task(
            self._persist_pause(channel, until, transition.reason if paused else None)
        )

    async def _persist_pause(
        self, channel: str, until: datetime | None, reason: str | None
    ) -> None:
        try:
            await self._store.set_pause(channel, until, reason, self._worker)
        except DB_ERRORS as exc:
            # Visibility only: the pause itself lives in this process and holds regardless.
            log.warning("outbox.channel.pause_not_recorded", channel=channel, error=str(exc))

    def _record(self, result: SendResult) -> None:
        self._outcomes[result.state] += 1
        self._results.append(result)
        self._results_ready.set()

    async def _flush_loop(self) -> None:
        interval = self._config.flush_interval.total_seconds()
        while True:
            await self._results_ready.wait()
            # A short pause lets a burst of answers share one UPDATE.
            await asyncio.sleep(interval)
            self._results_ready.clear()
            await self._flush_remaining(retry_forever=True)

    async def _flush_remaining(self, *, retry_forever: bool = False) -> None:
        failures = 0
        while self._results:
            batch = self._results[:_FLUSH_BATCH]
            try:
                written = await self._store.complete(batch, self._worker)
            except DB_ERRORS as exc:
                failures += 1
                if not retry_forever and failures > len(_DB_RETRY_SECONDS):
                    log.error(
                        "outbox.results.lost",
                        count=len(self._results),
                        error=str(exc),
                        note="rows stay 'sending' until their lease expires, then 'unknown'",
                    )
                    self._results.clear()
                    break
                delay = _DB_RETRY_SECONDS[min(failures - 1, len(_DB_RETRY_SECONDS) - 1)]
                log.warning("outbox.results.db_error", error=str(exc), retry_in=delay)
                await asyncio.sleep(delay)
                continue
            del self._results[: len(batch)]
            self._writes += 1
            # A finished row may be what held back its recipient's next one: claim again.
            self._wake.set()
            if written != len(batch):
                log.warning("outbox.results.lease_lost", expected=len(batch), written=written)

    async def _finish_flights(self) -> None:
        """Let started requests finish within the grace period; hand back the rest."""
        flights = list(self._flights.values())
        not_started = [f for f in flights if not f.started]
        for flight in not_started:
            assert flight.task is not None
            flight.task.cancel()
        tasks = [f.task for f in flights if f.task is not None]
        if not tasks:
            return
        _, pending = await asyncio.wait(tasks, timeout=self._config.shutdown_grace.total_seconds())
        abandoned = [f for f in flights if f.task in pending]
        for flight in abandoned:
            assert flight.task is not None
            flight.task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        now = self._now()
        for flight in abandoned:
            self._record(
                SendResult(
                    flight.message.id,
                    State.UNKNOWN,
                    now,
                    error_code="shutdown",
                    error_title="stopped while the request was in flight",
                )
            )
        await self._flush_remaining()
        released = await self._store.release([f.message.id for f in not_started], self._worker)
        log.info(
            "outbox.sender.in_flight_at_stop",
            finished=len(flights) - len(not_started) - len(abandoned),
            released=released,
            abandoned=len(abandoned),
        )


def _earliest(current: float | None, candidate: float) -> float:
    return candidate if current is None else min(current, candidate)


def _log_result(channel: str, message: ClaimedMessage, result: SendResult) -> None:
    fields = {
        "channel": channel,
        "message_id": message.id,
        "attempt": message.attempts,
        "state": result.state.value,
    }
    if result.state is State.ACCEPTED:
        log.debug("outbox.send.accepted", wamid=result.wamid, **fields)
    elif result.state is State.QUEUED:
        log.info(
            "outbox.send.retry_scheduled",
            error_code=result.error_code,
            error_title=result.error_title,
            next_attempt_at=result.next_attempt_at,
            **fields,
        )
    else:
        # ERROR only for the final word on a message; `unknown` and `expired` are warnings.
        level = log.error if result.state is State.FAILED else log.warning
        level(
            f"outbox.send.{result.state.value}",
            error_code=result.error_code,
            error_title=result.error_title,
            error_detail=result.error_detail,
            **fields,
        )

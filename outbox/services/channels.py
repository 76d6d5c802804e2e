"""Channel health as this process sees it: circuit breakers, throttle slow-downs, pauses.

A breaker lives in this process and decides alone; what every replica should know (a slowed
shared bucket) or operators should see (a pause) is written in the background, so that no
answer waits on the database.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Sequence
from datetime import datetime, timedelta
from typing import Any

import structlog

from outbox.config import ChannelConfig, SenderConfig
from outbox.domain.breaker import BreakerState, CircuitBreaker, Transition
from outbox.domain.outcome import Judged
from outbox.domain.ratelimit import Limits
from outbox.errors import DatabaseError
from outbox.ports import ChannelStates, Clock, Monotonic, SendObserver

log = structlog.get_logger("outbox.sender")

SLOW_DOWN_EVERY_SECONDS = 1.0


class ChannelGovernor:
    def __init__(
        self,
        store: ChannelStates,
        channels: Sequence[ChannelConfig],
        config: SenderConfig,
        *,
        worker: str,
        observer: SendObserver,
        now: Clock,
        monotonic: Monotonic,
        on_resume: Callable[[], None],
    ) -> None:
        self._store = store
        self._worker = worker
        self._observer = observer
        self._now = now
        self._monotonic = monotonic
        self._on_resume = on_resume
        self.limits: dict[str, Limits] = {c.id: c.limits() for c in channels}
        self.breakers = {
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
        self._background: set[asyncio.Task[None]] = set()

    def new_key(self, channel: str) -> None:
        """The channel's API key changed: a paused channel lifts its shared pause and probes
        at once."""
        breaker = self.breakers[channel]
        if breaker.state is BreakerState.CLOSED:
            return
        breaker.probe_now(self._monotonic())
        self._background_task(self._lift_pause(channel))

    def learn(self, channel: str, message_id: int, judged: Judged) -> None:
        """What one answer says about the channel: throttled, broken, or fine."""
        if judged.throttle_hold is not None:
            self._slow_down(channel, judged.throttle_hold)
        reason = judged.result.error_title or judged.result.error_code or ""
        transition = self.breakers[channel].record(
            self._monotonic(), message_id, judged.error, reason
        )
        if transition is not None:
            self._announce(channel, transition)

    async def settle(self) -> None:
        """Wait for the background writes to finish."""
        await asyncio.gather(*self._background, return_exceptions=True)

    async def _lift_pause(self, channel: str) -> None:
        await self._persist_pause(channel, None, None)
        self._on_resume()

    def _slow_down(self, channel: str, hold: timedelta) -> None:
        """Lower the channel's shared rate and hold its claims, once per throttled burst."""
        now = self._monotonic()
        if now - self._slowed_at.get(channel, -math.inf) < SLOW_DOWN_EVERY_SECONDS:
            return
        self._slowed_at[channel] = now
        self._background_task(self._persist_slow_down(channel, hold))

    async def _persist_slow_down(self, channel: str, hold: timedelta) -> None:
        try:
            rate, until = await self._store.slow_down(channel, self.limits[channel], hold)
        except DatabaseError as exc:
            log.warning("outbox.channel.slow_down_failed", channel=channel, error=str(exc))
            return
        log.warning(
            "outbox.channel.throttled",
            channel=channel,
            rate_per_second=round(rate, 2),
            hold_until=until.isoformat(),
        )
        self._observer.rate(channel, rate)

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
        except DatabaseError as exc:
            # Visibility only: the pause itself lives in this process and holds regardless.
            log.warning("outbox.channel.pause_not_recorded", channel=channel, error=str(exc))

    def _background_task(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

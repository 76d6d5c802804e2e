"""Channel health: circuit breakers, throttle slow-downs, and the pause every replica shares.

A breaker lives in this process and decides at once; what every replica should know (a slowed
shared bucket, a pause) is written in the background, so that no answer waits on the database.
The shared pause has one truth: it belongs to an epoch that a success (or a new key) ends for
every replica. A failure pauses only the epoch its request was claimed in, so it cannot re-pause
a channel that recovered meanwhile; a process whose own breaker is open reads the epoch on each
claim and resumes when another replica's success ended the pause.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Any

import structlog

from outbox.config import ChannelConfig, Secret, SenderConfig
from outbox.domain.breaker import BreakerState, CircuitBreaker, Transition, key_fingerprint
from outbox.domain.outcome import Judged
from outbox.domain.ratelimit import Limits
from outbox.domain.retry import ErrorClass
from outbox.errors import DatabaseError
from outbox.ports import ChannelStates, Monotonic, SendObserver

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
        monotonic: Monotonic,
        on_resume: Callable[[], None],
    ) -> None:
        self._store = store
        self._worker = worker
        self._observer = observer
        self._monotonic = monotonic
        self._on_resume = on_resume
        self._config = config
        self.limits: dict[str, Limits] = {}
        self.breakers: dict[str, CircuitBreaker] = {}
        self._keys: dict[str, str] = {}  # the key in use, fingerprinted
        self._fingerprints: dict[str, tuple[Secret, str]] = {}  # see key_of
        # The epoch of the pause this process's open breaker belongs to.
        self._epochs: dict[str, int] = {}
        # When this process last slowed a channel down (monotonic): one throttled burst of
        # answers is one write, not one per answer (the row decides whether it is a new event).
        self._slowed_at: dict[str, float] = {}
        self._background: set[asyncio.Task[None]] = set()
        # Tracked, not yet started (a tracked channel has a breaker: one without is new, and a
        # set of the started ones besides would hold every channel's id again).
        self._unstarted: set[str] = set()
        self._spam_hold = config.spam_hold.total_seconds()
        self._marketing_held_at: dict[str, float] = {}  # monotonic, as _slowed_at
        # One float for every breaker, not two a channel (issue 16: 480 kB at 10,000 channels).
        self._cooldown = config.breaker_cooldown.total_seconds()
        self._max_cooldown = config.breaker_cooldown_max.total_seconds()
        self.track(channels)

    def track(self, channels: Sequence[ChannelConfig]) -> None:
        """Govern exactly these channels from now on: a new one starts closed (and lifts a
        pause another key caused on its first claim), one kept keeps its breaker, one gone is
        forgotten; a kept one whose key changed probes at once (`new_key`)."""
        config, ids = self._config, {c.id for c in channels}
        for gone in set(self.breakers) - ids:
            for per_channel in (
                self.limits,
                self.breakers,
                self._keys,
                self._epochs,
                self._fingerprints,
            ):
                per_channel.pop(gone, None)
            self._slowed_at.pop(gone, None)
            self._marketing_held_at.pop(gone, None)
            self._unstarted.discard(gone)
        for channel in channels:
            if channel.id not in self.breakers:  # new: to start; a kept one keeps its breaker
                self._unstarted.add(channel.id)
                self.breakers[channel.id] = CircuitBreaker(
                    threshold=config.breaker_threshold,
                    cooldown=self._cooldown,
                    max_cooldown=self._max_cooldown,
                )
            self.limits[channel.id] = channel.limits()
            if channel.id in self._keys and self._keys[channel.id] != self.key_of(channel):
                self.new_key(channel)
            self._keys.setdefault(channel.id, self.key_of(channel))

    def key_of(self, channel: ChannelConfig) -> str:
        """The fingerprint of the key `channel` carries, hashed once per key (every send asks,
        issue 16); only the channel's latest key is kept, so a rotated-out one is not held."""
        known = self._fingerprints.get(channel.id)
        if known is None or known[0] is not channel.api_key:
            known = self._fingerprints[channel.id] = (
                channel.api_key,
                key_fingerprint(channel.api_key.reveal()),
            )
        return known[1]

    def new_key(self, channel: ChannelConfig) -> None:
        """The channel's API key changed: a pause another key caused is lifted for every
        replica, whichever wrote it, and a paused breaker here probes at once."""
        key = self.key_of(channel)
        self._keys[channel.id] = key
        self.breakers[channel.id].probe_now(self._monotonic())
        self._background_task(self._lift_credential_pause(channel.id, key, wake=True))

    async def start(self) -> dict[str, Limits]:
        """Before the first claim of the channels tracked since the last start, in one
        statement for all of them (issue 16: not one a claim round while 10,000 channels were
        each claimed for the first time): a pause another key caused ends (this process started
        with a new key: a restart is a reload too). No wake-up: the claim goes ahead anyway.
        Returns the channels started, with their limits."""
        new = {c: self._keys[c] for c in self._unstarted}
        if not new:
            return {}
        try:
            lifted = await self._store.lift_credential_pauses(new, self._worker)
        except DatabaseError as exc:
            log.warning("outbox.channel.pause_not_lifted", channels=len(new), error=str(exc))
            return {}  # tried again on the next claim
        self._unstarted.difference_update(new)
        for channel in lifted:
            log.warning("outbox.channel.pause_lifted", channel=channel, reason="new API key")
        return {c: self.limits[c] for c in new}

    async def refresh(self, channel: str) -> None:
        """On claim, while this process's breaker is not closed: if a success or a new key
        ended the shared pause (the epoch moved on), it resumes here too."""
        if self.breakers[channel].state is BreakerState.CLOSED:
            return
        epoch = await self._store.pause_epoch(channel)
        if epoch > self._epochs.get(channel, epoch):
            self._resumed_elsewhere(channel, "the shared pause was ended by another replica")

    def learn(self, channel: str, message_id: int, judged: Judged, *, key: str, epoch: int) -> None:
        """What one answer says about the channel: throttled, broken, or fine. `key` is the
        fingerprint of the key the request went with, `epoch` the pause epoch of its claim.
        A channel no longer governed (disabled or removed while the request was out) learns
        nothing: it claims no more, and whoever serves it next starts afresh."""
        if channel not in self.breakers:
            return
        if judged.throttle_hold is not None:
            self._slow_down(channel, judged.throttle_hold)
        if judged.error is ErrorClass.SPAM_LIMIT:
            self._hold_marketing(channel)
        if key != self._keys[channel]:
            return  # sent with a key replaced since: it says nothing about the key in use
        breaker = self.breakers[channel]
        was_closed = breaker.state is BreakerState.CLOSED
        reason = judged.result.error_title or judged.result.error_code or ""
        transition = breaker.record(self._monotonic(), message_id, judged.error, reason)
        if transition is None:
            return
        if transition.state is BreakerState.OPEN:
            if was_closed:
                self._epochs[channel] = epoch
            credential = key if judged.error is ErrorClass.CHANNEL else None
            self._announce_pause(channel, transition, credential)
        else:
            log.warning("outbox.channel.resumed", channel=channel, reason=transition.reason)
            self._observer.paused(channel, False)
            self._background_task(self._record_resume(channel))

    def forget(self, channel: str, message_id: int) -> None:
        """A request ended without an answer the breaker can use: if it was a probe, it proved
        nothing."""
        breaker = self.breakers.get(channel)
        if breaker is not None:
            breaker.forget(message_id)

    async def settle(self) -> None:
        """Wait for the background writes to finish."""
        await asyncio.gather(*self._background, return_exceptions=True)

    def forget_probe(self, channel: str) -> None:
        """The claim that was to carry the channel's probe failed: the next one may."""
        breaker = self.breakers.get(channel)
        if breaker is not None:
            breaker.probe_unused()

    def _resumed_elsewhere(self, channel: str, reason: str) -> None:
        breaker = self.breakers.get(channel)  # gone while the epoch was read: nothing to resume
        if breaker is None or breaker.resume(reason) is None:
            return
        log.warning("outbox.channel.resumed", channel=channel, reason=reason)
        self._observer.paused(channel, False)
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

    def _hold_marketing(self, channel: str) -> None:
        """131048: the channel's marketing waits `spam_hold` in every replica; its other
        traffic goes on. One write per burst of such answers."""
        now = self._monotonic()
        if now - self._marketing_held_at.get(channel, -math.inf) < SLOW_DOWN_EVERY_SECONDS:
            return
        self._marketing_held_at[channel] = now
        self._background_task(self._persist_marketing_hold(channel))

    async def _persist_marketing_hold(self, channel: str) -> None:
        try:
            until = await self._store.hold_marketing(channel, self._spam_hold)
        except DatabaseError as exc:
            # The rows that saw the answer wait anyway; the next one writes the hold.
            self._marketing_held_at.pop(channel, None)
            log.warning("outbox.channel.marketing_hold_failed", channel=channel, error=str(exc))
            return
        log.warning("outbox.channel.marketing_held", channel=channel, hold_until=until.isoformat())

    def _announce_pause(self, channel: str, transition: Transition, key: str | None) -> None:
        log.error(
            "outbox.channel.paused",
            channel=channel,
            reason=transition.reason,
            probe_in_seconds=transition.cooldown,
        )
        self._observer.paused(channel, True)
        epoch = self._epochs[channel]
        self._background_task(self._persist_pause(channel, epoch, transition, key))

    async def _persist_pause(
        self, channel: str, epoch: int, transition: Transition, key: str | None
    ) -> None:
        try:
            recorded = await self._store.pause(
                channel,
                epoch=epoch,
                seconds=transition.cooldown,
                reason=transition.reason,
                worker=self._worker,
                key=key,
            )
        except DatabaseError as exc:
            # The pause itself lives in this process and holds regardless.
            log.warning("outbox.channel.pause_not_recorded", channel=channel, error=str(exc))
            return
        if not recorded and self._epochs.get(channel) == epoch:
            self._resumed_elsewhere(
                channel, "a success was recorded after the failing request was claimed"
            )

    async def _record_resume(self, channel: str) -> None:
        try:
            await self._store.resume(channel, self._worker)
        except DatabaseError as exc:
            log.warning("outbox.channel.resume_not_recorded", channel=channel, error=str(exc))

    async def _lift_credential_pause(self, channel: str, key: str, *, wake: bool) -> None:
        try:
            lifted = await self._store.lift_credential_pause(channel, key, self._worker)
        except DatabaseError as exc:
            log.warning("outbox.channel.pause_not_lifted", channel=channel, error=str(exc))
            return
        if lifted:
            log.warning("outbox.channel.pause_lifted", channel=channel, reason="new API key")
        if wake:
            self._on_resume()

    def _background_task(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

"""The send loop: claim due rows under a lease, post them, write the outcomes back in batches.

Claims happen in short transactions and commit before any request leaves; each claimed row is
carried by its own task (outbox.services.courier) once the request gate lets it; outcomes go to
a buffer (`results`) that one flusher writes with a single statement per batch. On stop,
claiming ends, in-flight requests get `shutdown_grace` to finish, rows whose request never
started go back to `queued`, and the buffer is flushed. Which channels a round visits, and each
one's share of the free slots, is kept by outbox.services.slots."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, Iterable, Sequence

import structlog

from outbox.config import ChannelConfig, SenderConfig
from outbox.domain.models import Claim, SendResult, State
from outbox.domain.outcome import SendError
from outbox.errors import DatabaseError
from outbox.loops import Backoff, Health, database_failed, wait_any
from outbox.ports import (
    Api,
    Attempt,
    ChannelStates,
    Clock,
    MessageLeases,
    Monotonic,
    NullSendObserver,
    SendObserver,
    TemplatePauses,
    utc_now,
)
from outbox.services import attempt as attempts
from outbox.services.channels import ChannelGovernor
from outbox.services.courier import Courier
from outbox.services.flights import Flights
from outbox.services.leases import LeaseKeeper
from outbox.services.results import ResultBuffer
from outbox.services.slots import Slots, sooner

log = structlog.get_logger("outbox.sender")
HELD = SendError.HELD


class Sender:
    def __init__(
        self,
        store: MessageLeases,
        api: Api,
        channels: Sequence[ChannelConfig],
        config: SenderConfig,
        *,
        worker_id: str,
        channel_state: ChannelStates,
        observer: SendObserver | None = None,
        now: Clock = utc_now,
        monotonic: Monotonic = time.monotonic,
        rand: Callable[[], float] = random.random,
        health: Health | None = None,
        templates: TemplatePauses | None = None,
    ) -> None:
        self._store = store
        self._health = health or Health()
        self._channels = {c.id: c for c in channels}
        self._config = config
        self._worker = worker_id
        self._observer = observer or NullSendObserver()
        self._now = now
        self._wake = asyncio.Event()
        self._slot_freed = asyncio.Event()
        self._governor = ChannelGovernor(
            channel_state,
            channels,
            config,
            worker=worker_id,
            observer=self._observer,
            monotonic=monotonic,
            on_resume=self._wake.set,
        )
        self._results = ResultBuffer(
            store,
            worker_id,
            flush_interval=config.flush_interval.total_seconds(),
            on_written=self._wake.set,
            health=self._health,
        )
        self._leases = LeaseKeeper(store, worker_id, config.lease, self._owed, health=self._health)
        self._flights = Flights()
        self._courier = Courier(
            store,
            attempts.Means(api, attempts.Rules.of(config, rand), now, monotonic, templates),
            worker_id=worker_id,
            size=config.max_in_flight,
            governor=self._governor,
            flights=self._flights,
            observer=self._observer,
            monotonic=monotonic,
            channel_of=self._channels_now,
            record=self._record,
            landed=self._slot_freed.set,
        )
        self._slots = Slots(
            store,
            config,
            governor=self._governor,
            flights=self._flights,
            results=self._results,
            monotonic=monotonic,
            channel_of=self._channels_now,
        )
        self._slots.track(channels)
        self._outcomes: dict[State, int] = dict.fromkeys(State, 0)

    def slots(self) -> tuple[int, int]:
        """Requests out now, and rows claimed ahead waiting for a request slot."""
        return self._courier.slots()

    def _channels_now(self, channel: str) -> ChannelConfig | None:
        return self._channels.get(channel)  # as it is now: `set_channels` replaces the map

    def _owed(self) -> list[int]:  # the rows whose result we still owe: their leases hold
        return [*self._flights.ids(), *self._results.held()]

    def wake(self, channels: Iterable[str] = ()) -> None:
        """Rows were inserted: claim now, visiting `channels` (a small insert's) first."""
        self._slots.fresh(channels)
        self._wake.set()

    def set_channels(self, channels: Sequence[ChannelConfig]) -> None:
        """The channels to claim for from now on (the registry changed, or SIGHUP): new ones
        start, missing ones (disabled, removed) are no longer claimed (their rows wait, requests
        in flight finish), a changed key is used from the next request."""
        self._governor.track(channels)
        self._slots.track(channels)
        self._channels = {c.id: c for c in channels}
        self._wake.set()

    async def run(self, stop: asyncio.Event, *, drain: bool = False) -> None:
        """Send until `stop` is set (or, with `drain`, until nothing is left to claim)."""
        flusher = asyncio.create_task(self._results.run(), name="outbox.sender.flush")
        renewer = asyncio.create_task(self._leases.run(), name="outbox.sender.leases")
        try:
            await self._claim_loop(stop, drain)
        finally:
            await self._finish_flights()
            flusher.cancel()
            await asyncio.gather(flusher, return_exceptions=True)
            await self._results.drain()
            renewer.cancel()  # only now: leases are kept until the last answer is written
            await asyncio.gather(renewer, return_exceptions=True)
            await self._governor.settle()
            log.info(
                "outbox.sender.stopped",
                worker_id=self._worker,
                **{state.value: n for state, n in self._outcomes.items() if n},
            )

    async def _claim_loop(self, stop: asyncio.Event, drain: bool) -> None:
        backoff = Backoff()
        while not stop.is_set():
            self._wake.clear()
            self._slot_freed.clear()
            writes_before = self._results.writes
            try:
                claimed, retry_in = await self._claim_round()
                backoff.succeeded()
                self._health.recovered("claim")
            except DatabaseError as exc:
                delay = backoff.failed()
                database_failed(
                    exc,
                    part="claim",
                    event="outbox.claim.db_error",
                    health=self._health,
                    retry_in=delay,
                )
                await wait_any(stop, timeout=delay)
                continue
            # Drained: nothing claimed, nothing out, nothing to write, and no write landed while
            # the claim ran (one could have released a row the claim did not yet see).
            idle = not claimed and not self._flights and not self._results
            if drain and idle and self._results.writes == writes_before:
                return
            if retry_in == 0.0 and self._slots.free() > 0:
                continue
            timeout = self._config.poll_interval.total_seconds()
            if retry_in is not None:
                timeout = min(timeout, retry_in)
            if drain:
                timeout = min(timeout, 0.05)
            await wait_any(stop, self._wake, self._slot_freed, timeout=timeout)

    async def _claim_round(self) -> tuple[int, float | None]:
        """One claim over the channels that have rows due, in one transaction.

        Returns the rows claimed and when to claim again: 0 when some channel may have more due
        rows and tokens to send them, the wait for tokens when it has rows but no tokens, or
        until the next retry or paced row comes due; None when nothing is known to come due (or
        every slot is busy: a freed slot wakes us).
        """
        free = self._slots.free()
        if free <= 0 or not self._channels:
            return 0, None  # no channel yet: the registry's first one wakes the loop
        if self._flights and free < self._slots.least_claim and not self._slots.named:
            # A round trip for a few rows while most slots are busy costs as much as one for
            # a batch (issue 16: at 0 ms every other claim took 6 rows): freed slots wake us.
            return 0, None
        # Only channels with due rows are visited, so idle channels cost nothing; the cursor
        # moves on each round and each is offered its share of the free slots, so one
        # channel's backlog never leaves another waiting for a slot.
        due = await self._slots.due(free)
        requests, known, probes, retry_in = await self._slots.shares(due, free)
        if not requests:
            return 0, retry_in
        try:
            claims = await self._store.claim_many(
                requests,
                self._worker,
                self._config.lease,
                window_margin=self._config.window_margin,
            )
        except BaseException:
            for channel in probes:
                self._governor.forget_probe(channel)
            raise
        claimed, self._slots.hot = 0, []
        # The claim has committed: its rows are started before any further I/O, so a database
        # blip after the claim can delay them but never leave them leased and unsent.
        for request in requests:
            claim = claims[request.channel]
            claimed += self._started(known[request.channel], claim, probe=request.channel in probes)
            retry_in = sooner(retry_in, claim.wait)
            if claim.more:
                self._slots.hot.append(request.channel)
        return claimed, retry_in

    def _started(self, channel: ChannelConfig, claim: Claim, *, probe: bool) -> int:
        """Start the claim's rows; a probe goes with the first (or proved nothing)."""
        self._observer.rate(channel.id, claim.rate)
        for message, result in claim.held:  # held back inside the claim (issue 18)
            self._outcomes[result.state] += 1
            self._observer.sent(attempts.logged(Attempt(channel.id, message, result, HELD)))
        rows, breaker = claim.messages, self._governor.breakers.get(channel.id)
        if probe and breaker is not None:
            if rows:
                breaker.probing(rows[0].id)
                log.info("outbox.channel.probe", channel=channel.id, message_id=rows[0].id)
            else:
                breaker.probe_unused()
        for message in rows:
            self._courier.start(channel, message, claim.pause_epoch)
        return len(rows)

    def _record(self, result: SendResult) -> None:
        self._outcomes[result.state] += 1
        self._results.add(result)

    async def _finish_flights(self) -> None:
        """Let started requests finish within the grace period; hand back the rest."""
        if not self._flights:
            return
        ended = await self._flights.wind_down(self._config.shutdown_grace.total_seconds())
        for result in ended.abandoned_results(self._now()):
            self._record(result)
        await self._results.drain()
        released = await self._store.release([m.id for m in ended.not_started], self._worker)
        log.info(
            "outbox.sender.in_flight_at_stop",
            finished=ended.finished,
            released=released,
            abandoned=len(ended.abandoned),
        )

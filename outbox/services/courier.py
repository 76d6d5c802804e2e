"""One claimed row from its claim to its answer: it waits for a request slot (rows claimed ahead
wait in the gate), then goes out with its channel as it is at that moment, or back to the queue
unsent when its channel paused while it waited. The send loop (outbox.services.sender) claims;
this carries."""

from __future__ import annotations

from collections.abc import Callable

import structlog

from outbox.config import ChannelConfig
from outbox.domain.models import ClaimedMessage, SendResult
from outbox.domain.outcome import Judged
from outbox.errors import DatabaseError
from outbox.ports import MessageLeases, Monotonic, SendObserver
from outbox.services import attempt as attempts
from outbox.services.channels import ChannelGovernor
from outbox.services.flights import Flight, Flights
from outbox.services.gate import RequestGate

log = structlog.get_logger("outbox.sender")


class Courier:
    def __init__(
        self,
        store: MessageLeases,
        means: attempts.Means,
        *,
        worker_id: str,
        size: int,
        governor: ChannelGovernor,
        flights: Flights,
        observer: SendObserver,
        monotonic: Monotonic,
        channel_of: Callable[[str], ChannelConfig | None],
        record: Callable[[SendResult], None],
        landed: Callable[[], None],
    ) -> None:
        self._store = store
        self._means = means
        self._worker = worker_id
        self._gate = RequestGate(size)  # the requests; rows claimed ahead wait
        self._governor = governor
        self._flights = flights
        self._observer = observer
        self._monotonic = monotonic
        self._channel_of = channel_of  # as it is now
        self._record = record  # an answer to write
        self._landed = landed  # a slot is free again

    def slots(self) -> tuple[int, int]:
        """Requests out now, and rows claimed ahead waiting for a request slot."""
        return self._gate.in_use, self._gate.waiting

    def start(self, channel: ChannelConfig, message: ClaimedMessage, epoch: int) -> None:
        """Carry a row the claim (under the channel's pause `epoch`) has just leased."""
        self._flights.start(
            channel.id,
            message,
            self._monotonic(),
            lambda flight: self._send(channel, flight, epoch),
        )

    async def _send(self, claimed: ChannelConfig, flight: Flight, epoch: int) -> None:
        message = flight.message

        def sending() -> None:
            flight.started = True

        try:
            async with self._gate.slot(message.priority, new_flow=flight.new_flow):
                # The channel as it is now, not as the claim found it: a key reloaded while the
                # row waited is the one the request carries, and the one its answer is judged by.
                channel = self._channel_of(claimed.id) or claimed  # or removed meanwhile
                key = self._governor.key_of(channel)

                def learn(judged: Judged) -> None:
                    self._governor.learn(channel.id, message.id, judged, key=key, epoch=epoch)

                breaker = self._governor.breakers.get(channel.id)
                if breaker is not None and not breaker.lets(message.id):
                    await self._hand_back(message)
                    return
                result = await attempts.attempt(
                    message,
                    channel,
                    self._means,
                    claimed=flight.claimed,
                    sending=sending,
                    learn=learn,
                )
            self._observer.sent(result)
            self._record(result.result)
        finally:
            # A probe that ended without an answer (bad row, expired, stopped) proved nothing.
            self._governor.forget(claimed.id, message.id)
            self._flights.landed(claimed.id, message)
            self._landed()

    async def _hand_back(self, message: ClaimedMessage) -> None:
        """A row claimed ahead whose channel paused while it waited for a slot goes back to the
        queue with its attempt, unsent (on a database error, its lease runs out instead)."""
        try:
            await self._store.release([message.id], self._worker)
        except DatabaseError as exc:
            log.warning("outbox.sender.hand_back_failed", message_id=message.id, error=str(exc))

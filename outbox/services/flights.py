"""The rows this process has claimed and not yet answered for: their tasks, their count per
channel, and how they wind down when the sender stops."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from outbox.domain.codes import Code, Title
from outbox.domain.models import ClaimedMessage, SendResult, State


@dataclass
class Flight:
    message: ClaimedMessage
    claimed: float  # monotonic
    started: bool = False  # its request may have left: it can no longer be handed back
    # Its channel had no other row claimed: a new flow, let ahead of rows claimed earlier for
    # busy channels (as fq_codel serves new flows first), one row a time.
    new_flow: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


@dataclass(frozen=True, slots=True)
class WoundDown:
    finished: int  # answered within the grace period
    not_started: list[ClaimedMessage]  # cancelled before any request left: hand them back
    abandoned: list[ClaimedMessage]  # their request was out when the grace period ended

    def abandoned_results(self, now: datetime) -> list[SendResult]:
        """The abandoned rows' outcome: their request may have arrived, so `unknown`."""
        return [
            SendResult(
                m.id, State.UNKNOWN, now, error_code=Code.SHUTDOWN, error_title=Title.SHUTDOWN
            )
            for m in self.abandoned
        ]


class Flights:
    def __init__(self) -> None:
        self._flights: dict[int, Flight] = {}
        self.per_channel: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._flights)

    def ids(self) -> list[int]:
        return list(self._flights)

    def start(
        self,
        channel: str,
        message: ClaimedMessage,
        claimed: float,
        fly: Callable[[Flight], Coroutine[Any, Any, None]],
    ) -> None:
        flight = Flight(message, claimed, new_flow=not self.per_channel[channel])
        self._flights[message.id] = flight
        self.per_channel[channel] += 1
        flight.task = asyncio.create_task(fly(flight))

    def landed(self, channel: str, message: ClaimedMessage) -> None:
        del self._flights[message.id]
        self.per_channel[channel] -= 1

    async def wind_down(self, grace: float) -> WoundDown:
        """Cancel what has not started; let started requests finish within `grace` seconds."""
        flights = list(self._flights.values())
        not_started = [f for f in flights if not f.started]
        for flight in not_started:
            assert flight.task is not None
            flight.task.cancel()
        tasks = [f.task for f in flights if f.task is not None]
        _, pending = await asyncio.wait(tasks, timeout=grace)
        abandoned = [f for f in flights if f.task in pending]
        for flight in abandoned:
            assert flight.task is not None
            flight.task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        return WoundDown(
            len(flights) - len(not_started) - len(abandoned),
            [f.message for f in not_started],
            [f.message for f in abandoned],
        )

"""The claim loop's bookkeeping of slots and hot channels: how many rows each channel may claim
in a round (the free slots, shared out; its in-flight cap; its breaker), and which channels a
round visits (asked of the database, or, shortly after, the channels whose last claim was full).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import NamedTuple

from outbox.config import ChannelConfig, SenderConfig
from outbox.ports import ClaimRequest, Due, MessageLeases, Monotonic
from outbox.services import attempt as attempts
from outbox.services.channels import ChannelGovernor
from outbox.services.flights import Flights
from outbox.services.results import ResultBuffer

# Seconds a claim round may skip asking which channels are due and go on with the channels
# whose last claim was full: well within the fairness goal (a channel's first row out within 1 s
# beside another's backlog), and a retry coming due waits at most this much longer.
HOT_FOR = 0.2
HOT_ROUNDS = 16
# Channels named by inserts and not yet visited, at most: more are found by the cursor.
FRESH_LIMIT = 1000


class Shares(NamedTuple):
    """A round's claim requests, the channels as they were when asked for, the channels whose
    breaker lets one row probe, and when to claim again as far as the shares know."""

    requests: list[ClaimRequest]
    known: dict[str, ChannelConfig]
    probes: set[str]
    retry_in: float | None


class Slots:
    def __init__(
        self,
        store: MessageLeases,
        config: SenderConfig,
        *,
        governor: ChannelGovernor,
        flights: Flights,
        results: ResultBuffer,
        monotonic: Monotonic,
    ) -> None:
        self._store = store
        self._config = config
        self._governor = governor
        self._flights = flights
        self._results = results
        self._monotonic = monotonic
        self._cursor = ""  # the channel the last claim round ended at
        self.least_claim = max(1, min(config.batch_size, config.max_in_flight) // 4)
        self.hot: list[str] = []  # channels whose last claim got all it asked for
        self._due_at = -HOT_FOR  # when the database was last asked which channels are due
        self._hot_rounds = 0  # rounds since then
        # Channels a small insert named (migration 0027), visited first in the next round: with
        # thousands of channels holding backlogs, a row on another one no longer waits for the
        # cursor to come round (issue 16: new flows before old ones, as fq_codel serves them).
        self._fresh: dict[str, None] = {}
        self._visiting_fresh: set[str] = set()

    def free(self) -> int:
        # A slot is free again when its request ends. Answers not yet written are bounded by
        # the result buffer's own limit: when the database falls behind, claiming stops there
        # instead of piling up answers in memory (and leases to renew).
        if self._results.full:
            return 0
        return self._config.max_in_flight - len(self._flights)

    async def shares(
        self, due: Due, free: int, channel_of: Callable[[str], ChannelConfig | None]
    ) -> Shares:
        """Each due channel, from the cursor on, is offered its share of the `free` slots, so one
        channel's backlog never leaves another waiting for a slot. `channel_of` gives a
        channel's configuration as it is at the moment asked (the channels may change while a
        breaker's check awaits)."""
        retry_in = due.next_in
        requests: list[ClaimRequest] = []
        # The channels as they were when asked for: one removed (disabled) while the claim ran
        # still sends what it claimed, as requests in flight finish.
        known: dict[str, ChannelConfig] = {}
        probes: set[str] = set()  # channels whose breaker lets one row probe
        for position, channel in enumerate(due.channels):
            if channel not in self._visiting_fresh:  # out of turn: the cursor stays
                self._cursor = channel
            share = -(-free // (len(due.channels) - position))
            wanted, again, probe = await self._wanted(channel_of(channel), channel, share)
            retry_in = sooner(retry_in, again)
            config = channel_of(channel)  # the breaker's check may have awaited
            if wanted > 0 and config is not None:
                known[channel] = config
                limits, scope = self._governor.limits[channel], attempts.template_scope(config)
                requests.append(ClaimRequest(channel, wanted, limits, scope))
                free -= wanted
                if probe:
                    probes.add(channel)
            if free <= 0:
                break
        return Shares(requests, known, probes, retry_in)

    async def due(self, free: int) -> Due:
        """The channels to visit: asked of the database, or, shortly after it was asked, the
        channels whose last claim got every row it asked for (they have more): a backlog's
        rounds then skip a round trip, and other channels are looked for again within
        HOT_FOR (issue 16). Channels tracked since the last round start first, all in one go
        (`ChannelGovernor.start`, then their bucket rows)."""
        started = await self._governor.start()
        if started:
            await self._store.ensure_buckets(started)
        now = self._monotonic()
        self._hot_rounds += 1
        # Rounds count too: a clock that does not move (a test's) never starves other channels.
        if self.hot and now - self._due_at < HOT_FOR and self._hot_rounds < HOT_ROUNDS:
            due = Due(self.hot, None)
        else:
            self._due_at, self._hot_rounds = now, 0
            due = await self._store.due_channels(self._cursor, free)
        # Taken once the look succeeded: a database error keeps them for the next round.
        fresh, self._fresh = list(self._fresh), {}
        self._visiting_fresh = set(fresh)
        if not fresh:
            return due
        rest = [channel for channel in due.channels if channel not in self._visiting_fresh]
        return Due(fresh + rest, due.next_in)

    def fresh(self, channels: Iterable[str]) -> None:
        """Channels that rows were just inserted on: the next round visits them first."""
        for channel in channels:
            if len(self._fresh) >= FRESH_LIMIT:
                break
            self._fresh[channel] = None

    async def _wanted(
        self, config: ChannelConfig | None, channel: str, share: int
    ) -> tuple[int, float | None, bool]:
        """How many rows the channel may claim now (its breaker, its in-flight cap, the share),
        if none because of the breaker when it may again, and whether the claim is a probe."""
        if config is None:
            return 0, None, False  # rows for a channel this replica does not serve
        breaker = self._governor.breakers[channel]
        await self._governor.refresh(channel)  # a pause ended elsewhere ends here
        allowance = breaker.allowance(self._monotonic())
        if allowance == 0:
            return 0, breaker.wait_time(self._monotonic()), False
        cap = config.max_in_flight or self._config.max_in_flight
        wanted = min(self._config.batch_size, share, cap - self._flights.per_channel[channel])
        if allowance == 1:
            wanted = min(wanted, 1)
        # A channel at its cap: a freed slot of it wakes the loop.
        return max(0, wanted), None, allowance == 1


def sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)

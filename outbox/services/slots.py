"""The claim loop's bookkeeping of slots and hot channels: how many rows each channel may claim
in a round (the free slots, shared over tenants and their channels by
outbox.domain.shares; its in-flight cap; its breaker), and which channels a round visits (asked
of the database, or, shortly after, the channels whose last claim was full).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from typing import NamedTuple

from outbox.config import ChannelConfig, SenderConfig
from outbox.domain.shares import Portions, cursor_after
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
# Clients' numbers asked about by name in a look for due channels while more channels are due
# than a look returns: one index probe each, clients in turn (a client with more numbers than
# this is among the cursor's channels anyway).
CLIENT_PROBES = 100


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
        channel_of: Callable[[str], ChannelConfig | None],
    ) -> None:
        self._store = store
        # A channel's configuration as it is at the moment asked (the channels may change while
        # a breaker's check awaits).
        self._channel_of = channel_of
        self._config = config
        self._governor = governor
        self._flights = flights
        self._results = results
        self._monotonic = monotonic
        self._cursor = ""  # the channel the last claim round ended at
        self.least_claim = max(1, min(config.batch_size, config.max_in_flight) // 4)
        # Rows claimed beyond the request slots (RequestGate): when a request ends, the next
        # row is already here; without them a freed slot waited out a claim round (issue 16:
        # 40 of 200 slots idle at 50 ms). Never more than the slots: a fresh row waits at most
        # one turn of them.
        self.ahead = min(config.prefetch, config.max_in_flight)
        self.hot: list[str] = []  # channels whose last claim got all it asked for
        self._due_at = -HOT_FOR  # when the database was last asked which channels are due
        self._hot_rounds = 0  # rounds since then
        # Channels a small insert named (migration 0027), visited first in the next round: with
        # thousands of channels holding backlogs, a row on another one no longer waits for the
        # cursor to come round (issue 16: new flows before old ones, as fq_codel serves them).
        self._fresh: dict[str, None] = {}
        # The channels of this round in the cursor's order (the database's answer, or none in a
        # round of hot channels): only they move the cursor.
        self._in_turn: list[str] = []
        self._named: set[str] = set()  # the channels of this round that an insert named
        # Each client's channels, by client id (`track`); the client the last probes ended at;
        # whether the last look returned as many channels as it asked for (more may be due),
        # two of them one client's.
        self._clients: dict[str, list[str]] = {}
        self._client_cursor = ""
        self._crowded = False

    def track(self, channels: Iterable[ChannelConfig]) -> None:
        """The channels served from now on: whose client each one is."""
        clients: dict[str, list[str]] = {}
        for channel in channels:
            if channel.client_id is not None:
                clients.setdefault(channel.client_id, []).append(channel.id)
        self._clients = {client: clients[client] for client in sorted(clients)}

    def free(self) -> int:
        # A slot is free again when its request ends. Answers not yet written are bounded by
        # the result buffer's own limit: when the database falls behind, claiming stops there
        # instead of piling up answers in memory (and leases to renew).
        if self._results.full:
            return 0
        return self._config.max_in_flight + self.ahead - len(self._flights)

    async def shares(self, due: Due, free: int) -> Shares:
        """The due channels' claims: the `free` slots shared over their tenants, then over each
        tenant's channels (outbox.domain.shares), so neither one channel's backlog nor one
        client's many numbers leave another waiting for a slot."""
        retry_in = due.next_in
        requests: list[ClaimRequest] = []
        # The channels as they were when asked for: one removed (disabled) while the claim ran
        # still sends what it claimed, as requests in flight finish.
        known: dict[str, ChannelConfig] = {}
        probes: set[str] = set()  # channels whose breaker lets one row probe
        portions = Portions(due.channels, self._tenant_of, free, self._named)
        visited: set[str] = set()
        for channel in portions.order:
            if portions.free <= 0:
                break
            share = portions.offer(channel)
            if share <= 0:
                continue  # its tenant's portion is spent: the cursor comes back to it
            visited.add(channel)
            wanted, again, probe = await self._wanted(self._channel_of(channel), channel, share)
            retry_in = sooner(retry_in, again)
            config = self._channel_of(channel)  # the breaker's check may have awaited
            if wanted > 0 and config is not None:
                known[channel] = config
                limits, scope = self._governor.limits[channel], attempts.template_scope(config)
                requests.append(ClaimRequest(channel, wanted, limits, scope))
                portions.took(channel, wanted)
                if probe:
                    probes.add(channel)
        self._cursor = cursor_after(self._in_turn, visited, self._cursor)
        return Shares(requests, known, probes, retry_in)

    def _client(self, channel: str) -> str | None:
        config = self._channel_of(channel)
        return None if config is None else config.client_id

    def _tenant_of(self, channel: str) -> Hashable:
        """A partner's client, or the channel itself when it has none (or is not ours)."""
        client = self._client(channel)
        return ("channel", channel) if client is None else ("client", client)

    async def due(self, free: int) -> Due:
        """The channels to visit: asked of the database, or, shortly after it was asked, the
        channels whose last claim got every row it asked for (they have more): a backlog's
        rounds then skip a round trip, and other channels are looked for again within
        HOT_FOR (issue 16). Channels tracked since the last round start first, all in one go
        (`ChannelGovernor.start`, then their bucket rows). A client whose hot channels the
        database's answer (from the cursor, so many channels long) leaves out keeps them in
        the round: its portion does not wait for the cursor to come round to its numbers."""
        started = await self._governor.start()
        if started:
            await self._store.ensure_buckets(started)
        if self._fresh and self.ahead:
            # With rows claimed ahead a round takes up to 200 rows (about 50 ms at 0 ms): the
            # channels an insert named go in a round of their own, a short one, and the next
            # round follows at once (next_in 0) with the rest.
            due, in_turn = Due([], 0.0), list[str]()
        else:
            due, in_turn = await self._look(free)
        # Taken once the look succeeded: a database error keeps them for the next round.
        fresh, self._fresh = self._fresh, {}
        self._named = set(fresh)
        self._in_turn = [channel for channel in in_turn if channel not in fresh]
        rest = [channel for channel in due.channels if channel not in fresh]
        return Due([*fresh, *rest], due.next_in)

    async def _look(self, free: int) -> tuple[Due, list[str]]:
        """The hot channels, or the database's answer (and the part of it in the cursor's
        order), as `due` describes."""
        now = self._monotonic()
        self._hot_rounds += 1
        # Rounds count too: a clock that does not move (a test's) never starves other channels.
        if self.hot and now - self._due_at < HOT_FOR and self._hot_rounds < HOT_ROUNDS:
            return Due(self.hot, None), []
        self._due_at, self._hot_rounds = now, 0
        probes = self._client_probes() if self._crowded else []
        due = await self._store.due_channels(self._cursor, free, probes)
        # A probed channel the cursor's list holds too counts as probed (the answer does not
        # say which it came from): if this round's slots do not reach it, the cursor may pass
        # it, and the next look from the cursor or its client's next probe finds it.
        probed = set(probes)
        in_turn = [channel for channel in due.channels if channel not in probed]
        self._crowded = len(in_turn) >= free and self._shared(in_turn)
        return Due([*due.channels, *self._clients_left_out(due.channels)], due.next_in), in_turn

    def _shared(self, channels: list[str]) -> bool:
        """Whether a client holds two of these channels: only then can the clients the look
        left out be behind their share (one number each, they are channels like the rest)."""
        if not self._clients:
            return False  # no channel has a client: nothing to look up per channel
        clients = [client for channel in channels if (client := self._client(channel))]
        return len(set(clients)) < len(clients)

    def _client_probes(self) -> list[str]:
        """Up to CLIENT_PROBES channels, all of each client's, clients in turn from the one
        after the last probed: while the cursor's look is full, a client's number with a
        backlog from a bulk insert (which names no channel) is found within a few looks
        rather than when the cursor comes round to it among thousands of channels."""
        clients = list(self._clients)
        start = next((n for n, c in enumerate(clients) if c > self._client_cursor), 0)
        probes: list[str] = []
        for client in clients[start:] + clients[:start]:
            channels = self._clients[client]
            if len(probes) >= CLIENT_PROBES:
                break
            if len(probes) + len(channels) > CLIENT_PROBES:
                continue
            probes += channels
            self._client_cursor = client
        return probes

    def _clients_left_out(self, in_turn: list[str]) -> list[str]:
        """The hot channels of the clients none of whose channels are in `in_turn`."""
        if not self._clients:
            return []  # no channel has a client: nothing to look up per channel
        listed = set(in_turn)
        present = {self._client(channel) for channel in in_turn}
        return [
            channel
            for channel in self.hot
            if channel not in listed
            and (client := self._client(channel)) is not None
            and client not in present
        ]

    @property
    def named(self) -> bool:
        """Whether an insert named channels that no round has visited yet."""
        return bool(self._fresh)

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
        # A channel's own cap counts its rows claimed ahead too. Without one, it may claim
        # ahead up to a burst of its bucket: its tokens were taken at the claim, so rows that
        # waited out a slow spell of the API may then go faster than its rate, by a burst at most.
        ahead = min(self.ahead, int(self._governor.limits[channel].burst))
        cap = config.max_in_flight or self._config.max_in_flight + ahead
        wanted = min(self._config.batch_size, share, cap - self._flights.per_channel[channel])
        if allowance == 1:
            wanted = min(wanted, 1)
        # A channel at its cap: a freed slot of it wakes the loop.
        return max(0, wanted), None, allowance == 1


def sooner(a: float | None, b: float | None) -> float | None:
    return b if a is None else a if b is None else min(a, b)

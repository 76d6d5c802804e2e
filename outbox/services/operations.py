"""The operator's verbs as a workflow: select, decide, tally, act in batches, report progress.

`outbox replay`, `cancel` and `purge` only parse, confirm and print; what they do is here, so
that it runs, and is tested, in process against any store that satisfies the ports. The rules
for each row are in outbox.domain.operations; the stores re-check them in every write.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum
from typing import ClassVar, Protocol

from outbox.domain.models import State
from outbox.domain.operations import (
    CANCELLABLE,
    PURGEABLE,
    PURGEABLE_ON_REQUEST,
    REPLAYABLE,
    Candidate,
    Decision,
    PurgeCursor,
    Purged,
    decide_cancel,
    decide_replay,
    unwanted,
)
from outbox.ports import Applied, Clock, OperatorRows, RetentionRows, Selector

# Rows written per transaction: short enough that no batch holds row locks for long.
ACT_BATCH = 500


class Verb(StrEnum):
    REPLAY = "replay"
    CANCEL = "cancel"


@dataclass
class Tally:
    """What a replay or cancel did or would do: the rows to act on, counts for the summary, and
    the first `show` rows with their decisions for the table."""

    verb: Verb
    show: int
    chosen: list[int] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    changed: int = 0  # decided to act, but the row changed before the write
    twice: int = 0  # decided to act on a row a request may already have reached the API for
    shown: list[tuple[Candidate, Decision]] = field(default_factory=list)
    unshown: int = 0

    @property
    def acted(self) -> int:
        return len(self.chosen)

    def row(self, candidate: Candidate, decision: Decision) -> None:
        if decision.act:
            self.chosen.append(candidate.id)
            self.twice += decision.twice
        else:
            self.skipped[decision.reason] += 1
        if len(self.shown) >= self.show:
            self.unshown += 1
            return
        self.shown.append((candidate, decision))


class Command(Protocol):
    """One operator verb on selected rows: the decision per row, and the write per batch."""

    verb: ClassVar[Verb]

    def decide(self, row: Candidate, now: datetime) -> Decision: ...

    async def act(self, rows: OperatorRows, ids: Sequence[int], now: datetime) -> Applied: ...


@dataclass(frozen=True)
class Replay:
    """`outbox replay`: back to the queue as new, unless there is evidence it reached the user."""

    verb: ClassVar[Verb] = Verb.REPLAY
    wanted: tuple[State, ...]  # the states asked for; rows named by id may be in others
    actor: str
    window_margin: timedelta
    force: bool = False
    expires_in: timedelta | None = None  # a new expires_at this far ahead of the write
    note: str | None = None

    def decide(self, row: Candidate, now: datetime) -> Decision:
        return unwanted(row, self.wanted, REPLAYABLE) or decide_replay(
            row,
            now=now,
            force=self.force,
            new_expiry=now + self.expires_in if self.expires_in else None,
            window_margin=self.window_margin,
        )

    async def act(self, rows: OperatorRows, ids: Sequence[int], now: datetime) -> Applied:
        # The write re-checks the state: only those asked for that a replay may start from.
        return await rows.replay(
            ids,
            [s for s in self.wanted if s in REPLAYABLE],
            actor=self.actor,
            forced=self.force,
            expires_at=now + self.expires_in if self.expires_in else None,
            note=self.note,
        )


@dataclass(frozen=True)
class Cancel:
    """`outbox cancel`: queued (or unknown) rows are never sent."""

    verb: ClassVar[Verb] = Verb.CANCEL
    wanted: tuple[State, ...]
    actor: str
    note: str | None = None

    def decide(self, row: Candidate, now: datetime) -> Decision:
        return unwanted(row, self.wanted, CANCELLABLE) or decide_cancel(row)

    async def act(self, rows: OperatorRows, ids: Sequence[int], now: datetime) -> Applied:
        states = [s for s in self.wanted if s in CANCELLABLE]
        return await rows.cancel(ids, states, actor=self.actor, note=self.note)


class Operations:
    """Replay and cancel: `select` decides every selected row; `apply` writes the chosen ones."""

    def __init__(self, rows: OperatorRows, *, clock: Clock, batch: int = ACT_BATCH) -> None:
        self._rows = rows
        self._clock = clock
        self._batch = batch

    async def select(self, command: Command, selector: Selector, *, show: int) -> Tally:
        tally = Tally(command.verb, show)
        async for page in self._rows.candidates(selector):
            for candidate in page:
                tally.row(candidate, command.decide(candidate, self._clock()))
        return tally

    async def apply(self, command: Command, tally: Tally, progress: Callable[[int], None]) -> None:
        """Write the chosen rows in batches; `progress` hears how many each batch settled."""
        for start in range(0, len(tally.chosen), self._batch):
            ids = tally.chosen[start : start + self._batch]
            applied = await command.act(self._rows, ids, self._clock())
            tally.changed += len(applied.changed)
            progress(len(applied.done) + len(applied.changed))


DEFAULT_KEEP_KEYS = timedelta(days=400)


@dataclass(frozen=True)
class Purge:
    """`outbox purge`: what is old enough to go, and how much goes per transaction."""

    older_than: timedelta
    batch_size: int
    include_delivered: bool = False
    # How long the idempotency key of a purged message still makes a re-insert a no-op, from
    # the message's creation (at least older_than).
    keep_keys: timedelta = DEFAULT_KEEP_KEYS

    @property
    def states(self) -> list[State]:
        return sorted(PURGEABLE | (PURGEABLE_ON_REQUEST if self.include_delivered else set()))

    def cutoff_for(self, table: Purged, cutoff: datetime) -> datetime:
        """`table`'s cutoff, given the messages' one."""
        if table is Purged.IDEMPOTENCY_KEYS:
            return cutoff + self.older_than - self.keep_keys
        return cutoff


class Retention:
    """Purge: count what is older than the cutoff, then delete it table by table in batches."""

    def __init__(self, rows: RetentionRows, *, clock: Clock) -> None:
        self._rows = rows
        self._clock = clock

    async def count(self, purge: Purge) -> tuple[datetime, dict[Purged, int]]:
        """The cutoff, and how many rows of each kind are older."""
        cutoff = self._clock() - purge.older_than
        keys = purge.cutoff_for(Purged.IDEMPOTENCY_KEYS, cutoff)
        return cutoff, await self._rows.count_purgeable(purge.states, cutoff, keys)

    async def purge(
        self, purge: Purge, cutoff: datetime, deleted: Callable[[Purged, int], None]
    ) -> None:
        """Delete what is older than `cutoff`; `deleted` hears each table's total when done."""
        states = purge.states
        for table in Purged:
            total = 0
            after: PurgeCursor = None
            while True:
                count, after = await self._rows.purge_batch(
                    table, after, purge.cutoff_for(table, cutoff), purge.batch_size, states
                )
                total += count
                if count < purge.batch_size:
                    break
            deleted(table, total)

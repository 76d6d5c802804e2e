"""What operator workflows (replay, cancel, purge, retention) need from the store."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol

from outbox.domain.models import State
from outbox.domain.operations import Candidate, PurgeCursor, Purged


@dataclass(frozen=True)
class Selector:
    """Which rows an operator's command applies to; every given part must match."""

    states: tuple[State, ...]
    ids: tuple[int, ...] = ()
    channel: str | None = None
    error_codes: tuple[str, ...] = ()
    since: datetime | None = None  # created at or after
    until: datetime | None = None  # created before
    recipient: str | None = None

    def narrows(self) -> bool:
        """True when something beyond the state was given."""
        return bool(
            self.ids
            or self.channel
            or self.error_codes
            or self.since
            or self.until
            or self.recipient
        )


@dataclass
class Applied:
    """What a batch of replays or cancels did: the rows changed, and those that had changed
    meanwhile and were left alone."""

    done: list[int] = field(default_factory=list)
    changed: list[int] = field(default_factory=list)


class OperatorRows(Protocol):
    """The rows `outbox replay` and `cancel` select, and the writes that re-check them.

    The writes are declared as returning awaitables, which `async def` methods and the
    adapters' `@translated` ones both satisfy."""

    def candidates(self, selector: Selector) -> AsyncIterator[list[Candidate]]: ...

    def replay(
        self,
        ids: Sequence[int],
        states: Sequence[State],
        *,
        actor: str,
        forced: bool,
        expires_at: datetime | None,
        note: str | None,
    ) -> Awaitable[Applied]: ...

    def cancel(
        self, ids: Sequence[int], states: Sequence[State], *, actor: str, note: str | None
    ) -> Awaitable[Applied]: ...


class RetentionRows(Protocol):
    """What `outbox purge` counts and deletes."""

    def count_purgeable(
        self, states: Sequence[State], cutoff: datetime, keys_cutoff: datetime
    ) -> Awaitable[dict[Purged, int]]: ...

    def purge_batch(
        self,
        table: Purged,
        after: PurgeCursor,
        cutoff: datetime,
        batch: int,
        states: Sequence[State],
    ) -> Awaitable[tuple[int, PurgeCursor]]: ...

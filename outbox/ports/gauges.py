"""What the sampler reads for the gauges, and whom it tells."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from typing import Protocol


@dataclass(frozen=True)
class Sample:
    """The database-read gauges, as one read found them."""

    backlog: dict[tuple[str, str], int] = field(default_factory=dict)  # (channel, state)
    oldest_due_seconds: dict[str, float] = field(default_factory=dict)
    dlr_missing: dict[str, int] = field(default_factory=dict)
    unprocessed_webhooks: int = 0
    reconciler_lag_seconds: float = 0.0
    parked_statuses: int = 0
    dead_tuples: dict[str, int] = field(default_factory=dict)  # by table
    oldest_transaction_seconds: float = 0.0
    # Channels whose shared pause (outbox.channel_state.paused_until) holds now, whichever
    # replica wrote it: each replica's gauge shows it, even after that replica died.
    paused_channels: frozenset[str] = frozenset()


class GaugeReader(Protocol):
    async def sample(self, dlr_missing_after: timedelta, dlr_lookback: timedelta) -> Sample: ...


class SampleObserver(Protocol):
    def sampled(self, sample: Sample) -> None: ...

    def sample_failed(self) -> None: ...

"""The per-channel series every configured channel has, idle or not: the database-read gauges
(backlog, oldest due row, missing delivery reports, paused) and the rare-event counters
(marketing opt-outs, category mismatches) that read 0 before their first event; and each
channel's effective rate.

Plain dicts hold the values that are not zero, and a scrape writes a 0 for every other
configured channel (issue 16): with one `prometheus_client` label child per series, 10,000
channels took some 66 MB, and refreshing the database gauges re-created 60,000 children in the
event loop, holding the sender up for 0.9 s every `sample_interval`. A scrape renders on a
worker thread while the event loop writes: it copies each dict first (one step in C, which no
write can interleave), so a write never changes a dict under its iteration.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from outbox.domain.models import State

BACKLOG_STATES = (State.QUEUED.value, State.SENDING.value, State.UNKNOWN.value)
OPT_OUT_SOURCES = ("answer", "status")
_Label = TypeVar("_Label", str, tuple[str, str])


@dataclass(frozen=True)
class Sampled:
    """One read of the database gauges, by label; what is missing reads 0."""

    backlog: Mapping[tuple[str, str], float] = field(default_factory=dict)  # (channel, state)
    oldest_due: Mapping[str, float] = field(default_factory=dict)
    dlr_missing: Mapping[str, float] = field(default_factory=dict)


class ChannelSeries(Collector):
    def __init__(self, registry: CollectorRegistry) -> None:
        self._channels: tuple[str, ...] = ()
        # None until the first read: a process whose role may not read the queue (a receiver
        # on outbox_web's grants) exports no database gauges rather than zeros.
        self._sampled: Sampled | None = None
        self._paused: dict[str, float] = {}
        self._opt_outs: dict[tuple[str, str], float] = {}
        self._mismatches: dict[str, float] = {}
        self._rates: dict[str, float] = {}  # only the channels that claimed
        registry.register(self)

    def know_channels(self, channels: Iterable[str]) -> None:
        self._channels = tuple(dict.fromkeys(channels))

    def sampled(self, sampled: Sampled, paused: Iterable[str]) -> None:
        """A new read replaces the last one whole; a channel that went quiet reads 0."""
        self._sampled = sampled
        self._paused = dict.fromkeys(paused, 1.0)

    def paused(self, channel: str, paused: bool) -> None:
        self._paused[channel] = 1.0 if paused else 0.0

    def opted_out(self, channel: str, via: str, count: int = 1) -> None:
        self._opt_outs[channel, via] = self._opt_outs.get((channel, via), 0.0) + count

    def mismatched(self, channel: str) -> None:
        self._mismatches[channel] = self._mismatches.get(channel, 0.0) + 1

    def rate(self, channel: str, per_second: float) -> None:
        self._rates[channel] = per_second

    def collect(self) -> Iterator[Metric]:
        sampled, paused, channels = self._sampled, dict(self._paused), self._channels
        # Before the first read, only what the breaker set at once.
        read = channels if sampled is not None else ()
        sampled = sampled or Sampled()
        backlog = GaugeMetricFamily(
            "outbox_backlog_messages",
            "Rows per channel in the states still to be settled: queued, sending, unknown.",
            labels=["channel", "state"],
        )
        for channel in _labels(read, (c for c, _ in sampled.backlog)):
            for state in BACKLOG_STATES:
                backlog.add_metric([channel, state], sampled.backlog.get((channel, state), 0.0))
        yield backlog
        yield _gauge(
            "outbox_oldest_due_age_seconds",
            "How long the oldest due queued row of a channel has waited (0: none waits).",
            read,
            sampled.oldest_due,
        )
        yield _gauge(
            "outbox_dlr_missing_messages",
            "Rows accepted more than [metrics] dlr_missing_after ago (within dlr_lookback) "
            "with no delivery status yet.",
            read,
            sampled.dlr_missing,
        )
        yield _gauge(
            "outbox_channel_paused",
            "1 while a channel is paused by a circuit breaker: its shared pause, as every "
            "replica reads it, and at once in the replica that paused it.",
            read,
            paused,
        )
        opt_outs = dict(self._opt_outs)
        counter = CounterMetricFamily(
            "outbox_marketing_opt_outs",
            "Marketing opt-outs recorded from 131050, by where it came from (answer, status).",
            labels=["channel", "via"],
        )
        every = [(channel, via) for channel in channels for via in OPT_OUT_SOURCES]
        for key in _labels(every, opt_outs):
            counter.add_metric(list(key), opt_outs.get(key, 0.0))
        yield counter
        mismatches = dict(self._mismatches)
        counter = CounterMetricFamily(
            "outbox_category_mismatch",
            "Messages Meta billed under another category than the template registry holds.",
            labels=["channel"],
        )
        for channel in _labels(channels, mismatches):
            counter.add_metric([channel], mismatches.get(channel, 0.0))
        yield counter
        rates = GaugeMetricFamily(
            "outbox_channel_rate_per_second",
            "A channel's effective send rate: the configured one, or less after throttling.",
            labels=["channel"],
        )
        for channel, per_second in dict(self._rates).items():
            rates.add_metric([channel], per_second)
        yield rates


def _labels(known: Sequence[_Label], others: Iterable[_Label]) -> Iterator[_Label]:
    """The configured channels' labels, then any other the values carry (`(unknown)`)."""
    yield from known
    seen = set(known)
    for label in dict.fromkeys(others):
        if label not in seen:
            yield label


def _gauge(
    name: str, documentation: str, channels: tuple[str, ...], values: Mapping[str, float]
) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(name, documentation, labels=["channel"])
    for channel in _labels(channels, values):
        gauge.add_metric([channel], values.get(channel, 0.0))
    return gauge

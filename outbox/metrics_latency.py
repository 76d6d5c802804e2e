"""The latency histograms, by channel while the channels are few, as one series beyond.

A histogram child is some seventeen series: by channel, a partner's 10,000 numbers made
730,000 lines in one process, 195 MB of memory and a 52 MB scrape that took 12.6 s to render
(issue 16, `python -m tests.bench.metrics_scale`). Above `[metrics] channel_histograms`
channels the histograms are observed under ALL_CHANNELS instead; the counters and gauges stay
per channel (one series each).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram

from outbox.domain.models import State

if TYPE_CHECKING:
    from outbox.ports import Attempt

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
# Waits that include queueing, backoff and rate limits: from milliseconds to hours.
_WAIT_BUCKETS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
# Delivery to a phone: seconds when it is on, up to WhatsApp's 30 days when it is off.
_DELIVERY_BUCKETS = (1, 2, 5, 10, 30, 60, 300, 900, 3600, 6 * 3600, 24 * 3600, 7 * 24 * 3600)
ALL_CHANNELS = "(all)"
DEFAULT_BY_CHANNEL = 100  # [metrics] channel_histograms, outbox.config.MetricsConfig


class LatencyMetrics:
    def __init__(self, registry: CollectorRegistry, by_channel: int = DEFAULT_BY_CHANNEL) -> None:
        self._by_channel = by_channel
        self._pooled = False  # more channels than _by_channel: every one is ALL_CHANNELS
        # Label children looked up once, not per message: sends are the hot path.
        self._children: dict[tuple[Histogram, str], Histogram] = {}
        self.api_latency = Histogram(
            "outbox_api_request_seconds",
            "Time from posting a send request to its answer (or failure).",
            ["channel"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.claim_to_request = Histogram(
            "outbox_claim_to_request_seconds",
            "Time from claiming a row to posting its request (in-process queueing).",
            ["channel"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.insert_to_accepted = Histogram(
            "outbox_insert_to_accepted_seconds",
            "Time from the producer's INSERT to the API accepting the message.",
            ["channel"],
            buckets=_WAIT_BUCKETS,
            registry=registry,
        )
        self.accepted_to_delivered = Histogram(
            "outbox_accepted_to_delivered_seconds",
            "Time from the API accepting a message to its first delivered status.",
            ["channel"],
            buckets=_DELIVERY_BUCKETS,
            registry=registry,
        )

    def know_channels(self, channels: Iterable[str]) -> None:
        """Switch between per-channel and pooled series when the channels cross the limit;
        the other way's series go, so no stale ones stay exported."""
        pooled = len(set(channels)) > self._by_channel
        if pooled != self._pooled:
            self._pooled = pooled
            self._children.clear()
            for histogram in self._histograms():
                histogram.clear()

    def sent(self, attempt: Attempt) -> None:
        channel, result = attempt.channel, attempt.result
        if attempt.request_seconds is not None:
            self._child(self.api_latency, channel).observe(attempt.request_seconds)
        if attempt.waited is not None:
            self._child(self.claim_to_request, channel).observe(attempt.waited)
        if result.state is State.ACCEPTED:
            waited = (result.at - attempt.message.created_at).total_seconds()
            self._child(self.insert_to_accepted, channel).observe(max(0.0, waited))

    def delivered(self, channel: str, seconds: float) -> None:
        self._child(self.accepted_to_delivered, channel).observe(seconds)

    def _child(self, histogram: Histogram, channel: str) -> Histogram:
        label = ALL_CHANNELS if self._pooled else channel
        child = self._children.get((histogram, label))
        if child is None:
            child = self._children[histogram, label] = histogram.labels(label)
        return child

    def _histograms(self) -> tuple[Histogram, ...]:
        return (
            self.api_latency,
            self.claim_to_request,
            self.insert_to_accepted,
            self.accepted_to_delivered,
        )

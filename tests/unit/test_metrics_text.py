"""`/metrics`' own renderer writes what prometheus_client's `generate_latest` writes, byte for
byte: over every family `Metrics` makes (per-channel and pooled histograms, the dict counters
with `_created`, the per-channel gauges with their zeros) and every metric type the library has,
with label values that need escaping."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Enum,
    Gauge,
    Histogram,
    Info,
    Summary,
    generate_latest,
)
from prometheus_client.metrics_core import GaugeHistogramMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from outbox.metrics import Metrics
from outbox.metrics_text import render
from outbox.ports import Sample

ODD = ['quote"d', "back\\slash", "new\nline", "ümlaut ☃", "", "c00001"]


class Frozen(Collector):
    """One collection of `registry`, given again on every collect: the process and collector
    figures move between two renders, the comparison must not."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._metrics = list(registry.collect())

    def collect(self) -> Iterator[Metric]:
        yield from self._metrics


@pytest.mark.parametrize("channel_histograms", [100, 1_000_000])
def test_every_family_of_outbox_renders_as_the_library_renders_it(
    channel_histograms: int,
) -> None:
    metrics = Metrics(CollectorRegistry(), channel_histograms)
    channels = [f"c{n:05d}" for n in range(150)] + ODD
    metrics.know_channels(channels)
    metrics.sampled(Sample())
    latency = metrics.latency
    for n, channel in enumerate(channels):
        for histogram in (latency.api_latency, latency.claim_to_request):
            latency._child(histogram, channel).observe(n / 100)
        latency.delivered(channel, 1.0 + n)
        metrics.sends.inc(channel, "accepted", "none")
        metrics.rate(channel, 80.0 / (n + 1))
    metrics.webhooks.inc(ODD[0], "stored")
    metrics.channels.opted_out(ODD[1], "answer")
    metrics.channels.mismatched(ODD[2])
    metrics.channels.paused(ODD[3], True)
    metrics.watch_sender(lambda: (3, 7))
    frozen = Frozen(metrics.registry)

    assert render(frozen) == generate_latest(frozen)
    assert b'channel="quote\\"d"' in render(frozen)  # escaping was exercised
    assert b'outbox_sender_slots{kind="waiting"} 7.0' in render(frozen)


def test_every_metric_type_and_odd_values_render_as_the_library_renders_them() -> None:
    registry = CollectorRegistry()
    Counter("c", "counter\nwith \\ help", ["a", "b"], registry=registry).labels(*ODD[:2]).inc(3)
    gauge = Gauge("g", "gauge", ["z", "a"], registry=registry)
    for value in (0.0, 1.0, -0.0, 1e-9, 123456789.0, 1e300, float("inf"), float("-inf"), 7):
        gauge.labels(str(value), ODD[2]).set(value)
    gauge.labels("nan", "x").set(float("nan"))
    Histogram("h", "histogram", registry=registry).observe(0.3)
    Summary("s", "summary", ["k"], registry=registry).labels(ODD[3]).observe(2.5)
    Info("i", "info", registry=registry).info({"version": ODD[0]})
    Enum("e", "enum", states=["a", "b"], registry=registry).state("b")

    class Custom(Collector):
        def collect(self) -> Iterator[Metric]:
            stamped = GaugeMetricFamily("t", "timestamped", labels=["x"])
            stamped.add_metric(["y"], 2.0, timestamp=1_700_000_000.123)
            yield stamped
            yield GaugeHistogramMetricFamily(
                "gh", "gauge histogram", buckets=[("1", 4.0), ("+Inf", 5.0)], gsum_value=7.0
            )
            yield Metric("u", "untyped", "unknown")

    registry.register(Custom())
    frozen = Frozen(registry)

    assert render(frozen) == generate_latest(frozen)

"""Latency histograms by channel while the channels are few, one series for all beyond
(issue 16: 10,000 channels made 730,000 lines and a 12-second scrape)."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from outbox.config_loader import load_settings
from outbox.errors import ConfigError
from outbox.metrics import Metrics
from outbox.metrics_latency import ALL_CHANNELS


def _labels(metrics: Metrics) -> set[str]:
    return {
        sample.labels["channel"]
        for family in metrics.registry.collect()
        if family.name == "outbox_accepted_to_delivered_seconds"
        for sample in family.samples
    }


@pytest.mark.parametrize(
    ("limit", "channels", "expected"),
    [
        (2, ["a", "b"], {"a", "b"}),
        (2, ["a", "b", "c"], {ALL_CHANNELS}),
        (0, ["a"], {ALL_CHANNELS}),
    ],
)
def test_histograms_carry_the_channel_up_to_the_limit(
    limit: int, channels: list[str], expected: set[str]
) -> None:
    metrics = Metrics(CollectorRegistry(), limit)
    metrics.know_channels(channels)
    for channel in channels:
        metrics.latency.delivered(channel, 1.0)
    assert _labels(metrics) == expected


def test_crossing_the_limit_drops_the_other_way_s_series() -> None:
    metrics = Metrics(CollectorRegistry(), 2)
    metrics.know_channels(["a", "b"])
    metrics.latency.delivered("a", 1.0)
    metrics.know_channels(["a", "b", "c"])  # the registry grew past the limit
    metrics.latency.delivered("c", 1.0)
    assert _labels(metrics) == {ALL_CHANNELS}
    metrics.know_channels(["a"])  # and shrank again
    metrics.latency.delivered("a", 1.0)
    assert _labels(metrics) == {"a"}


def _limit(value: str | None) -> int:
    env = {"OUTBOX_DATABASE_URL": "postgresql://h/db"}
    if value is not None:
        env["OUTBOX_METRICS_CHANNEL_HISTOGRAMS"] = value
    return load_settings(None, env, need_channels=False).metrics.channel_histograms


def test_the_limit_is_a_setting_that_may_be_zero_but_not_negative() -> None:
    assert _limit(None) == 100
    assert _limit("0") == 0
    with pytest.raises(ConfigError, match="CHANNEL_HISTOGRAMS: must be at least 0"):
        _limit("-1")

"""Per-channel series at 10,000 channels (issue 16): what they cost to hold and to refresh, what
a scrape says of idle channels, and scrapes on a worker thread while the event loop writes."""

from __future__ import annotations

import threading
import time
import tracemalloc

from prometheus_client import CollectorRegistry, generate_latest

from outbox.metrics import UNKNOWN_CHANNEL, Metrics
from outbox.ports import Sample

CHANNELS = [f"c{n:05d}" for n in range(10_000)]


def _value(text: str, series: str) -> float:
    [line] = [line for line in text.splitlines() if line.startswith(series + " ")]
    return float(line.rsplit(" ", 1)[1])


def test_ten_thousand_idle_channels_hold_no_series_objects_and_refresh_at_once() -> None:
    """Before: a label child per series, 19.5 MB for the channels, 47 MB and 0.9 s in the event
    loop for each refresh of the database gauges (all zero here: an idle queue)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        metrics = Metrics(CollectorRegistry())
        metrics.know_channels(CHANNELS)
        began = time.perf_counter()
        metrics.sampled(Sample())
        refreshed_in = time.perf_counter() - began
        for channel in CHANNELS:
            metrics.rate(channel, 80.0)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 5_000_000, grown
    assert refreshed_in < 0.05, refreshed_in
    text = generate_latest(metrics.registry).decode()
    # Idle channels still read 0 (an alert on them is defined before the first event).
    assert _value(text, 'outbox_backlog_messages{channel="c09999",state="unknown"}') == 0
    assert _value(text, 'outbox_channel_paused{channel="c00000"}') == 0
    assert _value(text, 'outbox_marketing_opt_outs_total{channel="c04321",via="status"}') == 0
    assert text.count("outbox_backlog_messages{") == 3 * len(CHANNELS)


def test_a_refresh_replaces_the_last_read_and_folds_unconfigured_channels() -> None:
    metrics = Metrics(CollectorRegistry())
    metrics.know_channels(["a", "b"])
    metrics.sampled(
        Sample(
            backlog={("a", "queued"): 5, ("typo", "queued"): 2, ("other", "queued"): 1},
            oldest_due_seconds={"a": 30.0, "typo": 90.0},
            paused_channels=frozenset({"b"}),
        )
    )
    metrics.paused("a", True)  # the breaker, at once
    text = generate_latest(metrics.registry).decode()
    assert _value(text, 'outbox_backlog_messages{channel="a",state="queued"}') == 5
    assert (
        _value(text, f'outbox_backlog_messages{{channel="{UNKNOWN_CHANNEL}",state="queued"}}') == 3
    )
    assert (
        _value(text, f'outbox_backlog_messages{{channel="{UNKNOWN_CHANNEL}",state="sending"}}') == 0
    )
    assert _value(text, f'outbox_oldest_due_age_seconds{{channel="{UNKNOWN_CHANNEL}"}}') == 90
    assert _value(text, 'outbox_channel_paused{channel="a"}') == 1
    assert _value(text, 'outbox_channel_paused{channel="b"}') == 1
    metrics.sampled(Sample())  # the next read: all quiet
    text = generate_latest(metrics.registry).decode()
    assert _value(text, 'outbox_backlog_messages{channel="a",state="queued"}') == 0
    assert _value(text, 'outbox_channel_paused{channel="a"}') == 0
    assert f'channel="{UNKNOWN_CHANNEL}"' not in text


def test_no_database_gauges_before_the_first_read() -> None:
    """A receiver on outbox_web's grants may not read the queue: its sampler stops, and its
    /metrics must not show the queue's gauges as zeros. The rare-event counters read 0."""
    metrics = Metrics(CollectorRegistry())
    metrics.know_channels(["a", "b"])
    metrics.paused("b", True)  # the breaker, at once
    text = generate_latest(metrics.registry).decode()
    assert "outbox_backlog_messages{" not in text
    assert "outbox_oldest_due_age_seconds{" not in text
    assert 'outbox_channel_paused{channel="a"}' not in text
    assert _value(text, 'outbox_channel_paused{channel="b"}') == 1
    assert _value(text, 'outbox_category_mismatch_total{channel="a"}') == 0


def test_scrapes_on_a_worker_thread_while_the_loop_adds_series() -> None:
    """/metrics renders on a worker thread; counters and rates gain channels meanwhile."""
    metrics = Metrics(CollectorRegistry())
    metrics.know_channels(CHANNELS[:100])
    errors: list[BaseException] = []
    done = threading.Event()

    def scrape() -> None:
        while not done.is_set():
            try:
                generate_latest(metrics.registry)
            except BaseException as exc:  # reported by the assertion below
                errors.append(exc)
                return

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for n in range(200_000):
            channel = f"new{n}"
            metrics.rate(channel, 1.0)
            metrics.paused(channel, False)
            metrics.channels.opted_out(channel, "answer")
            metrics.channels.mismatched(channel)
            if errors:
                break
    finally:
        done.set()
        scraper.join()
    assert not errors, errors

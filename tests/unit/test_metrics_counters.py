"""The counters every message touches, held as dicts (issue 16): what 10,000 sending channels
cost, and an exposition that says what `prometheus_client`'s own counter says."""

from __future__ import annotations

import random
import re
import threading
import tracemalloc
from datetime import UTC, datetime

from prometheus_client import CollectorRegistry, Counter, generate_latest

from outbox.domain.models import ClaimedMessage, SendResult, State
from outbox.domain.outcome import SendError
from outbox.metrics import Metrics
from outbox.metrics_counters import CounterTable
from outbox.ports import Attempt

NOW = datetime(2026, 12, 7, tzinfo=UTC)
CHANNELS = [f"c{n:05d}" for n in range(10_000)]


def _accepted(channel: str, n: int) -> Attempt:
    message = ClaimedMessage(n, channel, "4915112345678", {}, None, 1, NOW, None)
    result = SendResult(n, State.ACCEPTED, NOW, wamid=f"wamid.{n}", message_status="accepted")
    return Attempt(channel, message, result, SendError.NONE, 0.01, 0.02)


def test_ten_thousand_sending_channels_hold_no_label_objects() -> None:
    """Before: two `prometheus_client` label objects per channel that sent (sends by outcome,
    the answers' message_status), 12.6 MB at 10,000 channels."""
    metrics = Metrics(CollectorRegistry())
    metrics.know_channels(CHANNELS)
    attempts = [_accepted(channel, n) for n, channel in enumerate(CHANNELS)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for attempt in attempts:
            metrics.sent(attempt)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 6_000_000, grown
    text = generate_latest(metrics.registry).decode()
    sent = 'outbox_sends_total{channel="c04321",error_class="none",outcome="accepted"} 1.0'
    assert sent in text.splitlines()
    assert 'outbox_send_message_status_total{channel="c09999",status="accepted"} 1.0' in text
    assert text.count("outbox_sends_created{") == len(CHANNELS)


def _without_created_values(text: str) -> list[str]:
    return sorted(re.sub(r"(_created\{.*\}) \S+$", r"\1", line) for line in text.splitlines())


def test_the_exposition_is_prometheus_clients_own() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    labels = ["channel", "outcome"]
    table = CounterTable("outbox_things", "Things, by channel and outcome.", labels, ours)
    counter = Counter("outbox_things", "Things, by channel and outcome.", labels, registry=theirs)
    draw = random.Random(16)
    for _ in range(500):
        key = (draw.choice(["a", "b", 'q"uote\\d']), draw.choice(["stored", "refused"]))
        amount = draw.choice([1.0, 2.0, 0.5])
        table.inc(*key, amount=amount)
        counter.labels(*key).inc(amount)
    mine, reference = generate_latest(ours).decode(), generate_latest(theirs).decode()
    assert "_created{" in mine
    assert _without_created_values(mine) == _without_created_values(reference)


def test_a_scrape_on_a_worker_thread_while_the_loop_counts() -> None:
    """A scrape copies the dict first: new label sets added meanwhile never break it."""
    registry = CollectorRegistry()
    table = CounterTable("outbox_things", "Things.", ["channel"], registry)
    failures: list[BaseException] = []
    done = threading.Event()

    def scrape() -> None:
        try:
            while not done.is_set():
                generate_latest(registry)
        except BaseException as exc:  # the assertion below names it
            failures.append(exc)

    scraper = threading.Thread(target=scrape)
    scraper.start()
    try:
        for n in range(200_000):
            table.inc(f"c{n}")
    finally:
        done.set()
        scraper.join()
    assert failures == []

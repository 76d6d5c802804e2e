"""A labelled counter kept as one dict, for the counters every message touches (sends by
outcome, send answers' `message_status`, webhook bodies by outcome).

`prometheus_client` makes an object per label set (a lock, a value, the labels, some 630 bytes)
and takes its lock on every increment: at 10,000 channels the two counters of sends alone held
20,000 of them, some 12.6 MB, all made while sending (issue 16). Here a label set is a dict
entry of its value and the time it was first counted, exported as `_total` and `_created`
exactly as `prometheus_client` does. A scrape renders on a worker thread while the event loop
counts: it copies the dict first (one step in C, which no write can interleave).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector


class CounterTable(Collector):
    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], registry: CollectorRegistry
    ) -> None:
        self._name, self._documentation, self._labels = name, documentation, list(labels)
        self._values: dict[tuple[str, ...], list[float]] = {}  # labels -> [value, created]
        registry.register(self)

    def inc(self, *labels: str, amount: float = 1.0) -> None:
        entry = self._values.get(labels)
        if entry is None:
            entry = self._values[labels] = [0.0, time.time()]
        entry[0] += amount

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for labels, (value, created) in dict(self._values).items():
            family.add_metric(list(labels), value, created=created)
        yield family

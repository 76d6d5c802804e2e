"""What /metrics costs at many channels (not a test).

    python -m tests.bench.metrics_scale [--channels 1000,10000] [--limits 1000000,100]

For each channel count and `[metrics] channel_histograms` limit, in a fresh process: one
`Metrics` that knows the channels, one refresh of the database gauges (an idle queue: every
channel reads 0; it runs in the event loop, so its time is time the sender stands still), one
observation per channel in each latency histogram, one send counted and one rate set; then the
memory that took (peak RSS growth) and one scrape's render time (`/metrics`' own renderer, and
prometheus_client's `generate_latest` for comparison), size and lines.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import time
from collections.abc import Callable

from prometheus_client import CollectorRegistry, generate_latest

from outbox.metrics import Metrics
from outbox.metrics_text import render
from outbox.ports import Sample


def _one(channels: int, limit: int) -> str:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    metrics = Metrics(CollectorRegistry(), limit)
    names = [f"c{n:05d}" for n in range(channels)]
    metrics.know_channels(names)
    began = time.perf_counter()
    metrics.sampled(Sample())
    refreshed = time.perf_counter() - began
    latency = metrics.latency
    histograms = (latency.api_latency, latency.claim_to_request, latency.insert_to_accepted)
    for name in names:
        for histogram in histograms:
            latency._child(histogram, name).observe(0.1)
        latency.delivered(name, 1.0)
        metrics.sends.inc(name, "accepted", "none")
        metrics.rate(name, 80.0)
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    took: dict[Callable[[CollectorRegistry], bytes], float] = {}
    for renderer in (generate_latest, render, generate_latest, render):  # the best of two each
        started = time.perf_counter()
        text = renderer(metrics.registry)
        spent = time.perf_counter() - started
        took[renderer] = min(spent, took.get(renderer, spent))
    return (
        f"{channels:>8,} channels, channel_histograms={limit:<9,}: +{grown:4.0f} MB, "
        f"refresh {refreshed * 1000:5,.0f} ms, scrape {took[render] * 1000:6,.0f} ms "
        f"(generate_latest {took[generate_latest] * 1000:6,.0f} ms), "
        f"{len(text) / 1e6:5.1f} MB, {text.count(10):,} lines"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    numbers = lambda s: [int(n) for n in s.split(",") if n]  # noqa: E731
    parser.add_argument("--channels", type=numbers, default=[1000, 10000])
    parser.add_argument("--limits", type=numbers, default=[1_000_000, 100])
    parser.add_argument("--one", type=numbers, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(_one(*args.one))
        return
    for channels in args.channels:
        for limit in args.limits:  # a process each: peak RSS only grows
            one = [sys.executable, "-m", "tests.bench.metrics_scale", "--one"]
            subprocess.run([*one, f"{channels},{limit}"], check=True)


if __name__ == "__main__":
    main()
